"""ingest_supervisor: every 5 minutes, check that the streaming ingestion driver is alive and fresh, restart a dead
one, flag a stale, failed or long-paused one (the freshness task fails, which alerts), and announce a new version of
the training table (the asset event that schedules cache_warmup)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from airflow.exceptions import AirflowFailException, AirflowSkipException
from airflow.sdk import dag, get_current_context, task

from dags.common import DEFAULT_ARGS, GOLD_VERSION_LANDED, TRAINING_TABLE, run_tierlake


@dag(
    dag_id="ingest_supervisor",
    schedule=timedelta(minutes=5),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS | {"retry_delay": timedelta(seconds=30), "execution_timeout": timedelta(minutes=10)},
    tags=["tierlake", "ingestion"],
)
def ingest_supervisor() -> None:
    @task
    def health() -> dict[str, Any]:
        from pipelines.lake.maintenance import ingest_health  # noqa: PLC0415 - DAG files parse fast
        from tierlake.config import load_settings  # noqa: PLC0415

        status = run_tierlake("ingest", "status", "--json", ok_codes=(0, 3, 7))
        settings = load_settings().maintenance
        # An entity paused (its writer lease unconfirmed) longer than a lease TTL is an outage, not a blip.
        verdict = ingest_health(
            status, max_staleness_s=settings.max_ingest_staleness_s, max_paused_s=settings.lease_ttl_s
        )
        return asdict(verdict)

    @task
    def restart_if_dead(verdict: dict[str, Any]) -> Any:
        if verdict["verdict"] != "dead":
            raise AirflowSkipException(f"driver pid {verdict['pid']} is alive")
        run_tierlake("ingest", "start")
        return run_tierlake("ingest", "status", "--json")

    @task
    def freshness(verdict: dict[str, Any]) -> str:
        if verdict["verdict"] in ("stale", "failed", "degraded"):
            raise AirflowFailException(f"ingestion is {verdict['verdict']}: {verdict['reason']}")
        return str(verdict["reason"])

    @task(inlets=[GOLD_VERSION_LANDED], outlets=[GOLD_VERSION_LANDED])
    def announce_gold() -> int:
        context = get_current_context()
        latest = run_tierlake("table", "history", TRAINING_TABLE, "--limit", "1", "--json")
        version = int(latest[0]["version"])
        previous = list(context["inlet_events"][GOLD_VERSION_LANDED])
        if previous and (previous[-1].extra or {}).get("version") == version:
            raise AirflowSkipException(f"{TRAINING_TABLE} version {version} was announced already")
        context["outlet_events"][GOLD_VERSION_LANDED].extra = {"table": TRAINING_TABLE, "version": version}
        return version

    verdict = health()
    restart_if_dead(verdict)  # type: ignore[arg-type]  # an XComArg, resolved to the dict at run time
    freshness(verdict)  # type: ignore[arg-type]
    announce_gold()


ingest_supervisor()
