"""cache_warmup: warm the edge cache with a pinned version of the training table before a training run.

Scheduled on the asset ``gold_version_landed``, which ingest_supervisor's announce_gold task emits with the table
and version in the event's extra; a manual run names them in its params instead."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from dags.common import DEFAULT_ARGS, GOLD_VERSION_LANDED, TRAINING_TABLE, run_tierlake


@dag(
    dag_id="cache_warmup",
    schedule=[GOLD_VERSION_LANDED],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    default_args=DEFAULT_ARGS,
    tags=["tierlake", "cache"],
    params={
        "table": Param(TRAINING_TABLE, type="string", description="used when no asset event triggered the run"),
        "version": Param(None, type=["null", "integer"], description="pinned version; empty: the event's or latest"),
    },
)
def cache_warmup() -> None:
    @task
    def pinned_version() -> dict[str, Any]:
        """The table and version of the newest triggering event, else of the params."""
        context = get_current_context()
        events = [e for group in context["triggering_asset_events"].values() for e in group]
        if events:
            extra = events[-1].extra
            return {"table": str(extra["table"]), "version": int(extra["version"])}
        return {"table": context["params"]["table"], "version": context["params"]["version"]}

    @task
    def warm(target: dict[str, Any]) -> Any:
        version = [] if target["version"] is None else ["--version", str(target["version"])]
        return run_tierlake("cache", "warm", target["table"], *version, "--pin", "--json")

    warm(pinned_version())  # type: ignore[arg-type]  # an XComArg, resolved to the dict at run time


cache_warmup()
