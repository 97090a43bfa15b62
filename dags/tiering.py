"""tiering: pick the cold partitions by policy, archive them to both sites (two tape copies), verify, and purge
them from the lake when policy allows. Out of the box it moves the tables of ``archive.tables`` in conf/ (the
pipeline's silver and gold tables, partitioned by day); the purge is a dry run unless the run says ``purge``.
Each task runs one `tierlake archive ...` command (tiers/archive), and one `tierlake checkpoint archive` moves
training checkpoints by the tape policy (``checkpoint.tape`` in conf/, off by default)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from dags.common import ARCHIVE_ARGS, archive_tables, run_tierlake


@dag(
    dag_id="tiering",
    schedule="0 4 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=ARCHIVE_ARGS,  # every task on the archive workers' queue
    tags=["tierlake", "archive"],
    params={
        "tables": Param([], type="array", description="tables whose cold partitions move; empty: archive.tables"),
        # A dry run by default, as `tierlake archive purge` is: deleting the lake's copy is opted into, per run
        # or by changing this default, never implied by scheduling the DAG.
        "purge": Param(False, type="boolean", description="purge archived partitions when policy allows"),
    },
)
def tiering() -> None:
    @task
    def tables() -> list[str]:
        return archive_tables(get_current_context()["params"])

    @task
    def select(table: str) -> Any:
        return run_tierlake("archive", "select", "--table", table, "--if-exists", "--json")

    @task
    def archive(table: str) -> Any:
        return run_tierlake("archive", "run", "--table", table, "--if-exists", "--json")

    @task
    def checkpoints() -> Any:
        # training checkpoints on RGW older than the newest checkpoint.tape.older_than (conf/; 0: off) go to tape
        return run_tierlake("checkpoint", "archive", "--json")

    @task
    def verify() -> Any:
        return run_tierlake("archive", "verify", "--json")

    @task
    def purge(table: str) -> Any:
        execute = ["--execute"] if get_current_context()["params"]["purge"] else []
        # --only-due: files still retained or under legal hold stay (counted), the rest go; none archived is no error
        return run_tierlake("archive", "purge", "--table", table, "--only-due", *execute, "--json")

    names = tables()
    selected = select.expand(table=names)
    archived = archive.expand(table=names)
    verified = verify()
    selected >> archived >> checkpoints() >> verified >> purge.expand(table=names)


tiering()
