"""``tierlake ingest run``: for each entity, Kafka -> bronze, then bronze -> silver/quarantine/dropped, until
caught up. One driver runs every query of its tables (Delta on S3 without DynamoDB needs a single writer)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from pipelines.bronze import run_bronze_until_caught_up
from pipelines.silver import run_silver_until_caught_up, silver_tables
from tierlake.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)


def run_until_caught_up(spark: SparkSession, settings: Settings, *, entities: list[str]) -> dict[str, Any]:
    """Bronze then silver for each entity; returns per-entity row counts and seconds."""
    for entity in entities:
        silver_tables(settings, entity)  # refuse unknown entities before any work
    report: dict[str, Any] = {}
    for entity in entities:
        started = time.monotonic()
        bronze = run_bronze_until_caught_up(spark, settings, topic=settings.entities[entity].topic)
        silver = run_silver_until_caught_up(spark, settings, entity=entity)
        report[entity] = {
            "bronze": bronze["rows"],
            **{k: silver[k] for k in ("silver", "quarantine", "dropped")},
            "seconds": round(time.monotonic() - started, 1),
        }
        logger.info("ingest %s: %s", entity, report[entity], extra={"entity": entity})
    return report
