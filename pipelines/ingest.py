"""``tierlake ingest run``: for each entity, Kafka -> bronze, then bronze -> silver/quarantine/dropped, until
caught up. The driver holds the writer lease of each entity's tables while it writes them (``pipelines.lease``):
Delta on S3 without DynamoDB needs a single writer, and a second driver refuses to start, naming the owner."""

from __future__ import annotations

import logging
import time
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
