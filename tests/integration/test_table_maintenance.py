"""OPTIMIZE, VACUUM, checkpoint, history and stats on real Delta tables on Ceph RGW (Spark for the rewrites)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from pipelines.lake import maintenance
from pipelines.lake.lease import TableLease
from tests.lake_tables import small_table
from tierlake.config import Settings
from tierlake.errors import CommitConflict, RetentionViolation
from tiers.s3 import delta_storage_options, s3_client

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def _table(settings: Settings, appends: int, rows: int = 40) -> str:
    return small_table(settings, "maint", appends=appends, rows=rows)


def _rows(settings: Settings, table: str) -> list[tuple[str, float]]:
    data = DeltaTable(maintenance.rust_uri(settings, table), storage_options=delta_storage_options(settings.s3))
    pydict = data.to_pyarrow_table().to_pydict()
    return sorted(zip(pydict["station_id"], pydict["power_kw"], strict=True))


def test_optimize_compacts_small_files_and_keeps_every_row(settings: Settings) -> None:
    table = _table(settings, appends=6)
    rows = _rows(settings, table)
    report = maintenance.optimize(settings, table)
    assert (report.files_before, report.files_after) == (6, 1)
    assert report.rows_before == report.rows_after == 240
    assert report.version_after == report.version_before + 1
    assert _rows(settings, table) == rows
    assert maintenance.history(settings, table, limit=1)[0]["operation"] == "OPTIMIZE"
    assert maintenance.optimize(settings, table).files_after == 1  # idempotent: nothing left to compact


def test_vacuum_deletes_removed_files_past_the_retention_and_keeps_the_live_ones(
    spark: SparkSession, settings: Settings
) -> None:
    # Delta's VACUUM counts the retention in whole hours, so a test cannot place the cut-off between two removals a
    # minute apart: here every removed file is past a 0-hour retention and every live file must stay.
    table = _table(settings, appends=3)
    uri, options = maintenance.rust_uri(settings, table), delta_storage_options(settings.s3)
    removed = set(maintenance.data_objects(settings, table))
    write_deltalake(uri, pa.table({"station_id": ["b"], "power_kw": [2.0]}), mode="overwrite", storage_options=options)
    live = set(maintenance.data_objects(settings, table)) - removed
    with pytest.raises(RetentionViolation, match="7-day"):
        maintenance.vacuum(spark, settings, table, retention_hours=0)
    dry = maintenance.vacuum(spark, settings, table, retention_hours=0, allow_short_retention=True, dry_run=True)
    assert set(dry.deletable) == removed
    assert set(maintenance.data_objects(settings, table)) == removed | live  # a dry run deletes nothing
    kept = maintenance.vacuum(spark, settings, table, allow_short_retention=False)  # conf: 168 h
    assert kept.deleted == 0
    report = maintenance.vacuum(spark, settings, table, retention_hours=0, allow_short_retention=True)
    assert set(report.deletable) == removed
    assert set(maintenance.data_objects(settings, table)) == live
    assert _rows(settings, table) == [("b", 2.0)]


def test_maintenance_refuses_while_another_writer_holds_the_lease(spark: SparkSession, settings: Settings) -> None:
    table = _table(settings, appends=2)
    holder = TableLease(s3_client(settings.s3), settings.s3.lake_bucket, maintenance.lease_name(settings, table))
    holder.acquire()
    try:
        with pytest.raises(CommitConflict, match=rf"OPTIMIZE of {table} refused: .* owned by writer"):
            maintenance.optimize(settings, table)
        with pytest.raises(CommitConflict, match=r"VACUUM of .* refused"):
            maintenance.vacuum(spark, settings, table)
    finally:
        holder.release()
    assert maintenance.table_stats(settings, table).files == 2  # nothing was rewritten


def test_ingestion_lease_covers_its_tables_only_with_single_driver_commits(settings: Settings) -> None:
    # The ingestion driver of entity ev takes "ingest-ev". With single-driver commits maintenance of silver/ev must
    # wait for that same lease; with conditional commits (the default) the object store arbitrates, and it need not.
    holder = TableLease(s3_client(settings.s3), settings.s3.lake_bucket, "ingest-ev", owner="ingest driver test")
    holder.acquire()
    single = replace(settings, spark=replace(settings.spark, delta_commits="single_driver"))
    try:
        with (
            pytest.raises(CommitConflict, match="owned by writer ingest driver test"),
            maintenance.table_lease(single, "silver/ev", operation="OPTIMIZE"),
        ):
            pass
        with maintenance.table_lease(settings, "silver/ev", operation="OPTIMIZE") as lease:
            assert lease.name == "table-silver-ev"
    finally:
        holder.release()


def test_checkpoint_stats_and_metrics(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> None:
    table = _table(settings, appends=3)
    assert maintenance.checkpoint(settings, table) == {"table": table, "version": 2}
    client = s3_client(settings.s3)
    pointer = client.get_object(Bucket=settings.s3.lake_bucket, Key=f"{table}/_delta_log/_last_checkpoint")
    assert json.loads(pointer["Body"].read())["version"] == 2
    stats = maintenance.table_stats(settings, table)
    assert (stats.version, stats.files, stats.rows, stats.small_files) == (2, 3, 120, 3)
    path = maintenance.export_metrics([stats], tmp_path_factory.mktemp("metrics") / "tables.prom")
    text = path.read_text()
    assert f'tierlake_table_rows{{table="{table}"}} 120.0' in text
    assert f'tierlake_table_files{{table="{table}"}} 3.0' in text
    assert [e["operation"] for e in maintenance.history(settings, table)] == ["WRITE", "WRITE", "WRITE"]
