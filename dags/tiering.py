"""tiering: pick the cold partitions by policy, archive them to both sites (two tape copies), verify, and purge
them from the lake when policy allows. Each task runs one `tierlake archive ...` command (tiers/archive)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from dags.common import DEFAULT_ARGS, run_tierlake


@dag(
    dag_id="tiering",
    schedule="0 4 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=["tierlake", "archive"],
    params={
        "tables": Param(["silver/ev"], type="array", minItems=1, description="tables whose cold partitions move"),
        # A dry run by default, as `tierlake archive purge` is: deleting the lake's copy is opted into, per run
        # or by changing this default, never implied by scheduling the DAG.
        "purge": Param(False, type="boolean", description="purge archived partitions when policy allows"),
    },
)
def tiering() -> None:
    @task
    def tables() -> list[str]:
        return [str(t) for t in get_current_context()["params"]["tables"]]

    @task
    def select(table: str) -> Any:
        return run_tierlake("archive", "select", "--table", table, "--json")

    @task
    def archive(table: str) -> Any:
        return run_tierlake("archive", "run", "--table", table, "--json")

    @task
    def verify() -> Any:
        return run_tierlake("archive", "verify", "--json")

    @task
    def purge(table: str) -> Any:
        execute = ["--execute"] if get_current_context()["params"]["purge"] else []
        return run_tierlake("archive", "purge", "--table", table, *execute, "--json")

    names = tables()
    selected = select.expand(table=names)
    archived = archive.expand(table=names)
    verified = verify()
    selected >> archived >> verified >> purge.expand(table=names)


tiering()
