"""The main job end to end on the local stack: stack up, produce EV and corpus records (bad ones included),
ingest until caught up, then report table counts, freshness and the reconciliation.

``ok`` is an invariant, not a hard-coded number: every entity reconciles (bronze = silver + quarantine + dropped,
offset by offset), whatever earlier runs left behind.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tierlake.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

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


def top_anomalies(spark: SparkSession, lake_bucket: str, entity: str, *, limit: int = 5) -> list[dict[str, Any]]:
    from delta.tables import DeltaTable  # noqa: PLC0415

    from pipelines.ingest.gold_ev import gold_paths  # noqa: PLC0415

    uri = gold_paths(lake_bucket, entity)[1]
    if not DeltaTable.isDeltaTable(spark, uri):
        return []
    rows = spark.read.format("delta").load(uri).orderBy("score", ascending=False).limit(limit).collect()
    return [json_safe(row.asDict()) for row in rows]


def json_safe(row: dict[str, Any]) -> dict[str, Any]:
    """A table row for the JSON report: times as ISO 8601 text (``ts``, ``flagged_at``), the rest as it is."""
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in row.items()}


def quarantine_by_rule(spark: SparkSession, settings: Settings, entity: str) -> dict[str, int]:
    """Quarantined rows of ``entity`` per rule (not yet replayed)."""
    from delta.tables import DeltaTable  # noqa: PLC0415
    from pyspark.sql import functions as F  # noqa: PLC0415

    from pipelines.ingest.silver import silver_tables  # noqa: PLC0415

    uri = silver_tables(settings, entity).quarantine
    if not DeltaTable.isDeltaTable(spark, uri):
        return {}
    rows = spark.read.format("delta").load(uri).where(~F.col("replayed")).groupBy("rule").count().collect()
    return {str(row["rule"]): int(row["count"]) for row in sorted(rows, key=lambda r: -int(r["count"]))}


HISTORY_DAYS_AGO = (41, 40)  # back-dated EV days, cold under conf/'s default policy (30 days): the lifecycle's input


def run_demo(settings: Settings, *, events: int) -> dict[str, Any]:
    """The demo's work on a running stack (``settings`` with its S3 keys): produce, ingest, check, report."""
    from pipelines.checks.freshness import anomaly_freshness, freshness  # noqa: PLC0415
    from pipelines.checks.reconcile import reconcile  # noqa: PLC0415
    from pipelines.ingest.driver import run_until_caught_up  # noqa: PLC0415
    from pipelines.ingest.gold_ev import gold_paths  # noqa: PLC0415
    from pipelines.ingest.silver import silver_tables  # noqa: PLC0415
    from pipelines.session import spark_session  # noqa: PLC0415
    from pipelines.synthetic.produce import produce_events  # noqa: PLC0415

    started = time.monotonic()
    since = time.time()
    # Two back-dated days first (in event-time order: on a lake that already holds newer events they are late and
    # quarantined, which the reconciliation counts), then the present.
    history = [
        produce_events(settings, dataset="ev", events=max(1, events // 10), days_ago=d, progress=False).as_dict()
        for d in HISTORY_DAYS_AGO
    ]
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
        by_rule = {e: quarantine_by_rule(spark, settings, e) for e in ("ev", "corpus")}
        flags = anomaly_freshness(
            spark,
            silver_uri=silver_tables(settings, "ev").silver,
            anomalies_uri=gold_paths(settings.s3.lake_bucket, "ev")[1],
            since_epoch_s=since,
        )
    finally:
        spark.stop()
    return {
        "ok": all(r["balanced"] for r in reconciliation.values())
        and all(p["failed"] == 0 for p in [*produced.values(), *history]),
        "produced_history": {str(d): h for d, h in zip(HISTORY_DAYS_AGO, history, strict=True)},
        "produced": produced,
        "tables": tables,
        "freshness_kafka_to_silver": fresh,
        "freshness_kafka_to_anomaly_flag": {"ev": flags},
        "top_anomalies": top,
        "quarantine_by_rule": by_rule,
        "reconciliation": {
            e: {"balanced": r["balanced"], "partitions": r["partitions"]} for e, r in reconciliation.items()
        },
        "seconds": {"demo": round(time.monotonic() - started, 1)},
        "next": "tierlake ingest reconcile; tierlake stack status; tierlake stack down (data stays under run_dir)",
    }


def _s(value: object) -> str:
    """Seconds as a person reads them: one decimal, or ``-`` when there is no figure."""
    return f"{value:.1f} s" if isinstance(value, int | float) else "-"


def summary(report: dict[str, Any]) -> str:
    """The demo's report for a person: per entity what came in, where it went, how fresh, and the verdict."""
    took = report["seconds"]
    verdict = "OK" if report["ok"] else "PROBLEMS FOUND"
    lines = [f"tierlake demo: {verdict} in {_s(took.get('total'))} (stack up {_s(took.get('stack_up'))})", ""]
    for entity, tables in report["tables"].items():
        produced = report["produced"].get(entity, {})
        fresh = report["freshness_kafka_to_silver"].get(entity, {})
        balanced = report["reconciliation"].get(entity, {}).get("balanced")
        rules = ", ".join(f"{rule} {n}" for rule, n in report["quarantine_by_rule"].get(entity, {}).items())
        lines += [
            f"{entity}: {produced.get('acknowledged', '?')} records acknowledged by Kafka "
            f"({produced.get('failed', '?')} failed)",
            f"  silver {tables.get('silver', '?')}, quarantine {tables.get('quarantine', '?')}"
            + (f" ({rules})" if rules else "")
            + f", dropped {tables.get('dropped', '?')}",
            f"  freshness Kafka -> silver commit: p50 {_s(fresh.get('p50_s'))}, p99 {_s(fresh.get('p99_s'))}",
            f"  reconciliation: {'balanced' if balanced else 'NOT balanced'}",
        ]
        if entity == "ev":
            flags = report["freshness_kafka_to_anomaly_flag"]["ev"]
            lines.append(f"  anomaly flags: {flags.get('rows')} (p50 {_s(flags.get('p50_s'))} to their commit)")
    lines += _lifecycle_lines(report)
    lines += ["", f"next: {report['next']}", "the whole report: tierlake demo --json"]
    return "\n".join(lines)


def _lifecycle_lines(report: dict[str, Any]) -> list[str]:
    """The short lifecycle's outcome, then what each of the three users does next (commands that work as printed)."""
    life, sample = report.get("lifecycle"), report.get("trainer_sample")
    if not life:
        return []
    table, station = life["table"], life["station_on_tape"] or "st-0007"
    days = life["files_per_day_after_optimize"]
    lines = [
        "",
        f"lifecycle of {table} ({_s(life['seconds'])}): files per day {_days(life['files_per_day_before_optimize'])}"
        f" -> after OPTIMIZE {_days(days)}",
        f"  edge cache warmed for {(life['warmed'] or {}).get('partition')}; archived to tape at both sites: "
        f"{', '.join(life['archived_partitions']) or 'nothing new'} ({life['archived_files']} files, "
        f"cartridges {life['cartridges'] or '-'}); bad copies: {life['copies_bad']}",
        f"  purge (dry run): {life['purge_plan']['files']} files due, {life['purge_plan']['kept_by_retention_or_hold']}"
        " kept by retention or legal hold",
        "",
        "data engineer: table health, and what the tiering DAG would do",
        "  .venv/bin/tierlake table stats --all",
        f"  .venv/bin/tierlake archive select --table {table}",
        f"  .venv/bin/tierlake archive purge --table {table} --only-due",
    ]
    if sample:
        lines += [
            f"trainer: {sample['batches']} batches of {sample['shape']} tokens read from {sample['table']}"
            f"@{sample['version']} in {_s(sample['total_s'])} (first after {_s(sample['first_batch_s'])}); "
            "train on it:",
            f"  .venv/bin/python -m training.example --run demo --table {sample['table']} --steps 20",
        ]
    return [
        *lines,
        "compliance: a station's archived records, where they are, and a restore",
        f'  .venv/bin/tierlake archive query "SELECT partition, path, copy, site, cartridge FROM catalog '  # noqa: S608 - a command printed for a person
        f"WHERE key_min <= '{station}' AND '{station}' <= key_max\"",
        f"  .venv/bin/tierlake archive restore --table {table} --key {station} --to /tmp/tierlake-restore",
        '  .venv/bin/tierlake archive query "SELECT at, action, target FROM audit ORDER BY at"',
    ]


def _days(files: dict[str, int]) -> str:
    """Files per partition, the newest few: ``2026-01-06: 3, 2026-01-07: 9``."""
    shown = [f"{p.partition('=')[2]}: {n}" for p, n in list(files.items())[-4:]]
    return ("... " if len(files) > 4 else "") + ", ".join(shown) if shown else "-"
