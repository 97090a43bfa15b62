"""Reconciliation: per topic and partition, Kafka = bronze and bronze = silver + quarantine + dropped, exactly.

Against Kafka: each partition's earliest and end offsets (what Kafka holds now) against bronze's offsets.
Records Kafka holds past bronze's last offset are ``behind``: ``pending`` while the oldest of them is younger than
``stuck_after_s``, ``stuck`` after that (an ingest driver that halted is never balanced); offsets missing between
bronze's first and last are ``holes`` (the idempotent, non-transactional producers here leave no gaps of their own).

Within the lake it joins on (topic, partition, offset), so a count that balances by accident (one row lost,
another doubled) still shows up: ``missing`` (in bronze, in no output), ``unexpected`` (in an output, not in
bronze) and ``repeated`` (in more than one output, or twice in one). Offsets are listed, a few per partition.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from pipelines.ingest.bronze import bronze_table
from pipelines.ingest.silver import silver_tables
from tierlake.config import Settings
from tierlake.errors import StorageError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

SAMPLE = 5
STUCK_AFTER_S = 120.0
"""Records Kafka holds that bronze lacks count as stuck once the oldest is this old (a few triggers' worth)."""


def kafka_offsets(settings: Settings, topic: str) -> dict[int, tuple[int, int]]:
    """Partition -> (earliest, end) offset of ``topic`` as Kafka holds it now."""
    from confluent_kafka import Consumer, TopicPartition  # noqa: PLC0415

    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap(), "group.id": "tierlake-reconcile"})
    try:
        meta = consumer.list_topics(topic, timeout=15).topics[topic]
        if meta.error is not None:
            raise StorageError(f"Kafka topic {topic!r}: {meta.error}. Fix: check kafka.topics in conf/")
        return {
            p: tuple(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15))  # type: ignore[misc]
            for p in sorted(meta.partitions)
        }
    finally:
        consumer.close()


def record_age_s(settings: Settings, topic: str, partition: int, offset: int) -> float | None:
    """Seconds since Kafka received the record at ``offset`` (None if it cannot be read within 10 s)."""
    from confluent_kafka import Consumer, TopicPartition  # noqa: PLC0415

    consumer = Consumer(
        {"bootstrap.servers": settings.kafka.bootstrap(), "group.id": "tierlake-reconcile", "enable.auto.commit": False}
    )
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        message = consumer.poll(10)
        if message is None or message.error() is not None:
            return None
        _, millis = message.timestamp()
        return max(0.0, time.time() - millis / 1000)
    finally:
        consumer.close()


def against_kafka(
    settings: Settings, topic: str, bronze: dict[int, dict[str, int]], *, stuck_after_s: float = STUCK_AFTER_S
) -> list[dict[str, Any]]:
    """Per partition of ``topic``: what Kafka holds against bronze's ``{partition: {first, last, offsets}}``."""
    rows = []
    for partition, (earliest, end) in kafka_offsets(settings, topic).items():
        seen = bronze.get(partition)
        next_offset = max(earliest, seen["last"] + 1) if seen else earliest
        behind = max(0, end - next_offset)
        holes = seen["last"] - seen["first"] + 1 - seen["offsets"] if seen else 0
        age = record_age_s(settings, topic, partition, next_offset) if behind else None
        state = "caught_up" if not behind else "stuck" if age is None or age > stuck_after_s else "pending"
        rows.append(
            {
                "partition": partition,
                "earliest": earliest,
                "end": end,
                "behind": behind,
                "oldest_behind_age_s": None if age is None else round(age, 1),
                "holes": holes,
                "state": state,
            }
        )
    return rows


def _keys(spark: SparkSession, uri: str, label: str) -> DataFrame | None:
    from delta.tables import DeltaTable  # noqa: PLC0415
    from pyspark.sql import functions as F  # noqa: PLC0415

    if not DeltaTable.isDeltaTable(spark, uri):
        return None
    rows = spark.read.format("delta").load(uri)
    if label == "quarantine":
        rows = rows.where(~F.col("replayed"))  # a replayed record is counted by its silver row
    return rows.select("topic", "partition", "offset", F.lit(label).alias("out"))


def reconcile(
    spark: SparkSession, settings: Settings, *, entity: str, stuck_after_s: float = STUCK_AFTER_S
) -> dict[str, Any]:
    """The reconciliation report of one entity; ``balanced`` is true only when every offset Kafka holds is in
    bronze (or pending for less than ``stuck_after_s``) and every bronze offset is accounted once."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    tables = silver_tables(settings, entity)
    bronze_uri = bronze_table(settings, settings.entities[entity].topic).table_uri
    bronze = _keys(spark, bronze_uri, "bronze")
    if bronze is None:
        topic = settings.entities[entity].topic
        return {
            "entity": entity,
            "topic": topic,
            "balanced": False,
            "error": f"no bronze table at {bronze_uri}",
            "partitions": [],
            "kafka": against_kafka(settings, topic, {}, stuck_after_s=stuck_after_s),
        }
    parts = [
        _keys(spark, uri, name)
        for name, uri in (("silver", tables.silver), ("quarantine", tables.quarantine), ("dropped", tables.dropped))
    ]
    outputs = None
    for part in parts:
        if part is not None:
            outputs = part if outputs is None else outputs.unionByName(part)
    if outputs is None:
        outputs = bronze.limit(0)
    key = ["topic", "partition", "offset"]
    per_offset = outputs.groupBy(*key).agg(F.count("*").alias("n"))
    in_bronze = bronze.groupBy(*key).agg(F.count("*").alias("nb"))
    flagged = (
        in_bronze.join(per_offset, key, "full_outer")
        .select(
            *key,
            F.coalesce("n", F.lit(0)).alias("n"),
            F.coalesce("nb", F.lit(0)).alias("nb"),
        )
        .persist()
    )
    try:
        summary = _summarise(flagged, outputs)
    finally:
        flagged.unpersist()
    topic = settings.entities[entity].topic
    seen = {
        int(p["partition"]): {"first": p["min_offset"], "last": p["max_offset"], "offsets": p["bronze_offsets"]}
        for p in summary
        if p["topic"] == topic and p["bronze_offsets"]
    }
    kafka = against_kafka(settings, topic, seen, stuck_after_s=stuck_after_s)
    balanced = all(p["missing"] == 0 and p["unexpected"] == 0 and p["repeated"] == 0 for p in summary) and all(
        k["state"] != "stuck" and k["holes"] == 0 for k in kafka
    )
    return {"entity": entity, "topic": topic, "balanced": balanced, "partitions": summary, "kafka": kafka}


def _summarise(flagged: DataFrame, outputs: DataFrame) -> list[dict[str, Any]]:
    from pyspark.sql import functions as F  # noqa: PLC0415

    missing = (F.col("nb") > 0) & (F.col("n") == 0)
    unexpected = F.col("nb") == 0
    repeated = (F.col("n") > 1) | (F.col("nb") > 1)

    def sample(cond: Any) -> Any:
        return F.slice(F.sort_array(F.collect_list(F.when(cond, F.col("offset")))), 1, SAMPLE)

    stats = flagged.groupBy("topic", "partition").agg(
        F.sum("nb").alias("bronze"),
        F.sum((F.col("nb") > 0).cast("long")).alias("bronze_offsets"),
        F.min("offset").alias("min_offset"),
        F.max("offset").alias("max_offset"),
        F.sum(missing.cast("long")).alias("missing"),
        F.sum(unexpected.cast("long")).alias("unexpected"),
        F.sum(repeated.cast("long")).alias("repeated"),
        sample(missing).alias("missing_offsets"),
        sample(unexpected | repeated).alias("other_offsets"),
    )
    counts = outputs.groupBy("topic", "partition").pivot("out", ["silver", "quarantine", "dropped"]).count()
    rows = stats.join(counts, ["topic", "partition"], "left").orderBy("topic", "partition").collect()
    return [
        {
            **{k: row[k] for k in ("topic", "partition", "bronze", "min_offset", "max_offset")},
            **{
                k: int(row[k] or 0)
                for k in ("silver", "quarantine", "dropped", "missing", "unexpected", "repeated", "bronze_offsets")
            },
            "missing_offsets": list(row["missing_offsets"]),
            "other_offsets": list(row["other_offsets"]),
        }
        for row in rows
    ]
