"""The main job end to end on the local stack (smoke version): stack up, produce EV events, bronze on RGW, count.

The check at the end is an invariant, not a hard-coded number: the bronze table holds exactly as many rows as
the topic holds records (Kafka's end offsets minus start offsets), whatever earlier runs left behind.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tierlake.config import Settings

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


def run_demo(settings: Settings, *, events: int) -> dict[str, Any]:
    from infra.stack import LocalStack  # noqa: PLC0415
    from pipelines.bronze import run_bronze_until_caught_up  # noqa: PLC0415
    from pipelines.produce import produce_events  # noqa: PLC0415
    from pipelines.session import spark_session  # noqa: PLC0415

    started = time.monotonic()
    settings = LocalStack(settings).up()
    stack_s = time.monotonic() - started
    summary = produce_events(settings, dataset="ev", events=events)
    spark = spark_session(settings, app_name="tierlake-demo")
    try:
        bronze = run_bronze_until_caught_up(spark, settings, topic=summary.topic)
    finally:
        spark.stop()
    in_topic = topic_record_count(settings, summary.topic)
    return {
        "ok": summary.failed == 0 and bronze["rows"] == in_topic,
        "produced": summary.as_dict(),
        "bronze": bronze,
        "records_in_topic": in_topic,
        "seconds": {"stack_up": round(stack_s, 1), "total": round(time.monotonic() - started, 1)},
        "next": "tierlake stack status; tierlake stack down (data stays under run_dir)",
    }
