"""retention: enforce the retention periods and legal holds recorded in the archive catalog, verify the copies, and
report both (the reports are the tasks' XCom results and logs). Each task runs one `tierlake archive ...` command."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import dag, task

from dags.common import ARCHIVE_ARGS, run_tierlake


@dag(
    dag_id="retention",
    schedule="0 5 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=ARCHIVE_ARGS,  # every task on the archive workers' queue
    tags=["tierlake", "archive", "compliance"],
)
def retention() -> None:
    @task
    def enforce_retention() -> Any:
        return run_tierlake("archive", "retention", "--json")

    @task
    def verify_copies() -> Any:
        return run_tierlake("archive", "verify", "--json")

    enforce_retention() >> verify_copies()


retention()
