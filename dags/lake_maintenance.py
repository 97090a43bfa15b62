"""lake_maintenance: nightly OPTIMIZE (compaction or Z-order per conf/), VACUUM (7-day floor), checkpoints, the
table stats exported as Prometheus metrics, then the lineage table synced. Each task runs one `tierlake table ...`
command over the tables of ``maintenance.tables`` (or the run's ``tables`` param); each holds the table's writer
lease while it writes; the last runs ``tierlake lineage sync`` over the run's tables (else every ingest table)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from dags.common import DEFAULT_ARGS, run_tierlake, table_args


def _params() -> dict[str, Any]:
    return dict(get_current_context()["params"])


@dag(
    dag_id="lake_maintenance",
    schedule="0 3 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=["tierlake", "maintenance"],
    params={
        "tables": Param([], type="array", description="table paths; empty: maintenance.tables of conf/"),
        "retention_hours": Param(None, type=["null", "number"], description="VACUUM retention; empty: conf (168)"),
        "allow_short_retention": Param(False, type="boolean", description="allow VACUUM under 168 hours"),
    },
)
def lake_maintenance() -> None:
    @task
    def optimize() -> Any:
        return run_tierlake("table", "optimize", *table_args(_params()), "--json")

    @task
    def vacuum() -> Any:
        params = _params()
        extra = [] if params["retention_hours"] is None else ["--retention-hours", str(params["retention_hours"])]
        extra += ["--allow-short-retention"] if params["allow_short_retention"] else []
        # Scheduled maintenance deletes (--execute); the retention floor (168 h) still holds unless a run says so.
        return run_tierlake("table", "vacuum", *table_args(params), *extra, "--execute", "--json")

    @task
    def checkpoint() -> Any:
        return run_tierlake("table", "checkpoint", *table_args(_params()), "--json")

    @task
    def export_stats() -> Any:
        return run_tierlake("table", "stats", *table_args(_params()), "--json")

    @task
    def lineage() -> Any:
        # The lineage table learns of the commits above (and of every ingest batch since the last sync) from the
        # tables' own histories; the run's tables, else every ingest table of conf/.
        tables = [arg for table in _params()["tables"] or [] for arg in ("--table", str(table))]
        return run_tierlake("lineage", "sync", *tables, "--json")

    optimize() >> vacuum() >> checkpoint() >> export_stats() >> lineage()


lake_maintenance()
