"""The main job end to end on the local stack: stack up, produce EV and corpus records (bad ones included),
ingest until caught up, then report table counts, freshness and the reconciliation.

``ok`` is an invariant, not a hard-coded number: every entity reconciles (bronze = silver + quarantine + dropped,
offset by offset), whatever earlier runs left behind.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from tierlake.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)


def topic_record_count(settings: Settings, topic: str) -> int:
    """Records currently retained in ``topic``: the sum over partitions of (high - low) watermarks."""
    from confluent_kafka import Consumer, TopicPartition  # noqa: PLC0415

    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap(),
            "group.id": "tierlake-demo-count",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        total = 0
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def freshness(spark: SparkSession, silver_uri: str, *, since_epoch_s: float) -> dict[str, Any]:
    """Seconds from Kafka's timestamp to the silver commit, p50/p99, over the rows produced since ``since``."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    rows = spark.read.format("delta").load(silver_uri).where(F.col("kafka_timestamp").cast("double") >= since_epoch_s)
    return _lag_percentiles(rows, "silver_time")


def anomaly_freshness(
    spark: SparkSession, *, silver_uri: str, anomalies_uri: str, since_epoch_s: float
) -> dict[str, Any]:
    """Seconds from Kafka's timestamp to the gold anomaly flag (``flagged_at``), p50/p99, over the readings produced
    since ``since`` that gold flagged: how soon gold shows what happened."""
    from delta.tables import DeltaTable  # noqa: PLC0415
    from pyspark.sql import functions as F  # noqa: PLC0415

    if not DeltaTable.isDeltaTable(spark, anomalies_uri):
        return {"p50_s": None, "p99_s": None, "rows": 0}
    sent = (
        spark.read.format("delta")
        .load(silver_uri)
        .where(F.col("kafka_timestamp").cast("double") >= since_epoch_s)
        .select("event_id", "kafka_timestamp")
    )
    flagged = spark.read.format("delta").load(anomalies_uri).where(F.col("flagged_at").isNotNull())
    return _lag_percentiles(flagged.join(sent, "event_id"), "flagged_at")


def _lag_percentiles(rows: DataFrame, until: str) -> dict[str, Any]:
    """p50/p99 of ``until`` minus ``kafka_timestamp`` in seconds, and the row count."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    lag = F.col(until).cast("double") - F.col("kafka_timestamp").cast("double")
    row = rows.select(F.percentile_approx(lag, [0.5, 0.99]).alias("p"), F.count(F.lit(1)).alias("n")).first()
    p50, p99 = (row["p"] if row is not None and row["p"] else None) or (None, None)
    return {"p50_s": p50, "p99_s": p99, "rows": int(row["n"]) if row is not None else 0}


def top_anomalies(spark: SparkSession, lake_bucket: str, entity: str, *, limit: int = 5) -> list[dict[str, Any]]:
    from delta.tables import DeltaTable  # noqa: PLC0415

    from pipelines.gold_ev import gold_paths  # noqa: PLC0415

    uri = gold_paths(lake_bucket, entity)[1]
    if not DeltaTable.isDeltaTable(spark, uri):
        return []
    rows = spark.read.format("delta").load(uri).orderBy("score", ascending=False).limit(limit).collect()
    return [{**row.asDict(), "ts": str(row["ts"])} for row in rows]


def run_demo(settings: Settings, *, events: int) -> dict[str, Any]:
    from infra.stack import LocalStack  # noqa: PLC0415
    from pipelines.gold_ev import gold_paths  # noqa: PLC0415
    from pipelines.ingest import run_until_caught_up  # noqa: PLC0415
    from pipelines.produce import produce_events  # noqa: PLC0415
    from pipelines.reconcile import reconcile  # noqa: PLC0415
    from pipelines.session import spark_session  # noqa: PLC0415
    from pipelines.silver import silver_tables  # noqa: PLC0415

    started = time.monotonic()
    settings = LocalStack(settings).up()
    stack_s = time.monotonic() - started
    since = time.time()
    produced = {
        "ev": produce_events(settings, dataset="ev", events=events, bad_fraction=0.02).as_dict(),
        "corpus": produce_events(settings, dataset="corpus", events=max(1, events // 10)).as_dict(),
    }
    spark = spark_session(settings, app_name="tierlake-demo")
    try:
        tables = run_until_caught_up(spark, settings, entities=["ev", "corpus"])
        reconciliation = {e: reconcile(spark, settings, entity=e) for e in ("ev", "corpus")}
        fresh = {e: freshness(spark, silver_tables(settings, e).silver, since_epoch_s=since) for e in ("ev", "corpus")}
        top = top_anomalies(spark, settings.s3.lake_bucket, "ev")
        flags = anomaly_freshness(
            spark,
            silver_uri=silver_tables(settings, "ev").silver,
            anomalies_uri=gold_paths(settings.s3.lake_bucket, "ev")[1],
            since_epoch_s=since,
        )
    finally:
        spark.stop()
    return {
        "ok": all(r["balanced"] for r in reconciliation.values()) and all(p["failed"] == 0 for p in produced.values()),
        "produced": produced,
        "tables": tables,
        "freshness_kafka_to_silver": fresh,
        "freshness_kafka_to_anomaly_flag": {"ev": flags},
        "top_anomalies": top,
        "reconciliation": {
            e: {"balanced": r["balanced"], "partitions": r["partitions"]} for e, r in reconciliation.items()
        },
        "seconds": {"stack_up": round(stack_s, 1), "total": round(time.monotonic() - started, 1)},
        "next": "tierlake ingest reconcile; tierlake stack status; tierlake stack down (data stays under run_dir)",
    }
