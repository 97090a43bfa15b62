"""``tierlake ingest run``: for each entity, Kafka -> bronze, then bronze -> silver/quarantine/dropped, until
caught up. The driver holds the writer lease of each entity's tables while it writes them (``pipelines.lease``):
Delta on S3 without DynamoDB needs a single writer, and a second driver refuses to start, naming the owner."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.bronze import run_bronze_until_caught_up
from pipelines.lease import TableLease
from pipelines.silver import run_silver_until_caught_up, silver_tables
from tierlake.config import Settings
from tierlake.errors import CommitConflict
from tiers.s3 import s3_client

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)


def run_until_caught_up(spark: SparkSession, settings: Settings, *, entities: list[str]) -> dict[str, Any]:
    """Bronze then silver for each entity; returns per-entity row counts and seconds."""
    for entity in entities:
        silver_tables(settings, entity)  # refuse unknown entities before any work
    report: dict[str, Any] = {}
    client = s3_client(settings.s3)
    for entity in entities:
        started = time.monotonic()
        with TableLease(client, settings.s3.lake_bucket, f"ingest-{entity}") as lease:
            bronze = run_bronze_until_caught_up(spark, settings, topic=settings.entities[entity].topic)
            _check(lease)
            silver = run_silver_until_caught_up(spark, settings, entity=entity)
            _check(lease)
        report[entity] = {
            "bronze": bronze["rows"],
            **{k: silver[k] for k in ("silver", "quarantine", "dropped")},
            "seconds": round(time.monotonic() - started, 1),
        }
        logger.info("ingest %s: %s", entity, report[entity], extra={"entity": entity})
    return report


def _check(lease: TableLease) -> None:
    if lease.lost.is_set():
        raise CommitConflict(f"lost the writer lease {lease.name!r} mid-run; another driver owns these tables now")


def run_continuous(
    spark: SparkSession,
    settings: Settings,
    *,
    entities: list[str],
    trigger_s: float,
    stop: threading.Event,
    status_file: Path | None = None,
) -> dict[str, Any]:
    """Keep bronze and silver queries of ``entities`` running on a ``trigger_s`` trigger until ``stop`` is set.

    Holds every entity's writer lease throughout; a lost lease or a failed query stops all queries and raises.
    """
    from pipelines.bronze import bronze_table, ensure_bronze, start_bronze  # noqa: PLC0415
    from pipelines.silver import start_silver  # noqa: PLC0415

    client = s3_client(settings.s3)
    leases = [TableLease(client, settings.s3.lake_bucket, f"ingest-{entity}") for entity in entities]
    queries = []
    try:
        for lease in leases:
            lease.acquire()
            lease.start_renewing()
        for entity in entities:
            topic = settings.entities[entity].topic
            ensure_bronze(spark, bronze_table(settings, topic))
            queries.append(start_bronze(spark, settings, topic=topic, trigger_s=trigger_s))
            queries.append(start_silver(spark, settings, entity=entity, trigger_s=trigger_s))
        while not stop.wait(min(trigger_s, 2.0)):
            for lease in leases:
                _check(lease)
            for query in queries:
                if not query.isActive:
                    raise CommitConflict(f"streaming query {query.name} stopped: {query.exception()}")
            if status_file is not None:
                _write_status(status_file, queries)
    finally:
        for query in queries:
            query.stop()
        for lease in leases:
            lease.release()
    return {"stopped": [q.name for q in queries]}


def _write_status(path: Path, queries: list[Any]) -> None:
    progress = {q.name: (q.lastProgress or {}) for q in queries}
    status = {
        "updated": time.time(),
        "queries": {
            name: {
                k: p.get(k)
                for k in ("batchId", "numInputRows", "inputRowsPerSecond", "processedRowsPerSecond", "timestamp")
            }
            for name, p in progress.items()
        },
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status), encoding="utf-8")
    os.replace(tmp, path)
