"""Recall benchmark (issue 22, part 1), one run, same machine, against the running stack (RGW for the lake table).

A Delta table of incompressible Parquet files is written to RGW, archived to two virtual sites (``archive run``)
and purged, so the whole version is on tape. Then, in interleaved rounds:

- raw copy (the peer): the same cartridge files that hold the table (the site-A cartridge's data records) copied
  by ``cat | dd bs=4M conv=fsync`` into one file on the same file system: one read, one durable write, no format,
  no hash;
- tierlake recall into the edge cache (``recall_to: cache``): the plan (one catalog scan, no HEADs), one mount,
  the members in tape order, each read once by a read-ahead thread that hashes it (SHA-256) while the writer
  writes it into a temp file (CRC-32C); once the SHA-256 matched it goes to a publisher thread that fsyncs,
  renames and marks READY whole groups (one folder fsync and one index transaction per group) while the next
  member is written; one audit event before and one after; the cache starts empty each round;
- tierlake recall into the lake (``recall_to: lake``, one round): the same, published by one PUT per file (or a
  multipart upload, its parts sent while the file is read, completed once the SHA-256 matched), no temp file.

``ratios.recall_vs_raw_copy`` is the median over rounds of recall-to-cache MB/s / raw-copy MB/s (the bytes are the
members' bytes for tierlake, the records' bytes for the peer; per-round MB/s are compared). ``figures.
first_batch_from_tape_s``: a loader over the purged version with ``recall=Recall(mode="auto", to="cache")``, from
``delta_dataset`` to its first batch, against the same on a version whose files are in the lake; the recall streams
(each file readable once verified), which a first batch uses when the version's plan is known
(``first_batch_from_tape_plan_known_s``, shuffled and in storage order) beside ``whole_recall_to_cache_s``.

Usage (with the stack up): ``python bench/recall.py [--quick]``. The last line is JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import write_deltalake

from loaders import plan as loader_plan
from loaders.dataset import OrderOptions, delta_dataset
from loaders.loader import DeltaLoader
from loaders.recall import Recall
from tierlake.config import ArchiveTable, Settings, load_settings
from tiers.archive import compliance
from tiers.archive.archiver import run
from tiers.archive.catalog import Catalog, quote
from tiers.archive.context import ArchiveContext
from tiers.archive.recall import recall
from tiers.s3 import delta_storage_options
from tiers.store import S3Store
from tiers.tape.library import Library


def _settings(base: Settings, work: Path, table: str, cache: Path) -> Settings:
    """The stack's settings with a library, catalog, staging folder and edge cache of the bench's own."""
    env = {k: v for k, v in os.environ.items() if k.startswith("TIERLAKE_")} | {"TIERLAKE_CACHE__DIR": str(cache)}
    loaded = load_settings(base.profile, env=env)
    policy = ArchiveTable(
        table=table, partition_column="day", key_column="id", cold_by="age", cold_after_days=1, retention_days=0
    )
    archive = dataclasses.replace(
        loaded.archive,
        library_dir=work / "tape",
        catalog_uri=str(work / "catalog"),
        audit_uri=str(work / "audit"),
        staging_dir=work / "staging",
        tables={table: policy},
    )
    return dataclasses.replace(loaded, archive=archive)


def _context(settings: Settings) -> ArchiveContext:
    """The archive tier's part of the settings (it never takes the whole Settings)."""
    return ArchiveContext(archive=settings.archive, s3=settings.s3, cache=settings.cache.options)


def _write_table(settings: Settings, uri: str, files: int, file_mb: int) -> None:
    rows = 64
    for n in range(files):
        payload = [os.urandom(file_mb * 1024 * 1024 // rows) for _ in range(rows)]
        ids = list(range(n * rows, (n + 1) * rows))
        table = pa.table({"id": ids, "payload": payload, "day": [f"2020-01-{n % 28 + 1:02d}"] * rows})
        write_deltalake(
            uri, table, mode="append", partition_by=["day"], storage_options=delta_storage_options(settings.s3)
        )


def _purge(settings: Settings, catalog: Catalog, table: str) -> int:
    compliance.retention(catalog)
    return len(compliance.purge(_context(settings), catalog, f'"table" = {quote(table)}', execute=True)["files"])


def _raw_copy(records: list[Path], target: Path) -> float:
    start = time.perf_counter()
    listed = " ".join(str(p) for p in records)
    subprocess.run(["bash", "-c", f"cat {listed} | dd of={target} bs=4M conv=fsync status=none"], check=True)
    elapsed = time.perf_counter() - start
    target.unlink()
    return elapsed


def _recall_once(settings: Settings, uris: list[str], to: str) -> tuple[float, int, int]:
    """Seconds, bytes recalled and mounts of one recall of ``uris`` (plan included)."""
    catalog = Catalog(settings.archive.catalog_uri, settings.archive.audit_uri, s3=settings.s3)
    start = time.perf_counter()
    plan = Recall(context=_context(settings), mode="auto", to=to).plan(uris)
    report = recall(
        _context(settings), catalog, plan, to=to, asked_by="bench/recall.py", reason="benchmark", progress=False
    )
    return time.perf_counter() - start, report.bytes, report.mounts


def _first_batch(
    settings: Settings, uri: str, recall_policy: Recall | None, *, planned: bool = False, shuffle: bool = True
) -> float:
    """Seconds to the first batch: from a cold start (no plan in this process's memory: every file's footer is
    read first), or with the version's plan known (``planned``: a trainer that read this version before)."""
    if not planned:
        loader_plan._MEMO.clear()
    start = time.perf_counter()
    dataset = delta_dataset(
        uri,
        columns=["id"],
        storage_options=delta_storage_options(settings.s3),
        order=OrderOptions(shuffle=shuffle),
        recall=recall_policy,
    )
    next(iter(DeltaLoader(dataset, batch_size=16)))
    return time.perf_counter() - start


def _first_batches_from_tape(base: Settings, work: Path, table: str, uri: str) -> dict[str, float]:
    """The first batch of the purged version, recalled to a fresh edge cache each time: cold plan; plan known,
    shuffled; plan known, storage order. The recall streams: a file is readable once verified."""
    found = {}
    for name, planned, shuffle in (("cold", False, True), ("planned", True, True), ("planned_in_order", True, False)):
        fresh = _settings(base, work, table, work / f"cache-first-{name}")
        policy = Recall(context=_context(fresh), mode="auto", to="cache", progress=False)
        found[name] = _first_batch(fresh, uri, policy, planned=planned, shuffle=shuffle)
        _wait_recalls()
    return found


def _wait_recalls() -> None:
    """Let the background recall of a first-batch read finish before the next measurement (same files, locks)."""
    for thread in threading.enumerate():
        if thread.name == "recall":
            thread.join()


def _cartridge_records(settings: Settings, catalog: Catalog) -> list[Path]:
    """The data records of the site-A cartridge(s) that hold the table: the bytes a raw copy of the tape reads."""
    rows = catalog.rows().to_pylist()
    barcodes = sorted({r["cartridge"] for r in rows if r["copy"] == 1})
    library = Library(settings.archive)
    records = []
    for barcode in barcodes:
        folder = library.cartridge_dir(barcode)
        blocks = sorted(int(p.name.split("_")[1]) for p in folder.glob("1_*_R"))
        records += [folder / f"1_{b}_R" for b in blocks if b >= 7]  # after the label and the first index
    return records


def _measure(base: Settings, work: Path, rounds: int, files: int, file_mb: int) -> dict[str, Any]:
    table = f"bench/recall/{uuid.uuid4().hex[:8]}"
    settings = _settings(base, work, table, work / "cache-0")
    uri = f"s3://{settings.s3.lake_bucket}/{table}"
    _write_table(settings, uri, files, file_mb)
    first_from_lake = _first_batch(settings, uri, None)
    catalog = Catalog(settings.archive.catalog_uri, settings.archive.audit_uri, s3=settings.s3)
    run(
        _context(settings),
        catalog,
        table,
        [f"day=2020-01-{n % 28 + 1:02d}" for n in range(min(files, 28))],
        progress=False,
    )
    uris = [f"s3://{r['bucket']}/{r['key']}" for r in catalog.rows().to_pylist() if r["copy"] == 1]
    _purge(settings, catalog, table)
    records = _cartridge_records(settings, catalog)
    record_bytes = sum(p.stat().st_size for p in records)
    raw_s, cache_s, recalled = [], [], 0
    for n in range(rounds):  # interleaved, so drift on a shared machine hits both alike
        raw_s.append(_raw_copy(records, work / "raw-copy"))
        cached = _settings(base, work, table, work / f"cache-{n + 1}")
        seconds, recalled, mounts = _recall_once(cached, uris, "cache")
        cache_s.append(seconds)
        shutil.rmtree(work / f"cache-{n + 1}", ignore_errors=True)
    lake_s, lake_bytes, _ = _recall_once(settings, uris, "lake")
    _purge(settings, catalog, table)
    first_from_tape = _first_batches_from_tape(base, work, table, uri)
    store = S3Store(settings.s3)
    for info in store.ls(settings.s3.lake_bucket, table + "/"):  # the bench's table goes; tape and catalog too
        store.rm(settings.s3.lake_bucket, info.key)
    return {
        "raw_s": raw_s,
        "cache_s": cache_s,
        "lake_s": lake_s,
        "record_bytes": record_bytes,
        "recalled_bytes": recalled,
        "lake_bytes": lake_bytes,
        "mounts": mounts,
        "files": len(uris),
        "first_from_tape": first_from_tape,
        "first_from_lake": first_from_lake,
        "table": table,
    }


def _report(m: dict[str, Any], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    raw_rates = [m["record_bytes"] / s / 1e6 for s in m["raw_s"]]
    cache_rates = [m["recalled_bytes"] / s / 1e6 for s in m["cache_s"]]
    paired = statistics.median(c / r for c, r in zip(cache_rates, raw_rates, strict=True))
    lake_rate = m["lake_bytes"] / m["lake_s"] / 1e6
    return {
        "bench": "recall",
        "figures": {
            "recall_to_cache_mb_s": round(max(cache_rates), 1),
            "recall_to_lake_mb_s": round(lake_rate, 1),
            "raw_copy_mb_s": round(max(raw_rates), 1),
            "first_batch_from_tape_s": round(m["first_from_tape"]["cold"], 3),
            "first_batch_from_tape_plan_known_s": round(m["first_from_tape"]["planned"], 3),
            "first_batch_from_tape_plan_known_in_order_s": round(m["first_from_tape"]["planned_in_order"], 3),
            "whole_recall_to_cache_s": round(statistics.median(m["cache_s"]), 3),
            "first_batch_from_lake_s": round(m["first_from_lake"], 3),
            "mounts_per_recall": m["mounts"],
        },
        "ratios": {
            "recall_vs_raw_copy": round(paired, 3),
            "recall_to_lake_vs_raw_copy": round(lake_rate / statistics.median(raw_rates), 3),
            "first_batch_tape_vs_lake": round(m["first_from_tape"]["cold"] / m["first_from_lake"], 2),
            "first_batch_plan_known_vs_whole_recall": round(
                m["first_from_tape"]["planned"] / statistics.median(m["cache_s"]), 2
            ),
        },
        "setup": {
            "files": m["files"],
            "bytes_recalled": m["recalled_bytes"],
            "bytes_raw_copy": m["record_bytes"],
            "rounds": len(m["raw_s"]),
            "rounds_s": {
                "raw_copy": [round(x, 3) for x in m["raw_s"]],
                "recall_to_cache": [round(x, 3) for x in m["cache_s"]],
                "recall_to_lake": round(m["lake_s"], 3),
            },
            "tierlake": "plan from the catalog (no HEADs), one mount, members in tape order, each read once by a "
            "read-ahead thread that SHA-256s it while the writer writes -> edge-cache fills published in groups by "
            "a publisher thread (fsync, rename, one folder fsync and one index transaction per group; to cache) or "
            "a PUT / multipart upload completed after the SHA-256 matched (to lake); one audit event before, one after",
            "peer": "cat <the cartridge's data records> | dd bs=4M conv=fsync: one durable copy, no hash",
            "first_batch": "delta_dataset(recall=auto, to=cache) to the first batch of 16 rows; the recall streams in "
            "the background, a file readable once verified. Cold: the plan reads every file's footer first, so it "
            "waits for the whole recall; plan known: a trainer that read the version before (shuffled, window 4; "
            "and storage order); against the same read with every file in the lake",
            "load_avg_1m": round(os.getloadavg()[0], 1),
            "quick": args.quick,
            "target": str(work),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dir", type=Path, help="work folder (default: a temp folder under .cache/)")
    args = parser.parse_args()
    rounds, files, file_mb = (3, 12, 8) if args.quick else (5, 24, 16)
    base = load_settings()
    folder = args.dir or Path(".cache")
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-recall-", dir=folder))
    try:
        measured = _measure(base, work, rounds, files, file_mb)
        sys.stdout.write(json.dumps(_report(measured, args, work)) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
