"""The cold tier against the real stack: a Delta table on Ceph RGW (written by Spark, partitioned by date) is
archived to two virtual sites, verified, purged from RGW, restored by key; Spark and delta-rs read the same rows.
Also: bit-rot in one copy (verify reports it, restore takes the other site), retention and hold refusals, restore
paths that escape their root, a catalog rebuilt from the cartridges alone."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from tests.lake_tables import scratch_archive
from tierlake.config import ArchiveTable, Settings
from tierlake.errors import ConfigError, RetentionViolation
from tiers.archive import compliance
from tiers.archive.archiver import RunReport, run
from tiers.archive.catalog import MUTABLE, Catalog
from tiers.archive.context import ArchiveContext
from tiers.s3 import delta_storage_options
from tiers.store import S3Store
from tiers.tape.library import Library

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

OLD_DAYS = ["2020-01-01", "2020-01-02"]


def _archive_context(settings: Settings, tmp_path: Path, table: str, *, retention_days: int) -> ArchiveContext:
    """The archive tier's part of ``settings`` (issue 18: never the whole Settings), on a library under tmp_path."""
    policy = ArchiveTable(
        table=table,
        partition_column="day",
        key_column="station_id",
        cold_by="age",
        cold_after_days=30,
        retention_days=retention_days,
    )
    archive = scratch_archive(settings.archive, tmp_path, {table: policy})
    return ArchiveContext(archive=archive, s3=settings.s3, cache=settings.cache.options)


def _catalog(context: ArchiveContext) -> Catalog:
    return Catalog(context.archive.catalog_uri, context.archive.audit_uri, s3=context.s3)


def _rows(count: int, day: str) -> dict[str, list[Any]]:
    return {
        "station_id": [f"st-{day}-{i % 7:02d}" for i in range(count)],
        "kwh": [i * 0.25 for i in range(count)],
        "day": [day] * count,
    }


def _write_rs(settings: Settings, table: str, days: list[str], count: int = 500) -> str:
    uri = f"s3://{settings.s3.lake_bucket}/{table}"
    for day in days:
        write_deltalake(
            uri,
            pa.table(_rows(count, day)),
            mode="append",
            partition_by=["day"],
            storage_options=delta_storage_options(settings.s3),
        )
    return uri


def _by_day(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in one order whatever wrote or read them, so Spark's and delta-rs's reads compare as lists."""
    return sorted(rows, key=lambda r: (r["day"], r["station_id"], r["kwh"]))


def _sorted(table: pa.Table) -> list[dict[str, Any]]:
    """A delta-rs read, in the order :func:`_by_day` gives."""
    return _by_day(table.select(["station_id", "kwh", "day"]).to_pylist())


def _write_spark(spark: SparkSession, path: str, days: list[str]) -> None:
    """300 rows a day, written by Spark and partitioned by day: the flow starts from a table Spark wrote."""
    frame = spark.createDataFrame([r for d in days for r in pa.table(_rows(300, d)).to_pylist()])
    frame.repartition(2).write.format("delta").partitionBy("day").mode("overwrite").save(path)


def _read_spark(spark: SparkSession, path: str) -> list[dict[str, Any]]:
    """The table as Spark reads it, in the order :func:`_by_day` gives, to compare with delta-rs's read."""
    return _by_day(
        r.asDict() for r in spark.read.format("delta").load(path).select("station_id", "kwh", "day").collect()
    )


def _archive_old_days(cold: ArchiveContext, catalog: Catalog, table: str) -> tuple[RunReport, list[dict[str, Any]]]:
    """Archive what the policy selects (the old days only), check the report and the catalog's rows; returns both."""
    chosen = compliance.select(cold, catalog, table)
    assert [c["partition"] for c in chosen] == [f"day={d}" for d in OLD_DAYS]
    report = run(cold, catalog, table, [c["partition"] for c in chosen], progress=False)
    assert report.all_verified
    assert report.files > 0
    assert set(report.cartridges) == set(cold.archive.sites)
    rows = catalog.rows().to_pylist()
    assert len(rows) == 2 * report.files
    assert {r["copy"] for r in rows} == {1, 2}
    assert all(r["state"] == "VERIFIED" and r["start_block"] >= 7 and len(r["volume_uuid"]) == 36 for r in rows)
    assert compliance.select(cold, catalog, table) == []  # archived partitions are no longer candidates
    return report, rows


def _comparable(source: Catalog) -> list[dict[str, Any]]:
    """A catalog's rows without the columns that change after archiving (state, legal hold, hold reason), sorted."""
    kept = [c for c in source.rows().column_names if c not in MUTABLE]
    return sorted(source.rows().select(kept).to_pylist(), key=lambda r: (r["file_id"], r["copy"]))


def _assert_rebuild_matches(cold: ArchiveContext, catalog: Catalog, report: RunReport, tmp_path: Path) -> None:
    """A catalog rebuilt from the two cartridges alone equals the catalog, even after archive.block_size changed:
    extents count in the records of each cartridge's own label."""
    rebuilt = Catalog(str(tmp_path / "rebuilt"), str(tmp_path / "audit"))
    resized = dataclasses.replace(cold, archive=dataclasses.replace(cold.archive, block_size=4096))
    for barcode in report.cartridges.values():
        compliance.rebuild(resized, catalog, barcode, into=rebuilt)
    assert _comparable(rebuilt) == _comparable(catalog)


def _purge_archived(
    settings: Settings, cold: ArchiveContext, catalog: Catalog, *, table: str, report: RunReport, keys: set[str]
) -> S3Store:
    """Retention, a dry run that deletes nothing, then the purge: every archived key gone from RGW, all rows PURGED."""
    assert compliance.retention(catalog)["became_purgeable"] == report.files
    dry = compliance.purge(cold, catalog, f"\"table\" = '{table}'", execute=False)
    assert dry["dry_run"]
    store = S3Store(settings.s3)
    assert all(store.info(settings.s3.lake_bucket, k).size > 0 for k in keys)  # dry run deleted nothing
    purged = compliance.purge(cold, catalog, f"\"table\" = '{table}'", execute=True)
    assert len(purged["files"]) == report.files
    assert not any(o.key in keys for o in store.ls(settings.s3.lake_bucket, table))
    assert {r["state"] for r in catalog.rows().to_pylist()} == {"PURGED"}
    return store


def _restore_by_key(cold: ArchiveContext, catalog: Catalog, table: str) -> None:
    """Restore one key (found in both copies, no fallback), then the rest of the purged files by partition."""
    key = f"st-{OLD_DAYS[0]}-03"
    located = compliance.locate(catalog, table, key)
    assert {loc["copy"] for loc in located} == {1, 2}
    restored = compliance.restore(cold, catalog, compliance._scope(table, key=key), "s3", progress=False)
    assert restored.fallbacks == []
    # The key lives in the first old day's files; restore the rest of the purged files by partition too.
    compliance.restore(cold, catalog, compliance._scope(table, partition=f"day={OLD_DAYS[1]}"), "s3", progress=False)


def test_archive_purge_restore_by_key_spark_and_delta_rs_agree(
    settings: Settings, spark: SparkSession, tmp_path: Path
) -> None:
    table = f"tests/archive/{uuid.uuid4().hex[:8]}/events"
    cold = _archive_context(settings, tmp_path, table, retention_days=0)
    path = f"s3a://{settings.s3.lake_bucket}/{table}"
    days = [*OLD_DAYS, date.today().isoformat()]
    _write_spark(spark, path, days)
    uri = f"s3://{settings.s3.lake_bucket}/{table}"
    options = delta_storage_options(settings.s3)
    before = _sorted(DeltaTable(uri, storage_options=options).to_pyarrow_table())
    catalog = _catalog(cold)

    report, rows = _archive_old_days(cold, catalog, table)
    _assert_rebuild_matches(cold, catalog, report, tmp_path)
    keys = {r["key"] for r in rows}
    store = _purge_archived(settings, cold, catalog, table=table, report=report, keys=keys)
    _restore_by_key(cold, catalog, table)
    assert all(store.info(settings.s3.lake_bucket, k).size > 0 for k in keys)
    after_rs = _sorted(DeltaTable(uri, storage_options=options).to_pyarrow_table())
    after_spark = _read_spark(spark, path)
    assert after_rs == before
    assert after_spark == before
    actions = [a["action"] for a in catalog.audit().to_pylist()]
    assert {"archive", "retention", "purge", "restore", "query"} <= set(actions)
    assert catalog.audit_chain_ok()


def test_bit_rot_in_one_copy_is_reported_and_restore_uses_the_other(settings: Settings, tmp_path: Path) -> None:
    table = f"tests/archive/{uuid.uuid4().hex[:8]}/rot"
    cold = _archive_context(settings, tmp_path, table, retention_days=0)
    _write_rs(settings, table, OLD_DAYS[:1], count=5000)
    catalog = _catalog(cold)
    report = run(cold, catalog, table, [f"day={OLD_DAYS[0]}"], progress=False)
    assert report.all_verified
    assert compliance.verify(cold, catalog, None, progress=False)["bad"] == []
    row = next(r for r in catalog.rows().to_pylist() if r["copy"] == 1)
    record = Library(cold.archive).cartridge_dir(row["cartridge"]) / f"1_{row['start_block']}_R"
    data = bytearray(record.read_bytes())
    data[row["byte_offset"] + 10] ^= 0xFF
    record.write_bytes(bytes(data))

    result = compliance.verify(cold, catalog, row["cartridge"], progress=False)
    assert [b["path"] for b in result["bad"]] == [row["path"]]
    assert compliance.verify(cold, catalog, report.cartridges[cold.archive.sites[1]], progress=False)["bad"] == []
    out = tmp_path / "out"
    restored = compliance.restore(cold, catalog, compliance._scope(table, file=row["path"]), str(out), progress=False)
    assert restored.restored[0]["copy"] == 2
    assert "SHA-256 mismatch" in restored.fallbacks[0]
    target = Path(restored.restored[0]["to"])
    assert target.is_relative_to(out)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == row["sha256"]


def test_retention_hold_and_path_traversal_refusals(settings: Settings, tmp_path: Path) -> None:
    table = f"tests/archive/{uuid.uuid4().hex[:8]}/held"
    retained = _archive_context(settings, tmp_path, table, retention_days=3650)
    _write_rs(settings, table, OLD_DAYS)
    catalog = _catalog(retained)
    run(retained, catalog, table, [f"day={d}" for d in OLD_DAYS], progress=False)
    scope = compliance._scope(table)
    with pytest.raises(RetentionViolation, match="retained until"):
        compliance.purge(retained, catalog, scope, execute=True)
    report = compliance.retention(catalog)
    assert report["became_purgeable"] == 0
    assert len(report["expiring"]) == 2 * 0 + len({r["path"] for r in catalog.rows().to_pylist()})

    # Retention over (rewrite the dates as if years passed), then a legal hold on one partition.
    catalog.update(scope, {"retention_until": "CAST('2000-01-01T00:00:00Z' AS TIMESTAMP)"})
    held = compliance._scope(table, partition=f"day={OLD_DAYS[0]}")
    with pytest.raises(ConfigError, match="needs a reason"):
        compliance.hold(catalog, held, reason=" ", on=True)
    assert compliance.hold(catalog, held, reason="case 2026-17", on=True) > 0
    with pytest.raises(RetentionViolation, match="legal hold"):
        compliance.purge(retained, catalog, scope, execute=True)
    report = compliance.retention(catalog)
    assert {h["reason"] for h in report["held"]} == {"case 2026-17"}
    free = compliance._scope(table, partition=f"day={OLD_DAYS[1]}")
    assert compliance.purge(retained, catalog, free, execute=True)["files"]
    compliance.hold(catalog, held, reason="", on=False)
    assert compliance.purge(retained, catalog, held, execute=False)["files"]

    with pytest.raises(ConfigError, match="escapes"):
        compliance.safe_destination(tmp_path / "root", "tierlake-lake", "../../etc/passwd")
    with pytest.raises(ConfigError, match="escapes"):
        compliance.safe_destination(tmp_path / "root", "..", "x")
    row = catalog.rows().slice(0, 1).to_pylist()[0]
    catalog.append([row | {"file_id": "evil", "path": "evil", "key": "a/../../../outside", "copy": 1}])
    with pytest.raises(ConfigError, match="escapes"):
        compliance.restore(
            retained, catalog, compliance._scope(table, file="evil"), str(tmp_path / "dest"), progress=False
        )
    assert not (tmp_path / "outside").exists()
