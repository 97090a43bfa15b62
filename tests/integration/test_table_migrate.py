"""`tierlake table migrate` on the real stack (issue 25): a lake written before the day layout is rewritten once,
partitioned by day, with nothing lost or changed, and ingestion resumes on it from its checkpoints.

The old layout is made the way an upgrade meets it: the pipeline's tables (bronze, silver, gold windows and
anomalies) rewritten unpartitioned and without their day column, and gold's streaming checkpoint written by a
stream over that unpartitioned silver, with no schema tracking log (as the code before the day layout left it).
Records wait in Kafka while the lake migrates; more come after. Each test has a topic and entity of its own
(tests.integration.test_ingest.Oracle).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from deltalake import DeltaTable

from infra.stack import LocalStack
from pipelines.checks.reconcile import reconcile
from pipelines.ingest.gold import gold_checkpoint
from pipelines.synthetic.datasets import EV_SPACING_S, good_records, recent_start
from tests.integration.test_ingest import Oracle, day_records
from tierlake import catalog
from tiers.s3 import delta_storage_options, s3_client

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from tierlake.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _tables(settings: Settings, entity: str, topic: str) -> list[str]:
    return [t.path for t in catalog.entity_tables(settings.s3.lake_bucket, entity, topic) if catalog.day_layout(t.path)]


def _rows(settings: Settings, path: str, *, drop: str) -> list[tuple[str, ...]]:
    """Every row of the table's latest version but the day column, as sorted text tuples (columns by name)."""
    uri = f"s3://{settings.s3.lake_bucket}/{path}"
    table = DeltaTable(uri, storage_options=delta_storage_options(settings.s3)).to_pyarrow_table()
    columns = sorted(c for c in table.column_names if c != drop)
    return sorted(tuple(str(row[c]) for c in columns) for row in table.select(columns).to_pylist())


def _to_old_layout(spark: SparkSession, settings: Settings, path: str) -> None:
    """Rewrite ``path`` as the pipeline wrote it before the day layout: no day column, no partitions."""
    layout = catalog.day_layout(path)
    assert layout is not None
    uri = f"s3a://{settings.s3.lake_bucket}/{path}"
    frame = spark.read.format("delta").load(uri).drop(layout.column).localCheckpoint()
    frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(uri)


def _old_gold_checkpoint(spark: SparkSession, settings: Settings, entity: str) -> None:
    """Gold's checkpoint as the old code left it: a stream over the unpartitioned silver, no schema log.

    Gold already holds every silver row (the first ingest ran it), so this stream's batches write nothing.
    """
    client, bucket = s3_client(settings.s3), settings.s3.lake_bucket
    prefix = catalog.gold_checkpoint(bucket, entity).path + "/"
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    assert listed, f"no gold checkpoint under {prefix}"
    for item in listed:
        client.delete_object(Bucket=bucket, Key=item["Key"])
    query = (
        spark.readStream.format("delta")
        .option("skipChangeCommits", "true")
        .load(catalog.silver(bucket, entity).s3a)
        .writeStream.foreachBatch(lambda batch, batch_id: None)
        .option("checkpointLocation", gold_checkpoint(settings, entity))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination()


def _migrate(oracle: Oracle) -> list[dict[str, Any]]:
    result = oracle.cli("table", "migrate", "--all", "--execute", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    reports: list[dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
    return reports


def _assert_migrated(
    settings: Settings, tables: list[str], old: dict[str, list[tuple[str, ...]]], reports: dict[str, dict[str, Any]]
) -> None:
    """Every table was rewritten once, partitioned by day, with the same rows (the day column aside) and checksum."""
    assert set(reports) == set(tables)
    for path, report in reports.items():
        assert report["migrated"], report
        assert report["partitioned_before"] == [], report
        assert (report["rows_after"], report["checksum_after"]) == (report["rows_before"], report["checksum_before"])
        layout = catalog.day_layout(path)
        assert layout is not None
        assert _rows(settings, path, drop=layout.column) == old[path], f"{path}: the rewrite changed rows"
        uri = f"s3://{settings.s3.lake_bucket}/{path}"
        meta = DeltaTable(uri, storage_options=delta_storage_options(settings.s3)).metadata()
        assert list(meta.partition_columns) == [layout.column]


def _assert_gold_passed(oracle: Oracle, silver: list[dict[str, Any]]) -> None:
    """Every silver row sits in exactly one gold window of each length, and each hot event is flagged once."""
    windows = oracle.gold("windows")
    for minutes in (1, 15):
        assert sum(w["samples"] for w in windows if w["window_minutes"] == minutes) == len(silver), minutes
    hot = {
        r["event_id"]
        for r in silver
        if (r["temp_c"] or 0) > 80 or r["power_kw"] > 400 or (r["status"] == "dropout" and r["power_kw"] == 0)
    }
    flagged = Counter(a["event_id"] for a in oracle.gold("anomalies"))
    assert set(flagged) == hot
    assert not flagged or max(flagged.values()) == 1
    assert all(a["event_date"] is not None for a in oracle.gold("anomalies"))


def test_an_old_layout_lake_migrates_once_and_ingestion_resumes_on_it(stack: LocalStack, spark: SparkSession) -> None:
    oracle = Oracle(stack)
    settings = oracle.settings()
    tables = _tables(settings, oracle.entity, oracle.topic)
    silver_path = catalog.silver(settings.s3.lake_bucket, oracle.entity).path
    assert silver_path in tables
    assert len(tables) == 4  # bronze, silver, gold windows and anomalies

    # The lake before the day layout: two days of events ingested, then laid out as the old code wrote it.
    oracle.produce(day_records(2, 150, seed=21) + day_records(1, 150, seed=22))
    oracle.ingest_in_session(spark)
    for path in tables:
        _to_old_layout(spark, settings, path)
    _old_gold_checkpoint(spark, settings, oracle.entity)
    old = {path: _rows(settings, path, drop="") for path in tables}
    assert len(old[silver_path]) == 300

    # Records wait in Kafka while the lake migrates (the ingestion is stopped: migrate holds its lease).
    start = recent_start(400, EV_SPACING_S)
    oracle.produce(list(good_records("ev", 200, seed=23, start=start)))
    reports = {r["table"]: r for r in _migrate(oracle)}
    _assert_migrated(settings, tables, old, reports)
    assert reports[silver_path]["rows_after"] == 300

    # Ingestion resumes from its checkpoints on the new layout: what waited (a driver started after the migration),
    # then more.
    oracle.ingest_ok()
    oracle.produce(list(good_records("ev", 200, seed=24, start=start + timedelta(seconds=200 * EV_SPACING_S))))
    oracle.ingest_in_session(spark)

    silver = oracle.table("silver")
    assert len(oracle.expect) == 700
    assert Counter((r["partition"], r["offset"]) for r in silver) == Counter(list(oracle.expect))  # each record once
    assert {r["event_id"] for r in silver} == {r.event_id for r in oracle.expect.values()}
    old_days = {date.today() - timedelta(days=d) for d in (2, 1)}
    assert old_days <= {r["event_date"] for r in silver} <= old_days | {datetime.now(UTC).date()}
    report = reconcile(spark, settings, entity=oracle.entity)
    assert report["balanced"], json.dumps(report, indent=2)
    assert sum(p["bronze"] for p in report["partitions"]) == 700

    # Gold passed the migration: every silver row in exactly one window of each length, each flag once.
    _assert_gold_passed(oracle, silver)
