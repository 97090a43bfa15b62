"""`tierlake cache ...` as a user runs it, against Ceph RGW: warm a Delta snapshot (delta-rs), stats as JSON and
Prometheus, verify after corruption, pin, evict; bad input is one line with the fix."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from tests.e2e.cli import tierlake
from tierlake.config import Settings
from tiers.s3 import delta_storage_options

REPO = Path(__file__).resolve().parents[2]


def _tierlake(*args: str, cache_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TIERLAKE_PROFILE": "ci", "TIERLAKE_CACHE__DIR": str(cache_dir)}
    return tierlake(list(args), env=env, timeout_s=300)


def test_warm_stats_verify_pin_and_evict(settings: Settings, tmp_path: Path) -> None:
    table = f"tests/cache-cli/{uuid.uuid4()}/events"
    uri = f"s3://{settings.s3.lake_bucket}/{table}"
    options = delta_storage_options(settings.s3)
    for start in (0, 1000, 2000):  # three commits, one file each
        data = pa.table({"id": list(range(start, start + 1000)), "kwh": [i * 0.5 for i in range(1000)]})
        write_deltalake(uri, data, mode="append", storage_options=options)
    cache_dir = tmp_path / "cache"

    warm = _tierlake("cache", "warm", table, "--version", "1", "--json", cache_dir=cache_dir)
    assert warm.returncode == 0, warm.stderr
    report = json.loads(warm.stdout)
    assert (report["version"], report["files"], report["filled"], report["failed"]) == (1, 2, 2, [])
    again = json.loads(_tierlake("cache", "warm", table, "--json", "--pin", cache_dir=cache_dir).stdout)
    assert (again["version"], again["files"], again["filled"], again["already_cached"]) == (2, 3, 1, 2)

    stats = json.loads(_tierlake("cache", "stats", "--json", cache_dir=cache_dir).stdout)
    assert stats["entries"] == 3
    assert stats["counters"]["misses"] == 3
    assert stats["counters"]["hits"] == 2
    assert stats["pinned_objects"] == 3
    prometheus = _tierlake("cache", "stats", "--prometheus", cache_dir=cache_dir).stdout
    assert "tierlake_cache_misses_total 3.0" in prometheus

    victim = next((cache_dir / "objects").glob("*/*"))
    victim.write_bytes(b"garbage" + victim.read_bytes()[7:])
    verify = _tierlake("cache", "verify", "--json", cache_dir=cache_dir)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    verified = json.loads(verify.stdout)
    assert (len(verified["corrupt"]), verified["refetched"], verified["clean"]) == (1, 1, True)

    kept = json.loads(_tierlake("cache", "evict", "--all", "--json", cache_dir=cache_dir).stdout)
    assert (kept["entries"], kept["pinned_skipped"]) == (0, 3)
    unpinned = _tierlake("cache", "pin", "--remove", *_keys(settings, uri), cache_dir=cache_dir)
    assert unpinned.returncode == 0, unpinned.stderr
    evicted = json.loads(_tierlake("cache", "evict", "--all", "--json", cache_dir=cache_dir).stdout)
    assert evicted["entries"] == 3
    assert list((cache_dir / "objects").glob("*/*")) == []


def _keys(settings: Settings, uri: str) -> list[str]:
    from deltalake import DeltaTable  # noqa: PLC0415

    return DeltaTable(uri, storage_options=delta_storage_options(settings.s3)).file_uris()


def test_bad_input_is_one_line_with_the_fix(settings: Settings, tmp_path: Path) -> None:
    missing = _tierlake("cache", "warm", "tests/no-such-table", cache_dir=tmp_path / "c")
    assert missing.returncode == 2
    assert missing.stderr.startswith("tierlake: error: no Delta table at s3://")
    assert "Fix:" in missing.stderr
    assert "Traceback" not in missing.stderr
    nothing = _tierlake("cache", "evict", cache_dir=tmp_path / "c")
    assert nothing.returncode == 2
    assert "Fix: --all" in nothing.stderr
