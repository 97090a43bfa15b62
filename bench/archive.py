"""Cold-tier benchmark, one run, same machine, same target file system.

- write: tierlake archiving one aggregate to two virtual LTFS cartridges at once, the way ``archive run`` does it
  (one read of the source files and one SHA-256 through :class:`Tee`, both copies written from it; one file per
  record, every record flushed before the new index generation is written on both partitions) vs ``dd bs=4M
  conv=fsync`` writing the same bytes as two sequential copies at once into the same folder (the raw ceiling: no
  format, no hash, one file and one fsync per copy). Verify-after-write (read back, SHA-256 per member) is timed
  separately and reported as its own ratio. A second peer adds one ``sha256sum`` of the bytes beside the two ``dd``
  copies: the same work as tierlake's write (two durable copies, one SHA-256), so the like-for-like ratio.
  Rounds are interleaved; a ratio is the median of the per-round ratios (both sides timed minutes apart at most,
  under the same load), and ``*_best_of`` puts the best round of each side against each other.
- key lookup: ``archive locate`` over a catalog of N generated rows (Delta table via delta-rs, DuckDB query).

Usage: ``python bench/archive.py [--quick]``. The last line is JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tierlake.config import load_settings
from tiers.archive import aggregate
from tiers.archive.aggregate import Member
from tiers.archive.archiver import verify_aggregate
from tiers.archive.catalog import CATALOG_SCHEMA, TS, Catalog, write_catalog
from tiers.archive.compliance import locate
from tiers.archive.tee import Tee
from tiers.tape.virtual import FileToWrite, VirtualCartridge
from tiers.tape.volume import VirtualVolume


def _sources(folder: Path, total_mb: int, file_mb: int) -> list[Member]:
    members = []
    for n in range(total_mb // file_mb):
        path = folder / f"part-{n:05d}.parquet"
        data = os.urandom(file_mb * 1024 * 1024)
        path.write_bytes(data)
        fields = {"path": path.name, "sha256": hashlib.sha256(data).hexdigest()}
        members.append(Member(source=path, size=len(data), fields=fields))
    return members


def _tierlake_write(root: Path, members: list[Member], block: int) -> tuple[float, float]:
    head = aggregate.header(members, extra={"name": "bench.agg"})
    cartridges = []
    for site in ("site-a", "site-b"):
        cartridge = VirtualCartridge(root / site, capacity_bytes=1 << 40)
        cartridge.format(barcode="A00001" if site == "site-a" else "B00001", volume_name=site, blocksize=block)
        cartridges.append(cartridge)

    # As `archive run` does it: one read and one SHA-256 of the aggregate (Tee), both copies written from it at once.
    tee = Tee(aggregate.chunks(head, members, block), len(cartridges))

    def write(copy: int) -> None:
        cartridges[copy].append([FileToWrite(name="bench.agg", chunks=tee.branch(copy), sha256=tee.sha256)])

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(write, range(len(cartridges))))
    written = time.perf_counter() - start
    data_offset, parsed = aggregate.parse_header(head)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        bad = list(
            pool.map(
                lambda c: verify_aggregate(VirtualVolume(c, "A00001"), "bench.agg", parsed, data_offset), cartridges
            )
        )
    verified = time.perf_counter() - start
    if any(bad):
        raise SystemExit(f"verify failed: {bad}")
    return written, verified


def _raw_copy(root: Path, members: list[Member], *, with_hash: bool = False) -> float:
    """Two ``dd`` copies at once; ``with_hash``: plus one ``sha256sum`` of the same bytes beside them."""
    sources = " ".join(str(m.source) for m in members)
    start = time.perf_counter()
    commands = [f"cat {sources} | dd of={root / name} bs=4M conv=fsync status=none" for name in ("copy-a", "copy-b")]
    if with_hash:
        commands.append(f"cat {sources} | sha256sum > /dev/null")
    copies = [subprocess.Popen(["bash", "-c", command]) for command in commands]
    for proc in copies:
        if proc.wait() != 0:
            raise SystemExit("dd failed")
    return time.perf_counter() - start


def _drop(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _catalog(folder: Path, rows: int) -> Catalog:
    """N generated rows (vectorised: the bench times lookups, not Python string formatting)."""
    catalog = Catalog(str(folder / "catalog"), str(folder / "audit"))
    now = datetime.now(UTC)
    batch = 250_000
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        ids = np.arange(start, start + n)
        digits = np.char.zfill(ids.astype(str), 9)
        files = np.char.add(np.char.add("day=2020-01-01/part-", digits), ".parquet")

        def const(value: Any, kind: pa.DataType, n: int = n) -> pa.Array:
            return pa.repeat(pa.scalar(value, kind), n)

        columns: dict[str, Any] = {
            "file_id": pa.array(np.char.add("f", digits)),
            "table": const("silver/ev", pa.string()),
            "path": pa.array(files),
            "bucket": const("tierlake-lake", pa.string()),
            "key": pa.array(np.char.add("silver/ev/", files)),
            "partition": const("day=2020-01-01", pa.string()),
            "partition_values": const('{"day": "2020-01-01"}', pa.string()),
            "version_min": const(1, pa.int64()),
            "version_max": const(2, pa.int64()),
            "size": const(1 << 20, pa.int64()),
            "sha256": pa.array(np.char.zfill(np.char.add("a", digits), 64)),
            "row_count": const(1000, pa.int64()),
            "key_column": const("station_id", pa.string()),
            "key_min": pa.array(np.char.add(np.char.add("st-", digits), "-000")),
            "key_max": pa.array(np.char.add(np.char.add("st-", digits), "-999")),
            "copy": pa.array((1 + ids % 2).astype(np.int32)),
            "site": pa.array(np.where(ids % 2 == 0, "site-a", "site-b")),
            "cartridge": pa.array(np.char.add("A", np.char.zfill((ids // 10000).astype(str), 5))),
            "volume_uuid": const("00000000-0000-4000-8000-000000000000", pa.string()),
            "generation": const(2, pa.int64()),
            "aggregate": pa.array(np.char.add(np.char.zfill((ids // 100).astype(str), 7), ".agg")),
            "member_offset": pa.array((ids % 100) << 20),
            "extent_partition": const("b", pa.string()),
            "start_block": pa.array(7 + (ids % 100) * 2),
            "byte_offset": const(0, pa.int64()),
            "byte_count": const(1 << 20, pa.int64()),
            "state": const("VERIFIED", pa.string()),
            "archived_at": const(now, TS),
            "retention_until": const(now + timedelta(days=30), TS),
            "legal_hold": const(False, pa.bool_()),
            "hold_reason": const("", pa.string()),
        }
        write_catalog(catalog.catalog_uri, pa.table(columns).cast(CATALOG_SCHEMA), {})
    return catalog


def _parse_args() -> argparse.Namespace:
    """The options, with ``--block-size`` resolved from conf/ when not given, so the bench writes as archiving does."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dir", type=Path, help="target folder (default: a temp folder under .cache/)")
    parser.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="LTFS volume block size in bytes (default: archive.block_size of conf/)",
    )
    args = parser.parse_args()
    if args.block_size is None:
        args.block_size = load_settings().archive.block_size  # what `archive run` writes with
    return args


@dataclass
class _Rounds:
    """Seconds per round of each side, kept in step: a ratio pairs the sides round by round."""

    tierlake_write: list[float] = field(default_factory=list)
    tierlake_verify: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    hashed: list[float] = field(default_factory=list)


def _write_rounds(work: Path, members: list[Member], block_size: int, rounds: int) -> _Rounds:
    """Raw copy, raw copy plus SHA-256, then tierlake, once per round: interleaved, so drift on a shared machine hits
    all sides alike."""
    timings = _Rounds()
    for _ in range(rounds):
        _drop(work / "raw")
        timings.raw.append(_raw_copy(work / "raw", members))
        _drop(work / "raw")
        timings.hashed.append(_raw_copy(work / "raw", members, with_hash=True))
        _drop(work / "tape")
        w, v = _tierlake_write(work / "tape", members, block_size)
        timings.tierlake_write.append(w)
        timings.tierlake_verify.append(v)
    _drop(work / "raw")
    _drop(work / "tape")
    return timings


def _lookups(catalog: Catalog, rows: int) -> list[float]:
    """Seconds of ``archive locate`` for a key near the start, the middle and the end of the catalog; each must find
    exactly one row, or the timing measures the wrong thing."""
    lookups = []
    for i in (17, rows // 2, rows - 3):
        start = time.perf_counter()
        found = locate(catalog, "silver/ev", f"st-{i:09d}-500")
        lookups.append(time.perf_counter() - start)
        if len(found) != 1:
            raise SystemExit(f"lookup of key {i} found {len(found)} rows")
    return lookups


def _figures_and_ratios(
    timings: _Rounds, lookups: list[float], *, nbytes: int, rows: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The MB/s figures (best round of each side) and the ratios (median of per-round ratios, and best of)."""
    tier_w, tier_v, raw, hashed = timings.tierlake_write, timings.tierlake_verify, timings.raw, timings.hashed
    best_w, best_v, best_raw, best_hashed = min(tier_w), min(tier_v), min(raw), min(hashed)
    # Each round times both sides back to back, so a round's ratio compares them under the same disk weather.
    paired = statistics.median(r / w for r, w in zip(raw, tier_w, strict=True))
    paired_hashed = statistics.median(h / w for h, w in zip(hashed, tier_w, strict=True))
    mb = nbytes / 1e6
    figures = {
        "tierlake_write_mb_s": round(2 * mb / best_w, 1),
        "raw_dd_copy_mb_s": round(2 * mb / best_raw, 1),
        "raw_dd_copy_plus_sha256_mb_s": round(2 * mb / best_hashed, 1),
        "tierlake_write_and_verify_mb_s": round(2 * mb / (best_w + best_v), 1),
        "key_lookup_s": round(sorted(lookups)[len(lookups) // 2], 3),
        "key_lookup_max_s": round(max(lookups), 3),
        "catalog_rows": rows,
    }
    ratios = {
        "write_vs_raw_copy": round(paired, 3),
        "write_vs_raw_copy_best_of": round(best_raw / best_w, 3),
        "write_vs_raw_copy_plus_sha256": round(paired_hashed, 3),
        "write_and_verify_vs_raw_copy": round(best_raw / (best_w + best_v), 3),
    }
    return figures, ratios


def _setup(
    args: argparse.Namespace, timings: _Rounds, *, nbytes: int, files: int, rounds: int, work: Path
) -> dict[str, Any]:
    """How the figures were made: sizes, the sides compared, every round's seconds and the machine's load."""
    return {
        "bytes_per_copy": nbytes,
        "copies": 2,
        "files": files,
        "block_size": args.block_size,
        "rounds": rounds,
        "tierlake": (
            "archive write path: one read + one SHA-256 (Tee), two cartridges in parallel, "
            "one file per record, records fdatasync'd (8 in flight) before the index generation; "
            "verify timed apart"
        ),
        "peers": "dd bs=4M conv=fsync, two copies in parallel; the same plus one sha256sum beside them",
        "like_for_like": "write_vs_raw_copy_plus_sha256 (same work: two durable copies and one SHA-256)",
        "timing": (
            "rounds interleaved (raw, raw + sha256, tierlake); write_vs_raw_copy*: median of the per-round "
            "ratios; *_best_of and the MB/s figures: best round of each side"
        ),
        "rounds_s": {
            "tierlake_write": [round(x, 3) for x in timings.tierlake_write],
            "raw_dd_copy": [round(x, 3) for x in timings.raw],
            "raw_dd_copy_plus_sha256": [round(x, 3) for x in timings.hashed],
        },
        "load_avg_1m": round(os.getloadavg()[0], 1),
        "target": str(work),
        "quick": args.quick,
    }


def main() -> int:
    args = _parse_args()
    total_mb, file_mb, rows, rounds = (192, 8, 1_000_000, 3) if args.quick else (768, 16, 2_000_000, 5)
    base = args.dir or Path(".cache")
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-archive-", dir=base))
    try:
        (work / "src").mkdir()
        members = _sources(work / "src", total_mb, file_mb)
        nbytes = sum(m.size for m in members)
        timings = _write_rounds(work, members, args.block_size, rounds)
        lookups = _lookups(_catalog(work, rows), rows)
        figures, ratios = _figures_and_ratios(timings, lookups, nbytes=nbytes, rows=rows)
        setup = _setup(args, timings, nbytes=nbytes, files=len(members), rounds=rounds, work=work)
        result = {"bench": "archive", "figures": figures, "ratios": ratios, "setup": setup}
        sys.stdout.write(json.dumps(result) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
