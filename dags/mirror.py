"""mirror: copy the critical tables (data files first, the Delta log last, so the mirror is always a consistent
snapshot) and the training checkpoints to the second site. Incremental and verified by counts and checksums: a
task fails when a copy does not match its source (`tierlake table mirror` exits 7)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from dags.common import DEFAULT_ARGS, run_tierlake, table_args


@dag(
    dag_id="mirror",
    schedule=timedelta(hours=1),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=["tierlake", "mirror"],
    params={"tables": Param([], type="array", description="table paths; empty: mirror.tables of conf/")},
)
def mirror() -> None:
    @task
    def mirror_tables() -> Any:
        return run_tierlake("table", "mirror", *table_args(get_current_context()["params"]), "--json")

    @task
    def mirror_checkpoints() -> Any:
        return run_tierlake("table", "mirror", "--checkpoints-only", "--json")

    mirror_tables() >> mirror_checkpoints()


mirror()
