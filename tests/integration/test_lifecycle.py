"""One lake, one lifecycle (issue 25), on the real stack: EV data of several days from Kafka through the pipeline's
own day-partitioned tables, OPTIMIZE, the edge cache, tape at two sites, a purge, and back through Spark, delta-rs
and the loader, recalled from tape; the catalog finds a station's records and restores them; the audit log shows it.

Each test gets a topic and entity of its own (tests.integration.test_ingest.Oracle), so its tables are its alone;
the cold-tier policy is conf/'s default for silver/ev, applied to the test's silver table.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from infra.stack import LocalStack
from loaders.dataset import OrderOptions, delta_dataset
from loaders.loader import DeltaLoader
from loaders.recall import Recall
from pipelines.checks.reconcile import reconcile
from pipelines.lake import maintenance
from tests.integration.test_ingest import Oracle, day_records
from tests.lake_tables import scratch_archive
from tierlake import catalog
from tierlake.errors import NotFound, RetentionViolation
from tiers.archive import compliance
from tiers.archive.archiver import run
from tiers.archive.catalog import Catalog, quote
from tiers.archive.context import ArchiveContext
from tiers.cache import cache_from_settings
from tiers.cache.warm import warm
from tiers.s3 import delta_storage_options
from tiers.store import S3Store

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from tierlake.config import Settings
    from tierlake.config.archive import ArchiveTable

pytestmark = [pytest.mark.integration, pytest.mark.slow]
OLD_DAYS_AGO = (42, 41, 40)  # cold under conf/'s default policy (cold_after_days: 30); today stays hot
SPARK_COLUMNS = ["partition", "offset", "event_id", "station_id", "power_kw", "event_date"]
STATION = "st-0007"


def _spark_rows(spark: SparkSession, uri: str, version: int) -> list[tuple[Any, ...]]:
    frame = spark.read.format("delta").option("versionAsOf", version).load(uri).select(*SPARK_COLUMNS)
    return sorted(tuple(str(v) for v in r) for r in frame.collect())


def _rust_rows(uri: str, version: int, options: dict[str, str]) -> list[tuple[Any, ...]]:
    rows = DeltaTable(uri, version=version, storage_options=options).to_pyarrow_table(columns=SPARK_COLUMNS)
    return sorted(tuple(str(r[c]) for c in SPARK_COLUMNS) for r in rows.to_pylist())


def _loader_rows(uri: str, version: int, options: dict[str, str], recall: Recall | None) -> list[tuple[int, int]]:
    dataset = delta_dataset(
        uri,
        version=version,
        columns=["partition", "offset"],
        storage_options=options,
        order=OrderOptions(seed=5),
        recall=recall,
    )
    batches = list(DeltaLoader(dataset, batch_size=50))  # 600 rows: no partial batch to drop
    parts = np.concatenate([b["partition"].numpy() for b in batches]).tolist()
    offsets = np.concatenate([b["offset"].numpy() for b in batches]).tolist()
    return sorted(zip(parts, offsets, strict=True))


def _files_per_day(settings: Any, table: str) -> dict[str, int]:
    return maintenance.table_stats(settings, table).files_per_partition


def _assert_warmed_today_only(settings: Settings, table: str, today: str, days_before: int) -> None:
    """Warming the edge cache for today's partition fetches today's files only, none failing."""
    cached = warm(cache_from_settings(settings.cache.options, settings.s3), settings.s3, table, partitions=(today,))
    assert cached.failed == []
    assert 1 <= cached.files < days_before + 3  # today's files only


def _archive_by_default_policy(
    settings: Settings, table: str, old_days: list[str], scope: str, tmp_path: Path
) -> tuple[ArchiveContext, ArchiveTable]:
    """Archive the old days by conf/'s default policy for silver/ev, whose retention then holds back the purge."""
    default = settings.archive.tables["silver/ev"]
    assert default.retention_days > 0  # conf/ keeps the online copy a while after archiving...
    policy = dataclasses.replace(default, table=table)
    context = ArchiveContext(
        archive=scratch_archive(settings.archive, tmp_path, {table: policy}),
        s3=settings.s3,
        cache=settings.cache.options,
    )
    cold = Catalog(context.archive.catalog_uri, context.archive.audit_uri)
    chosen = compliance.select(context, cold, table)
    assert sorted(c["partition"] for c in chosen) == old_days  # by the default policy: the old days, not today
    report = run(context, cold, table, old_days, progress=False)
    assert report.all_verified
    assert report.files == 3
    assert set(report.cartridges) == set(settings.archive.sites)
    assert compliance.verify(context, cold, None, progress=False)["bad"] == []
    with pytest.raises(RetentionViolation, match="retained until"):  # ...so the purge waits
        compliance.purge(context, cold, scope, execute=True)
    assert compliance.purge(context, cold, scope, execute=True, only_due=True)["kept"] == 3
    return context, policy


def _purge_after_retention(
    settings: Settings,
    context: ArchiveContext,
    policy: ArchiveTable,
    *,
    old_days: list[str],
    scope: str,
    tmp_path: Path,
) -> tuple[ArchiveContext, Catalog, list[str]]:
    """Archive the old days again under a 0-day retention (a catalog of their own) and purge their online copies."""
    table = policy.table
    context = dataclasses.replace(
        context,
        archive=dataclasses.replace(context.archive, tables={table: dataclasses.replace(policy, retention_days=0)}),
    )
    cold = Catalog(str(tmp_path / "catalog0"), str(tmp_path / "audit0"))
    context = dataclasses.replace(
        context,
        archive=dataclasses.replace(context.archive, catalog_uri=cold.catalog_uri, audit_uri=cold.audit_uri),
    )
    assert run(context, cold, table, old_days, progress=False).all_verified
    assert compliance.verify(context, cold, None, progress=False)["bad"] == []
    assert compliance.retention(cold)["became_purgeable"] == 3
    purged = compliance.purge(context, cold, scope, execute=True, only_due=True)["files"]
    assert len(purged) == 3
    store = S3Store(settings.s3)
    for uri in purged:
        with pytest.raises(NotFound):
            store.info(settings.s3.lake_bucket, uri.removeprefix(f"s3://{settings.s3.lake_bucket}/"))
    return context, cold, purged


def _assert_station_restored(
    context: ArchiveContext,
    cold: Catalog,
    table: str,
    scope: str,
    *,
    spark_before: list[tuple[Any, ...]],
    old_days: list[str],
    tmp_path: Path,
) -> None:
    """The catalog finds the station's archived files, and restoring them yields exactly its old-day records."""
    found = compliance.locate(cold, table, STATION)
    assert {f["partition"] for f in found} == set(old_days)
    restored = compliance.restore(
        context, cold, f"{scope} AND key_min <= {quote(STATION)} AND {quote(STATION)} <= key_max", str(tmp_path / "r")
    )
    files = [Path(r["to"]) for r in restored.restored]
    rows = [r for f in files for r in pq.read_table(f).to_pylist() if r["station_id"] == STATION]
    expected = [r for r in spark_before if r[3] == STATION and f"event_date={r[5]}" in old_days]
    assert sorted((str(r["partition"]), str(r["offset"])) for r in rows) == sorted((r[0], r[1]) for r in expected)
    assert expected


def _assert_audit_shows_it(cold: Catalog, purged: list[str]) -> None:
    """The audit log holds every action of the lifecycle, one archive of 3 files, and an unbroken chain."""
    actions = Counter(e["action"] for e in cold.audit().to_pylist())
    assert {"archive", "verify", "retention", "purge", "recalled", "query", "restore"} <= set(actions), actions
    archived = [json.loads(e["detail"]) for e in cold.audit().to_pylist() if e["action"] == "archive"]
    assert [a["files"] for a in archived] == [3]
    assert {r["key"] for r in cold.rows().to_pylist()} == {u.split("/", 3)[3] for u in purged}
    assert cold.audit_chain_ok()


def test_ev_days_flow_from_kafka_to_tape_and_read_back_by_version(
    stack: LocalStack, spark: SparkSession, tmp_path: Path
) -> None:
    oracle = Oracle(stack)
    settings = oracle.settings()
    table = catalog.silver(settings.s3.lake_bucket, oracle.entity)
    options = delta_storage_options(settings.s3)
    # Ingest: the two oldest days, then the third and today's, then more of today (three batches, three versions).
    oracle.produce(day_records(42, 150, seed=1) + day_records(41, 150, seed=2))
    oracle.ingest_in_session(spark)
    oracle.produce(day_records(40, 150, seed=3) + day_records(0, 150, seed=4))
    oracle.ingest_in_session(spark)
    assert reconcile(spark, settings, entity=oracle.entity)["balanced"]
    old_days = [f"event_date={date.today() - timedelta(days=d)}" for d in OLD_DAYS_AGO]
    today = f"event_date={date.today()}"
    before = _files_per_day(settings, table.path)
    assert set(before) == {*old_days, today}  # one partition per event day, nothing else

    compacted = maintenance.optimize(settings, table.path)
    after = _files_per_day(settings, table.path)
    assert compacted.rows_after == compacted.rows_before == 600
    assert all(n == 1 for n in after.values()), after  # one file per day after OPTIMIZE
    version = compacted.version_after  # the version read back from tape at the end
    oracle.produce(day_records(0, 100, seed=5))
    oracle.ingest_in_session(spark)
    spark_before = _spark_rows(spark, table.s3a, version)
    rust_before = _rust_rows(table.s3, version, options)
    loader_before = _loader_rows(table.s3, version, options, None)
    assert len(spark_before) == len(rust_before) == len(loader_before) == 600
    assert spark_before == rust_before

    _assert_warmed_today_only(settings, table.path, today, len(before))

    scope = f'"table" = {quote(table.path)}'
    context, policy = _archive_by_default_policy(settings, table.path, old_days, scope, tmp_path)

    # Retention over (a policy of 0 days for the test's own archive run of the same files): purge.
    context, cold, purged = _purge_after_retention(
        settings, context, policy, old_days=old_days, scope=scope, tmp_path=tmp_path
    )

    with pytest.raises(NotFound, match=r"3 data file\(s\) of .* are on tape only"):
        _loader_rows(table.s3, version, options, Recall(context=context, mode="never"))
    recall = Recall(context=context, mode="auto", reason="lifecycle test", progress=False)
    assert _loader_rows(table.s3, version, options, recall) == loader_before
    assert _spark_rows(spark, table.s3a, version) == spark_before
    assert _rust_rows(table.s3, version, options) == rust_before

    # Compliance: a station's archived records, found through the catalog and restored to a folder.
    _assert_station_restored(
        context, cold, table.path, scope, spark_before=spark_before, old_days=old_days, tmp_path=tmp_path
    )

    _assert_audit_shows_it(cold, purged)
