"""The second-site mirror: consistent snapshots of Delta tables, incremental, verified; and checkpoint prefixes."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from pipelines.lake import maintenance, mirror
from tierlake.config import Settings
from tiers.s3 import delta_storage_options, s3_client

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def _write(settings: Settings, table: str, day: str, n: int, *, overwrite: bool = False) -> None:
    batch = pa.table({"day": [day] * n, "station_id": [f"st-{i}" for i in range(n)], "kwh": [i / 3 for i in range(n)]})
    uri, options = maintenance.rust_uri(settings, table), delta_storage_options(settings.s3)
    if overwrite:
        write_deltalake(uri, batch, mode="overwrite", partition_by=["day"], storage_options=options)
    else:
        write_deltalake(uri, batch, mode="append", partition_by=["day"], storage_options=options)


def _spark_rows(spark: SparkSession, uri: str, version: int | None = None) -> list[tuple[object, ...]]:
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return sorted(tuple(r) for r in reader.load(uri).select("day", "station_id", "kwh").collect())


def _rust_rows(uri: str, settings: Settings, version: int | None = None) -> list[tuple[object, ...]]:
    table = DeltaTable(uri, version=version, storage_options=delta_storage_options(settings.s3))
    data = table.to_pyarrow_table(columns=["day", "station_id", "kwh"]).to_pydict()
    return sorted(zip(data["day"], data["station_id"], data["kwh"], strict=True))


def test_mirror_is_a_snapshot_that_spark_and_delta_rs_read_like_the_source(
    spark: SparkSession, settings: Settings
) -> None:
    table = f"scratch/mirror_{uuid.uuid4().hex[:8]}"
    _write(settings, table, "2026-11-01", 30)
    _write(settings, table, "2026-11-02 10:00", 20)  # a partition value that needs escaping in the path
    first = mirror.mirror_table(settings, table)
    assert first.ok
    assert (first.version, first.data_files, first.data_files_copied) == (1, 2, 2)
    assert first.rows_source == first.rows_mirror == 50
    assert first.checksums_verified == 2
    source_uri, mirror_uri = f"s3a://{settings.s3.lake_bucket}/{table}", f"s3a://{settings.mirror.bucket}/{table}"
    assert _spark_rows(spark, mirror_uri) == _spark_rows(spark, source_uri)
    assert _rust_rows(f"s3://{settings.mirror.bucket}/{table}", settings) == _rust_rows(
        maintenance.rust_uri(settings, table), settings
    )

    _write(settings, table, "2026-11-03", 5)
    again = mirror.mirror_table(settings, table)  # incremental: only the new file and commit
    assert again.ok
    assert (again.version, again.data_files, again.data_files_copied, again.log_files_copied) == (2, 3, 1, 1)
    assert _spark_rows(spark, mirror_uri) == _spark_rows(spark, source_uri)
    assert mirror.mirror_table(settings, table).data_files_copied == 0


def test_mirror_of_a_pinned_version_holds_that_version_only(settings: Settings) -> None:
    table = f"scratch/mirror_{uuid.uuid4().hex[:8]}"
    _write(settings, table, "2026-11-01", 10)
    _write(settings, table, "2026-11-01", 10, overwrite=True)
    _write(settings, table, "2026-11-02", 7)
    report = mirror.mirror_table(settings, table, version=1)
    assert report.ok
    assert report.mirror_version == 1
    assert report.rows_mirror == 10
    assert _rust_rows(f"s3://{settings.mirror.bucket}/{table}", settings) == _rust_rows(
        maintenance.rust_uri(settings, table), settings, version=1
    )


def test_checkpoint_prefix_is_copied_incrementally_and_verified(settings: Settings) -> None:
    prefix = f"training/ckpt_{uuid.uuid4().hex[:8]}/"
    client = s3_client(settings.s3)
    for step in (100, 200):
        client.put_object(
            Bucket=settings.s3.lake_bucket, Key=f"{prefix}step-{step}.pt", Body=bytes([step % 256]) * 5000
        )
    first = mirror.mirror_prefix(settings, prefix)
    assert (first.objects, first.copied, first.checksums_verified, first.ok) == (2, 2, 2, True)
    assert mirror.mirror_prefix(settings, prefix).copied == 0
    client.put_object(Bucket=settings.s3.lake_bucket, Key=f"{prefix}step-200.pt", Body=b"x" * 5000)  # same size
    changed = mirror.mirror_prefix(settings, prefix)
    assert (changed.copied, changed.ok) == (1, True)
    copy = client.get_object(Bucket=settings.mirror.bucket, Key=f"{prefix}step-200.pt")
    assert copy["Body"].read() == b"x" * 5000
    assert copy["Metadata"]["sha256"]
