"""Reads through tape against the real stack (issue 22, part 1): a partitioned Delta table on Ceph RGW is archived
to two virtual sites and purged; an old version is then read through the loader (``recall=``) and through Spark,
row for row as before the purge. On the way: ``never`` names every missing file and its cartridges, a recall killed
(SIGKILL from the fault-injection hook) publishes nothing, one corrupted copy sends the recall to the other site,
and ``tierlake archive restore --version`` recalls the same version into the edge cache only, which the loader
then reads from there. A file found missing while reading (``RecallingSource``, the per-file path) is recalled
once for several readers of it in several processes, and only that file."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import os
import signal
import uuid
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from loaders.dataset import OrderOptions, delta_dataset
from loaders.loader import DeltaLoader
from loaders.recall import Recall
from loaders.table import ArrowFileSource
from tests.lake_tables import scratch_archive
from tests.unit.recall_children import read_through_recalling_source, recall_to_lake_and_die
from tierlake.commands.archive import _restore
from tierlake.config import ArchiveTable, Settings
from tierlake.errors import NotFound
from tiers.archive import compliance, recall_io
from tiers.archive.archiver import run
from tiers.archive.catalog import Catalog, quote
from tiers.archive.context import ArchiveContext
from tiers.archive.recall import CacheTarget, RecallFile
from tiers.s3 import delta_storage_options, s3_client
from tiers.store import S3Store
from tiers.tape.library import Library

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = [pytest.mark.integration, pytest.mark.slow]
OLD_DAYS = ["2020-01-01", "2020-01-02"]


def _cold(settings: Settings, tmp_path: Path, table: str) -> Settings:
    policy = ArchiveTable(
        table=table, partition_column="day", key_column="id", cold_by="age", cold_after_days=30, retention_days=0
    )
    archive = scratch_archive(settings.archive, tmp_path, {table: policy})
    return dataclasses.replace(settings, archive=archive)


def _context(cold: Settings) -> ArchiveContext:
    """The archive tier's part of ``cold`` (issue 18: tiers and loaders never take the whole Settings)."""
    return ArchiveContext(archive=cold.archive, s3=cold.s3, cache=cold.cache.options)


def _append(uri: str, settings: Settings, days: list[str], start: int, count: int) -> int:
    ids = list(range(start, start + count * len(days)))
    rows = {"id": ids, "kwh": [i * 0.5 for i in ids], "day": [d for d in days for _ in range(count)]}
    write_deltalake(
        uri, pa.table(rows), mode="append", partition_by=["day"], storage_options=delta_storage_options(settings.s3)
    )
    return start + len(ids)


def _loader_rows(settings: Settings, uri: str, recall: Recall | None = None) -> list[tuple[int, float]]:
    dataset = delta_dataset(
        uri,
        version=1,
        columns=["id", "kwh"],
        storage_options=delta_storage_options(settings.s3),
        order=OrderOptions(seed=3),
        recall=recall,
    )
    batches = list(DeltaLoader(dataset, batch_size=50))
    ids = np.concatenate([b["id"].numpy() for b in batches]).tolist()
    kwh = np.concatenate([b["kwh"].numpy() for b in batches]).tolist()
    return sorted(zip(ids, kwh, strict=True))


def _spark_rows(spark: SparkSession, path: str) -> list[tuple[int, float, str]]:
    frame = spark.read.format("delta").option("versionAsOf", 1).load(path)
    return sorted((r["id"], r["kwh"], r["day"]) for r in frame.collect())


def _purge(cold: Settings, catalog: Catalog, table: str) -> list[str]:
    compliance.retention(catalog)
    purged: list[str] = compliance.purge(_context(cold), catalog, f'"table" = {quote(table)}', execute=True)["files"]
    return purged


def _corrupt_copy_one(cold: Settings, catalog: Catalog, purged: list[str]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = catalog.rows().to_pylist()
    row = next(r for r in rows if r["copy"] == 1 and f"s3://{r['bucket']}/{r['key']}" in purged)
    record = Library(cold.archive).cartridge_dir(row["cartridge"]) / f"1_{row['start_block']}_R"
    data = bytearray(record.read_bytes())
    data[row["byte_offset"] + 100] ^= 0xFF
    record.write_bytes(bytes(data))
    return row


def test_an_old_version_on_tape_reads_the_same_rows_through_the_loader_and_spark(
    settings: Settings, spark: SparkSession, tmp_path: Path
) -> None:
    table = f"tests/recall/{uuid.uuid4().hex[:8]}/events"
    cold = _cold(settings, tmp_path, table)
    uri, path = f"s3://{settings.s3.lake_bucket}/{table}", f"s3a://{settings.s3.lake_bucket}/{table}"
    start = _append(uri, settings, [*OLD_DAYS, date.today().isoformat()], 0, 200)  # version 0
    start = _append(uri, settings, OLD_DAYS, start, 150)  # version 1: the version read below
    _append(uri, settings, [date.today().isoformat()], start, 100)  # version 2
    before_loader, before_spark = _loader_rows(settings, uri), _spark_rows(spark, path)
    assert len(before_loader) == len(before_spark) == 900

    catalog = Catalog(cold.archive.catalog_uri, cold.archive.audit_uri)
    assert run(_context(cold), catalog, table, [f"day={d}" for d in OLD_DAYS], progress=False).all_verified
    purged = _purge(cold, catalog, table)
    assert len(purged) == 4  # two files in each old partition
    cartridges = sorted({r["cartridge"] for r in catalog.rows().to_pylist()})

    with pytest.raises(NotFound, match=r"4 data file\(s\) of .* are on tape only") as refused:
        _loader_rows(settings, uri, Recall(context=_context(cold), mode="never"))
    assert all(f"{u} " in str(refused.value) for u in purged)
    assert all(c in str(refused.value) for c in cartridges)

    bad = _corrupt_copy_one(cold, catalog, purged)
    child = multiprocessing.get_context("spawn").Process(
        target=recall_to_lake_and_die, args=(_context(cold), purged, "verified")
    )
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL
    store = S3Store(settings.s3)
    for key in (u.removeprefix(f"s3://{settings.s3.lake_bucket}/") for u in purged):  # nothing half-restored
        with pytest.raises(NotFound):
            store.info(settings.s3.lake_bucket, key)

    recall = Recall(context=_context(cold), mode="auto", reason="integration test: version 1", progress=False)
    assert _loader_rows(settings, uri, recall) == before_loader
    assert _spark_rows(spark, path) == before_spark
    events = [e for e in catalog.audit().to_pylist() if e["action"] == "recalled"]
    used = {f["path"]: f["copy"] for e in events for f in json.loads(e["detail"])["files"]}
    assert used[bad["path"]] == 2  # the corrupted copy was never published: site B's copy was
    assert set(used) == {r["path"] for r in catalog.rows().to_pylist()}
    assert all("(loader)" in json.loads(e["detail"])["asked_by"] for e in events)
    assert all(json.loads(e["detail"])["reason"] == "integration test: version 1" for e in events)
    assert {r["state"] for r in catalog.rows().to_pylist()} == {"VERIFIED"}
    assert catalog.audit_chain_ok()


def test_archive_restore_version_recalls_into_the_edge_cache_and_the_loader_reads_it_there(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = f"tests/recall/{uuid.uuid4().hex[:8]}/cached"
    cold = _cold(settings, tmp_path, table)
    uri = f"s3://{settings.s3.lake_bucket}/{table}"
    start = _append(uri, settings, [*OLD_DAYS, date.today().isoformat()], 0, 100)
    _append(uri, settings, OLD_DAYS, start, 50)
    before = _loader_rows(settings, uri)
    catalog = Catalog(cold.archive.catalog_uri, cold.archive.audit_uri)
    run(_context(cold), catalog, table, [f"day={d}" for d in OLD_DAYS], progress=False)
    purged = _purge(cold, catalog, table)

    args = argparse.Namespace(table=table, version=1, to="cache", reason="case 9", json=True)
    assert _restore(args, cold) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["estimate"]["files"] == len(purged) == 4
    assert sorted(r["uri"] for r in document["recalled"]) == sorted(purged)
    assert all(r["to"].startswith("cache:") for r in document["recalled"])
    assert {r["state"] for r in catalog.rows().to_pylist()} == {"PURGED"}  # the lake still lacks them
    assert _loader_rows(settings, uri, Recall(context=_context(cold), mode="never", to="cache")) == before


@pytest.mark.parametrize("to", ["lake", "cache"])
def test_a_file_found_missing_while_reading_is_recalled_once_for_concurrent_readers_and_alone(
    settings: Settings, tmp_path: Path, to: str
) -> None:
    table = f"tests/recall/{uuid.uuid4().hex[:8]}/per_file"
    cold = _cold(settings, tmp_path, table)
    options = dataclasses.replace(cold.cache.options, directory=tmp_path / "edge-cache")
    cold = dataclasses.replace(cold, cache=dataclasses.replace(cold.cache, options=options))
    uri = f"s3://{settings.s3.lake_bucket}/{table}"
    start = _append(uri, settings, [*OLD_DAYS, date.today().isoformat()], 0, 100)
    _append(uri, settings, OLD_DAYS, start, 50)
    catalog = Catalog(cold.archive.catalog_uri, cold.archive.audit_uri)
    run(_context(cold), catalog, table, [f"day={d}" for d in OLD_DAYS], progress=False)
    purged = _purge(cold, catalog, table)
    rows = {f"s3://{r['bucket']}/{r['key']}": r for r in catalog.rows().to_pylist() if r["copy"] == 1}
    wanted, others = purged[0], purged[1:]
    plain = ArrowFileSource(delta_storage_options(settings.s3))
    with pytest.raises(NotFound, match="is missing from the object store"):
        plain.open(wanted)

    spawn = multiprocessing.get_context("spawn")  # delta-rs (the audit log) refuses a forked runtime
    barrier = spawn.Barrier(3)
    readers = [
        spawn.Process(
            target=read_through_recalling_source, args=(_context(cold), wanted, to, barrier, tmp_path / f"read{n}")
        )
        for n in range(3)
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
        assert reader.exitcode == 0
    assert {(tmp_path / f"read{n}").read_text() for n in range(3)} == {rows[wanted]["sha256"]}
    events = [e for e in catalog.audit().to_pylist() if e["action"] == "recalled"]
    published = [f["path"] for e in events for f in json.loads(e["detail"])["files"]]
    assert published == [rows[wanted]["path"]]  # one recall of that file for the three readers; no other file
    assert all(json.loads(e["detail"])["reason"] == "worker" for e in events)

    states = {f"s3://{r['bucket']}/{r['key']}": r["state"] for r in catalog.rows().to_pylist()}
    store, cache = S3Store(settings.s3), CacheTarget(_context(cold).cache)
    for other in others:  # the files nobody opened stay on tape only
        assert states[other] == "PURGED"
        with pytest.raises(NotFound):
            store.info(settings.s3.lake_bucket, other.removeprefix(f"s3://{settings.s3.lake_bucket}/"))
        assert cache.local_path(settings.s3.lake_bucket, other.removeprefix(f"s3://{settings.s3.lake_bucket}/")) is None
    assert states[wanted] == ("VERIFIED" if to == "lake" else "PURGED")

    never_archived = f"{uri}/day={OLD_DAYS[0]}/never-archived.parquet"
    source = Recall(context=_context(cold), mode="auto", to=to, progress=False).wrap(plain)
    with pytest.raises(NotFound, match="is missing from the object store"):
        source.open(never_archived)  # missing for another reason (vacuumed): not a recall


def test_a_big_file_recalled_to_the_lake_goes_up_in_parts_and_appears_only_once_its_sha256_matched(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lake target's multipart path on RGW (parts of 5 MiB here): a good copy appears whole; a copy whose
    SHA-256 differs raises before the upload is completed: no object, no upload left behind."""
    monkeypatch.setattr(recall_io, "PART_BYTES", 5 * 1024 * 1024)
    data = os.urandom(12_000_000)
    folder = f"tests/recall/{uuid.uuid4().hex[:8]}"
    good = RecallFile(
        file_id="f1", table=folder, path="big.parquet", bucket=settings.s3.lake_bucket, key=f"{folder}/big.parquet",
        size=len(data), sha256=hashlib.sha256(data).hexdigest(), copy=1, cartridge="A00001", site="site-a",
        aggregate="agg", member_offset=0, start_block=0, extent_partition="b",
    )  # fmt: skip
    bad = dataclasses.replace(good, file_id="f2", key=f"{folder}/bad.parquet", sha256="0" * 64)
    store = S3Store(settings.s3)
    target = recall_io.LakeTarget(store, s3_client(settings.s3, sign_payload=False))
    chunks = [data[i : i + 1_000_003] for i in range(0, len(data), 1_000_003)]  # records cut across part ends

    def stream(item: RecallFile) -> Any:
        return recall_io.read_ahead(recall_io.verified(iter(chunks), item, lambda _step, _path: None))

    target.put(good, stream(good))
    assert store.cat_file(good.bucket, good.key) == data
    with pytest.raises(recall_io.ChecksumMismatch, match="another SHA-256"):
        target.put(bad, stream(bad))
    with pytest.raises(NotFound):
        store.info(bad.bucket, bad.key)
    uploads = s3_client(settings.s3).list_multipart_uploads(Bucket=bad.bucket, Prefix=f"{folder}/")
    assert uploads.get("Uploads", []) == []
    store.rm(good.bucket, good.key)
