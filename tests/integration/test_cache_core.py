"""The edge cache against Ceph RGW: range fills, ETag keys, verify, single-flight across processes, kill -9
mid-fill, eviction with pins and readers, and a full file system (a tmpfs of 8 MiB mounted for the test)."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tierlake.config import Settings
from tierlake.config.cache import CacheOptions
from tierlake.errors import CacheFull
from tiers.cache.core import EdgeCache
from tiers.cache.maintain import evict, verify
from tiers.store import ObjectInfo, S3Store

from .cache_workers import CountingStore, read_object

BUCKET = "tierlake-lake"
MIB = 1024 * 1024


@pytest.fixture
def prefix() -> str:
    return f"tests/cache/{uuid.uuid4()}/"


def _requests(log: Path, verb: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith(verb + " ")] if log.exists() else []


def _gets(log: Path) -> list[str]:
    return _requests(log, "GET")


def _heads(log: Path) -> list[str]:
    return _requests(log, "HEAD")


def _cache(settings: Settings, folder: Path, log: Path, **options: int | float) -> EdgeCache:
    opts = CacheOptions(directory=folder, max_bytes=int(options.pop("max_bytes", 64 * MIB)), **options)  # type: ignore[arg-type]
    return EdgeCache(CountingStore(settings.s3, log=log), opts)


def test_hit_after_miss_and_a_path_pyarrow_can_map(settings: Settings, tmp_path: Path, prefix: str) -> None:
    import pyarrow as pa  # noqa: PLC0415

    body = os.urandom(3 * MIB + 17)
    info = S3Store(settings.s3).pipe_file(BUCKET, prefix + "obj.bin", body)
    cache = _cache(settings, tmp_path / "cache", tmp_path / "gets.log")
    with cache.open_path(BUCKET, info.key) as path, pa.memory_map(str(path)) as mapped:
        assert mapped.read() == body
    assert cache.cat(BUCKET, info.key) == body
    assert len(_gets(tmp_path / "gets.log")) == 1
    counters = cache.stats().counters
    assert (counters["misses"], counters["hits"]) == (1, 1)


def test_range_reads_fill_only_the_blocks_they_touch(settings: Settings, tmp_path: Path, prefix: str) -> None:
    body = os.urandom(10 * MIB)
    S3Store(settings.s3).pipe_file(BUCKET, prefix + "big.parquet", body)
    cache = _cache(settings, tmp_path / "cache", tmp_path / "gets.log", block_bytes=MIB)
    footer = cache.read_range(BUCKET, prefix + "big.parquet", len(body) - 8000, len(body))
    assert footer == body[-8000:]
    assert len(_gets(tmp_path / "gets.log")) == 1  # the last block only
    middle = cache.read_range(BUCKET, prefix + "big.parquet", 3 * MIB - 10, 4 * MIB + 10)
    assert middle == body[3 * MIB - 10 : 4 * MIB + 10]
    assert len(_gets(tmp_path / "gets.log")) == 4  # blocks 2, 3, 4
    assert cache.read_range(BUCKET, prefix + "big.parquet", 3 * MIB, 3 * MIB + 5) == body[3 * MIB : 3 * MIB + 5]
    assert len(_gets(tmp_path / "gets.log")) == 4
    assert cache.stats().used_bytes == 4 * MIB


def test_a_replaced_object_is_never_served_stale(settings: Settings, tmp_path: Path, prefix: str) -> None:
    store = S3Store(settings.s3)
    store.pipe_file(BUCKET, prefix + "v.bin", b"old bytes " * 1000)
    cache = _cache(settings, tmp_path / "cache", tmp_path / "gets.log")
    assert cache.cat(BUCKET, prefix + "v.bin") == b"old bytes " * 1000
    store.pipe_file(BUCKET, prefix + "v.bin", b"new bytes!" * 1000)
    assert cache.cat(BUCKET, prefix + "v.bin") == b"new bytes!" * 1000
    assert cache.read_range(BUCKET, prefix + "v.bin", 0, 10) == b"new bytes!"
    assert len(_gets(tmp_path / "gets.log")) == 2


def test_delta_data_files_open_without_a_head(settings: Settings, tmp_path: Path, prefix: str) -> None:
    store, key = S3Store(settings.s3), prefix + "table/date=2026-01-01/part-00000-1f2e.c000.snappy.parquet"
    store.pipe_file(BUCKET, key, b"row groups v1" * 1000)
    log = tmp_path / "gets.log"
    cache = _cache(settings, tmp_path / "cache", log)
    for _ in range(4):
        assert cache.cat(BUCKET, key) == b"row groups v1" * 1000
    assert cache.read_range(BUCKET, key, 0, 10) == b"row groups"
    assert (len(_gets(log)), _heads(log)) == (1, [])  # one GET, and no HEAD on any open or range read
    assert cache.stats().counters["backend_heads"] == 0
    # The documented contract: a key matching immutable_patterns is never rewritten in place. If it is anyway,
    # the cache keeps the version it holds until that entry is evicted; evict --prefix forgets the remembered
    # version too, so the next read is a key never seen: one GET names v2, no HEAD.
    store.pipe_file(BUCKET, key, b"row groups v2" * 1000)
    assert cache.cat(BUCKET, key) == b"row groups v1" * 1000
    assert evict(cache, prefix=f"{BUCKET}/{prefix}table/").entries == 1
    assert cache.cat(BUCKET, key) == b"row groups v2" * 1000
    assert (len(_gets(log)), _heads(log)) == (2, [])


def test_delta_log_keys_are_revalidated_on_every_open(settings: Settings, tmp_path: Path, prefix: str) -> None:
    store, log = S3Store(settings.s3), tmp_path / "gets.log"
    cache = _cache(settings, tmp_path / "cache", log)
    pointer, checkpoint = prefix + "t/_delta_log/_last_checkpoint", prefix + "t/_delta_log/00010.checkpoint.parquet"
    store.pipe_file(BUCKET, pointer, b'{"version":10}')
    store.pipe_file(BUCKET, checkpoint, b"checkpoint 10")
    assert (cache.cat(BUCKET, pointer), cache.cat(BUCKET, checkpoint)) == (b'{"version":10}', b"checkpoint 10")
    assert (len(_gets(log)), len(_heads(log))) == (2, 0)  # never seen: one GET each, no HEAD
    store.pipe_file(BUCKET, pointer, b'{"version":20}')  # rewritten in place, as Delta does
    assert cache.cat(BUCKET, pointer) == b'{"version":20}'
    assert cache.cat(BUCKET, checkpoint) == b"checkpoint 10"
    assert (len(_gets(log)), len(_heads(log))) == (3, 2)  # each open asked the origin; only the new version was got


def test_with_no_immutable_patterns_a_rewritten_parquet_file_is_never_stale(
    settings: Settings, tmp_path: Path, prefix: str
) -> None:
    store, key, log = S3Store(settings.s3), prefix + "part-0.parquet", tmp_path / "gets.log"
    opts = CacheOptions(directory=tmp_path / "cache", max_bytes=64 * MIB, immutable_patterns=())
    cache = EdgeCache(CountingStore(settings.s3, log=log), opts)
    store.pipe_file(BUCKET, key, b"one" * 100)
    assert cache.cat(BUCKET, key) == b"one" * 100
    store.pipe_file(BUCKET, key, b"two" * 100)
    assert cache.cat(BUCKET, key) == b"two" * 100
    assert (len(_gets(log)), len(_heads(log))) == (2, 1)


def test_a_fill_pinned_to_an_old_etag_refuses_new_bytes(settings: Settings, tmp_path: Path, prefix: str) -> None:
    store = S3Store(settings.s3)
    old = store.pipe_file(BUCKET, prefix + "race.bin", b"a" * 5000)
    store.pipe_file(BUCKET, prefix + "race.bin", b"b" * 5000)
    cache = _cache(settings, tmp_path / "cache", tmp_path / "gets.log")
    # The caller's info is the old version: the GET carries If-Match, RGW answers 412, nothing is cached.
    stale = ObjectInfo(bucket=BUCKET, key=old.key, size=5000, etag=old.etag)
    with pytest.raises(Exception, match="replaced"):
        cache.cat(BUCKET, old.key, info=stale)
    assert cache.stats().entries == 0
    assert cache.cat(BUCKET, old.key) == b"b" * 5000


def test_flipped_and_truncated_bytes_are_detected_and_refetched(
    settings: Settings, tmp_path: Path, prefix: str
) -> None:
    body = os.urandom(MIB)
    S3Store(settings.s3).pipe_file(BUCKET, prefix + "f.bin", body)
    S3Store(settings.s3).pipe_file(BUCKET, prefix + "t.bin", body[::-1])
    log = tmp_path / "gets.log"
    cache = _cache(settings, tmp_path / "cache", log)
    flipped, truncated = cache.get_path(BUCKET, prefix + "f.bin"), cache.get_path(BUCKET, prefix + "t.bin")
    with flipped.open("r+b") as handle:
        handle.seek(4242)
        byte = handle.read(1)
        handle.seek(4242)
        handle.write(bytes([byte[0] ^ 0x5A]))
    report = verify(cache)
    assert len(report.corrupt) == 1
    assert "checksum mismatch" in report.corrupt[0]
    assert report.refetched == 1
    assert cache.cat(BUCKET, prefix + "f.bin") == body
    os.truncate(truncated, 1000)  # a truncated entry is caught on the next read, without verify
    assert cache.cat(BUCKET, prefix + "t.bin") == body[::-1]
    assert len(_gets(log)) == 4
    assert cache.stats().counters["corrupt"] == 2


@pytest.mark.parametrize("known_version", [True, False], ids=["version-given", "version-unknown"])
def test_eight_processes_reading_one_cold_object_cause_one_get(
    settings: Settings, tmp_path: Path, prefix: str, known_version: bool
) -> None:
    body = os.urandom(24 * MIB)
    info = S3Store(settings.s3).pipe_file(BUCKET, prefix + "cold.bin", body)
    options = CacheOptions(directory=tmp_path / "cache", max_bytes=256 * MIB)
    log = tmp_path / "gets.log"
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(8), ctx.Queue()
    args = (settings.s3, options, info, log, barrier, results, 0.0, None, known_version)
    procs = [ctx.Process(target=read_object, args=args) for _ in range(8)]
    for proc in procs:
        proc.start()
    digests = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    assert digests == [hashlib.sha256(body).hexdigest()] * 8
    assert len(_gets(log)) == 1, _gets(log)
    assert _heads(log) == []  # given the version, or a key never seen: the GET's response names it
    counters = EdgeCache(S3Store(settings.s3), options).stats().counters
    assert counters["misses"] == 1
    assert counters["hits"] == 7


@pytest.mark.parametrize("known_version", [True, False], ids=["version-given", "version-unknown"])
def test_a_filler_killed_mid_fill_does_not_wedge_the_others(
    settings: Settings, tmp_path: Path, prefix: str, known_version: bool
) -> None:
    body = os.urandom(4 * MIB)
    info = S3Store(settings.s3).pipe_file(BUCKET, prefix + "killed.bin", body)
    options = CacheOptions(directory=tmp_path / "cache", max_bytes=64 * MIB, fill_timeout_s=60)
    log, started = tmp_path / "gets.log", tmp_path / "started"
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    args = (settings.s3, options, info, log, None, results, 0.05, started, known_version)
    filler = ctx.Process(target=read_object, args=args)
    filler.start()
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline, "the slow filler never started"
        time.sleep(0.05)
    waiter = ctx.Process(target=read_object, args=(*args[:6], 0.0, None, known_version))
    waiter.start()
    time.sleep(0.5)  # the waiter is now blocked on the filler's lock
    assert filler.pid is not None
    os.kill(filler.pid, signal.SIGKILL)
    filler.join(timeout=10)
    assert results.get(timeout=60) == hashlib.sha256(body).hexdigest()
    waiter.join(timeout=30)
    assert waiter.exitcode == 0
    assert len(_gets(log)) == 2  # the dead filler's GET and the waiter's
    cache = EdgeCache(S3Store(settings.s3), options)
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []
    assert cache.stats().counters["stale_fills_recovered"] >= 1
    assert verify(cache, refetch=False).corrupt == []


def test_eviction_under_pressure_keeps_pinned_and_in_use_entries(
    settings: Settings, tmp_path: Path, prefix: str
) -> None:
    store = S3Store(settings.s3)
    for i in range(8):
        store.pipe_file(BUCKET, f"{prefix}e{i}.bin", bytes([i]) * MIB)
    cache = _cache(settings, tmp_path / "cache", tmp_path / "gets.log", max_bytes=4 * MIB, evict_to_fraction=1.0)
    cache.pin(BUCKET, f"{prefix}e0.bin")
    cache.cat(BUCKET, f"{prefix}e0.bin")
    with cache.open_path(BUCKET, f"{prefix}e1.bin") as in_use:
        for i in range(2, 8):
            assert cache.cat(BUCKET, f"{prefix}e{i}.bin") == bytes([i]) * MIB
            assert cache.stats().used_bytes <= 4 * MIB
        assert in_use.read_bytes() == bytes([1]) * MIB
    stats = cache.stats()
    assert stats.counters["evictions"] >= 4
    gets_before = len(_gets(tmp_path / "gets.log"))
    assert cache.cat(BUCKET, f"{prefix}e0.bin") == bytes([0]) * MIB  # pinned: still a hit
    assert len(_gets(tmp_path / "gets.log")) == gets_before
    cache.pin(BUCKET, f"{prefix}e2.bin")
    cache.pin(BUCKET, f"{prefix}e3.bin")
    for i in (2, 3):
        cache.cat(BUCKET, f"{prefix}e{i}.bin")
    with pytest.raises(CacheFull, match=r"pinned entries hold \d+ bytes.*cache pin --remove"):
        _fill_while_everything_is_pinned(cache, prefix)
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []
    report = evict(cache)
    assert report.entries == 0
    assert report.pinned_skipped == cache.stats().entries >= 3


def _fill_while_everything_is_pinned(cache: EdgeCache, prefix: str) -> None:
    for i in range(8):
        cache.pin(BUCKET, f"{prefix}e{i}.bin")
    for i in range(8):
        cache.cat(BUCKET, f"{prefix}e{i}.bin")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB tmpfs (root only): the cache's file system really fills up."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=False)
    if done.returncode != 0:
        pytest.fail("mounting a tmpfs needs root; run the cache tests as root (CI does)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_evicts_or_fails_cleanly_never_a_partial_file(
    settings: Settings, small_fs: Path, tmp_path: Path, prefix: str
) -> None:
    store = S3Store(settings.s3)
    for i in range(6):
        store.pipe_file(BUCKET, f"{prefix}d{i}.bin", bytes([i + 1]) * (2 * MIB))
    # The budget (1 GiB) is far above the disk (8 MiB): only the file system's free space limits the cache.
    cache = _cache(settings, small_fs / "cache", tmp_path / "gets.log", max_bytes=1024 * MIB, disk_fraction=1.0)
    for i in range(6):
        assert cache.cat(BUCKET, f"{prefix}d{i}.bin") == bytes([i + 1]) * (2 * MIB)
    assert cache.stats().counters["evictions"] >= 2
    for i in range(6):
        cache.pin(BUCKET, f"{prefix}d{i}.bin")
    ballast = small_fs / "ballast"
    free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
    ballast.write_bytes(b"\0" * max(free - 256 * 1024, 0))
    evicted_or_resident = {i for i in range(6) if _resident(cache, f"{prefix}d{i}.bin")}
    missing = next(i for i in range(6) if i not in evicted_or_resident)
    with pytest.raises(CacheFull, match=r"pinned or in use|file system"):
        cache.cat(BUCKET, f"{prefix}d{missing}.bin")
    assert list((small_fs / "cache" / "tmp").iterdir()) == []
    for path in (small_fs / "cache" / "objects").glob("*/*"):
        assert path.stat().st_size == 2 * MIB, f"partial file {path}"
    assert verify(cache, refetch=False).corrupt == []


def test_a_disk_that_fills_during_a_fill_leads_to_eviction_not_a_partial_file(
    settings: Settings, small_fs: Path, tmp_path: Path, prefix: str
) -> None:
    store = S3Store(settings.s3)
    for i in range(3):
        store.pipe_file(BUCKET, f"{prefix}small{i}.bin", bytes([i]) * MIB)
    big = os.urandom(2 * MIB)
    store.pipe_file(BUCKET, f"{prefix}big.bin", big)
    started, log = tmp_path / "started", tmp_path / "gets.log"
    slow = CountingStore(settings.s3, log=log, slow_s=0.02, started=started)
    cache = EdgeCache(slow, CacheOptions(directory=small_fs / "cache", max_bytes=1024 * MIB, disk_fraction=1.0))
    for i in range(3):
        cache.cat(BUCKET, f"{prefix}small{i}.bin")
    started.unlink()
    results: list[bytes | BaseException] = []

    def fill() -> None:
        try:
            results.append(cache.cat(BUCKET, f"{prefix}big.bin"))
        except CacheFull as exc:
            results.append(exc)

    filler = threading.Thread(target=fill)
    filler.start()
    deadline = time.monotonic() + 30
    while not started.exists():
        assert time.monotonic() < deadline, "the fill never started"
        time.sleep(0.01)
    disk = os.statvfs(small_fs)  # fill the file system behind the cache's back, mid-fill
    (small_fs / "ballast").write_bytes(b"\0" * (disk.f_bavail * disk.f_frsize - 256 * 1024))
    filler.join(timeout=60)
    assert results == [big]
    assert len(_gets(log)) == 5  # three small objects, then the big one twice: the first fill hit ENOSPC
    assert cache.stats().counters["evictions"] >= 2
    assert list((small_fs / "cache" / "tmp").iterdir()) == []
    assert verify(cache, refetch=False).corrupt == []


def _resident(cache: EdgeCache, key: str) -> bool:
    return any(e.key == key for e in cache.index.entries())
