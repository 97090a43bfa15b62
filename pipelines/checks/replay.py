"""``tierlake ingest replay-quarantine``: after a fix (a schema or rule change in conf/), send quarantined
records through the rules again; those that now pass go to silver and are marked ``replayed`` in quarantine.

Each replayed record keeps its source topic/partition/offset, so reconciliation still balances: a quarantine row
marked ``replayed`` counts as its silver row. Silver rows written by a replay carry ``_batch_id = -1``, so every
later streaming batch sees them as history (for duplicates and lateness). Safe to run again after a crash: a
record whose offset is already in silver is only marked, never written twice.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from pipelines.ingest.gold_ev import append_replayed_anomalies, gold_paths
from pipelines.ingest.high_water import HighWater
from pipelines.ingest.recent_ids import seen_among, silver_ids
from pipelines.ingest.rules import classify
from pipelines.ingest.silver import SilverTables, judge, outputs, silver_tables, table_exists
from pipelines.lake.lease import TableLease
from tierlake import catalog
from tierlake.config import Settings
from tiers.s3 import delta_storage_options, s3_client

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)
REPLAY_BATCH = -1
_AFTER_EVERY_BATCH = 2**62


def mark_replayed(spark: SparkSession, tables: SilverTables) -> None:
    """Mark ``replayed`` every quarantine row whose offset is in silver (idempotent: a re-run marks nothing new)."""
    from delta.tables import DeltaTable  # noqa: PLC0415

    if not table_exists(spark, tables.silver):
        return
    key = ["topic", "partition", "offset"]
    in_silver = spark.read.format("delta").load(tables.silver).select(*key)
    condition = " AND ".join(f"q.{k} = s.{k}" for k in key) + " AND NOT q.replayed"
    (
        DeltaTable.forPath(spark, tables.quarantine)
        .alias("q")
        .merge(in_silver.alias("s"), condition)
        .whenMatchedUpdate(set={"replayed": "true"})
        .execute()
    )


def replay_quarantine(
    spark: SparkSession, settings: Settings, *, entity: str, rule: str | None = None
) -> dict[str, Any]:
    """Re-check the quarantined records of ``entity`` (optionally one ``rule``); returns what moved and stayed."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    tables = silver_tables(settings, entity)
    spec = settings.entities[entity]
    if not table_exists(spark, tables.quarantine):
        return {"entity": entity, "replayed": 0, "still_bad": 0}
    with TableLease(s3_client(settings.s3), settings.s3.lake_bucket, f"ingest-{entity}"):
        pending = spark.read.format("delta").load(tables.quarantine).where(~F.col("replayed"))
        if rule is not None:
            pending = pending.where(F.col("rule") == rule)
        as_bronze = pending.select(
            "key",
            "value",
            "topic",
            "partition",
            "offset",
            "kafka_timestamp",
            F.current_timestamp().alias("ingest_time"),
        )
        mark = HighWater(
            spark, tables.silver, spec.event_time, storage_options=delta_storage_options(settings.s3)
        ).before(_AFTER_EVERY_BATCH)
        seen = None if mark is None else silver_ids(spark, tables.silver, spec, _AFTER_EVERY_BATCH, mark)
        classified = classify(as_bronze, spec).persist()  # read for the outcomes, then by the appends
        try:
            judged, _ = judge(classified, entity=spec, among=partial(seen_among, seen), high_water=mark)
            passing, still_bad, _ = outputs(judged, entity=spec, batch_id=REPLAY_BATCH)
            key = ["topic", "partition", "offset"]
            if table_exists(spark, tables.silver):
                already = spark.read.format("delta").load(tables.silver).select(*key)
                passing = passing.join(already, key, "left_anti")  # a crashed replay left these in silver
            moved = passing.count()
            if moved and spec.gold == "ev":  # flagged before silver's append: a re-run skips what is flagged
                append_replayed_anomalies(
                    spark, passing, uri=gold_paths(settings.s3.lake_bucket, entity)[1], batch_id=REPLAY_BATCH
                )
            if moved:
                writer = passing.write.format("delta").mode("append").option("mergeSchema", "true")
                writer.partitionBy(catalog.EVENT_DAY).save(tables.silver)
            mark_replayed(spark, tables)
            stayed = still_bad.count()
        finally:
            classified.unpersist()
    logger.info("replayed %d quarantined %s records, %d still break a rule", moved, entity, stayed)
    return {"entity": entity, "replayed": moved, "still_bad": stayed}
