"""bronze.<topic>: every Kafka record as it arrived (key, raw value, topic, partition, offset, timestamps).

The Delta sink with a checkpoint beside the table gives exactly-once across restarts: Spark records the offsets
of each micro-batch in the checkpoint and Delta records the batch id in its commit, so a replayed batch is
skipped. ``run_bronze_until_caught_up`` processes what is in the topic now and stops (``availableNow``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tierlake.config import Settings
from tierlake.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery

logger = logging.getLogger(__name__)
BRONZE_DDL = (
    "key binary, value binary, topic string, partition int, offset long, kafka_timestamp timestamp, "
    "ingest_time timestamp"
)


@dataclass(frozen=True, kw_only=True)
class BronzeTable:
    topic: str
    table_uri: str
    checkpoint_uri: str


def bronze_table(settings: Settings, topic: str) -> BronzeTable:
    """Where bronze.<topic> and its checkpoint live: ``s3a://<lake>/bronze/<topic>`` and ``.../_checkpoints/``."""
    known = {t.name for t in settings.kafka.topics}
    if topic not in known:
        raise ConfigError(f"topic {topic!r} is not in kafka.topics of conf/. Fix: use one of {sorted(known)}")
    name = topic.replace(".", "_")
    root = f"s3a://{settings.s3.lake_bucket}/bronze"
    return BronzeTable(topic=topic, table_uri=f"{root}/{name}", checkpoint_uri=f"{root}/_checkpoints/{name}")


def kafka_source(spark: SparkSession, settings: Settings, topic: str) -> DataFrame:
    """The Kafka records of ``topic`` as a stream, from the earliest offset, failing on data loss."""
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka.bootstrap())
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("failOnDataLoss", "true")
        .option("maxOffsetsPerTrigger", 200_000)
        .load()
    )


def to_bronze(records: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F  # noqa: PLC0415 - Spark's own convention

    return records.select(
        F.col("key"),
        F.col("value"),
        F.col("topic"),
        F.col("partition"),
        F.col("offset"),
        F.col("timestamp").alias("kafka_timestamp"),
        F.current_timestamp().alias("ingest_time"),
    )


def ensure_bronze(spark: SparkSession, table: BronzeTable) -> None:
    """Create the (empty) bronze table if it does not exist, so a silver stream can start before any data."""
    from delta.tables import DeltaTable  # noqa: PLC0415

    if not DeltaTable.isDeltaTable(spark, table.table_uri):
        empty = spark.createDataFrame([], BRONZE_DDL)
        empty.write.format("delta").mode("ignore").save(table.table_uri)


def start_bronze(spark: SparkSession, settings: Settings, *, topic: str, trigger_s: float | None) -> StreamingQuery:
    """Start the Kafka -> bronze query: ``trigger_s`` None = until caught up, else a processing-time trigger."""
    table = bronze_table(settings, topic)
    writer = (
        to_bronze(kafka_source(spark, settings, topic))
        .writeStream.format("delta")
        .option("checkpointLocation", table.checkpoint_uri)
        .outputMode("append")
        .queryName(f"bronze_{topic.replace('.', '_')}")
    )
    writer = (
        writer.trigger(availableNow=True)
        if trigger_s is None
        else writer.trigger(processingTime=f"{trigger_s} seconds")
    )
    return writer.start(table.table_uri)


def run_bronze_until_caught_up(spark: SparkSession, settings: Settings, *, topic: str) -> dict[str, Any]:
    """Ingest everything now in ``topic`` into bronze, then stop. Returns the table's row count and version."""
    table = bronze_table(settings, topic)
    ensure_bronze(spark, table)
    start_bronze(spark, settings, topic=topic, trigger_s=None).awaitTermination()
    from delta.tables import DeltaTable  # noqa: PLC0415

    history = DeltaTable.forPath(spark, table.table_uri).history(1).collect()
    rows = spark.read.format("delta").load(table.table_uri).count()
    version = int(history[0]["version"]) if history else -1
    logger.info("bronze %s: %d rows at version %d", table.table_uri, rows, version, extra={"topic": topic})
    return {"topic": topic, "table": table.table_uri, "rows": rows, "version": version}
