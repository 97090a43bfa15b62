"""bronze.<topic>: every Kafka record as it arrived (key, raw value, topic, partition, offset, timestamps).

Written by the ingest query of the topic (``pipelines.ingest.stream``), which appends each micro-batch here and
to silver.
Exactly once across restarts: Spark records each micro-batch's offsets in the checkpoint beside this table
(``bronze/_checkpoints/<topic>``) before running it, and :func:`write_bronze` tags the rows with the batch id and
skips a batch that bronze already holds (``pipelines.ingest.ledger``), so a batch replayed after a crash is not appended
twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.ingest.ledger import APPEND_ONLY_CHECKPOINT_INTERVAL, CommitLedger
from tierlake import catalog
from tierlake.config import Settings
from tierlake.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)
BRONZE_DDL = (
    "key binary, value binary, topic string, partition int, offset long, kafka_timestamp timestamp, "
    f"ingest_time timestamp, _batch_id long, {catalog.INGEST_DAY} date"
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
    lake = settings.s3.lake_bucket
    return BronzeTable(
        topic=topic,
        table_uri=catalog.bronze(lake, topic).s3a,
        checkpoint_uri=catalog.bronze_checkpoint(lake, topic).s3a,
    )


# How long the broker may hold a fetch that finds no new record (Kafka's fetch.max.wait.ms, 500 ms by default).
# Spark's Kafka reader asks for the partition's offset range after every poll (InternalKafkaConsumer.fetch), and a
# broker answers a connection's requests in order: once a task's reads reach the end of the log, where every batch
# ends, the consumer's prefetch waits there for new records and the range's request waits behind it, 500 ms per
# task. A task reads only offsets that exist, so it never needs the broker to wait: measured on the local stack,
# Spark counted 40,000 records in 1.37 s at the default and 0.42 s at 5 ms (docs/decisions.md).
FETCH_MAX_WAIT_MS = 10


def kafka_source(spark: SparkSession, settings: Settings, topic: str) -> DataFrame:
    """The Kafka records of ``topic`` as a stream, from the earliest offset, failing on data loss; from the
    replica in ``kafka.client_rack`` where that is set. The broker answers a fetch at the end of the log at once
    (:data:`FETCH_MAX_WAIT_MS`)."""
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka.bootstrap())
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("failOnDataLoss", "true")
        .option("maxOffsetsPerTrigger", 200_000)
        .option("kafka.fetch.max.wait.ms", FETCH_MAX_WAIT_MS)
    )
    if settings.kafka.client_rack:  # KIP-392: fetch from the replica in the consumer's own rack
        reader = reader.option("kafka.client.rack", settings.kafka.client_rack)
    return reader.load()


BRONZE_COLUMNS = ("key", "value", "topic", "partition", "offset", "kafka_timestamp", "ingest_time")
"""A bronze row as the ingest query sees it (bronze itself adds ``_batch_id``)."""


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
        (
            empty.write.format("delta")
            .mode("ignore")
            .partitionBy(catalog.INGEST_DAY)
            .option("delta.checkpointInterval", str(APPEND_ONLY_CHECKPOINT_INTERVAL))  # never read back by ingest
            .save(table.table_uri)
        )


def write_bronze(batch: DataFrame, batch_id: int, table: BronzeTable, ledger: CommitLedger) -> None:
    """Append one micro-batch to bronze, its rows tagged with the batch id; skipped if bronze already holds it.

    ``batch`` may carry more columns (the ingest query's classified rows); bronze keeps :data:`BRONZE_COLUMNS`.
    """
    from pyspark.sql import functions as F  # noqa: PLC0415

    rows = batch.select(
        *BRONZE_COLUMNS,
        F.lit(batch_id).cast("long").alias("_batch_id"),
        F.to_date("ingest_time").alias(catalog.INGEST_DAY),  # the partition (catalog.day_layout)
    )
    ledger.append(rows, table.table_uri, batch_id, partition_by=catalog.INGEST_DAY, append_only=True)
