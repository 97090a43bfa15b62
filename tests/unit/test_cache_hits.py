"""Hits are buffered per process and written in batches: none is lost at exit, none counted twice after a fork."""

from __future__ import annotations

import multiprocessing
import sqlite3
from contextlib import closing
from pathlib import Path

from tierlake.config.cache import CacheOptions
from tiers.cache.core import EdgeCache
from tiers.cache.index import last_access
from tiers.store import LocalStore

BUCKET = "lake"
KEY = "t/part-0.parquet"


def _cache(tmp_path: Path) -> EdgeCache:
    (tmp_path / "origin" / BUCKET).mkdir(parents=True, exist_ok=True)
    store = LocalStore(tmp_path / "origin")
    store.pipe_file(BUCKET, KEY, b"x" * 5000)
    return EdgeCache(store, CacheOptions(directory=tmp_path / "cache", max_bytes=1 << 20))


def _stored_hits(cache: EdgeCache) -> int:
    """The hits as another process would read them (straight from the database, no flush of ours)."""
    with closing(sqlite3.connect(cache.root / "index.sqlite")) as db:
        return int(db.execute("SELECT value FROM counters WHERE name = 'hits'").fetchone()[0])


def _hit_ten_times(cache: EdgeCache) -> None:
    for _ in range(10):
        cache.cat(BUCKET, KEY)


def test_hits_are_written_in_batches_and_on_read(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    cache.cat(BUCKET, KEY)  # the miss
    cache.cat(BUCKET, KEY)  # a process's first hit is written at once
    assert _stored_hits(cache) == 1
    for _ in range(5):
        cache.cat(BUCKET, KEY)
    assert _stored_hits(cache) == 1  # buffered: no write lock taken per hit
    assert cache.stats().counters["hits"] == 6  # reading the counters writes them first
    assert _stored_hits(cache) == 6
    (row,) = cache.index.entries()
    assert row.freq == 3  # S3-FIFO's frequency, capped, written with the batch


def test_a_forked_child_writes_its_own_hits_at_exit_and_not_its_parents(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    cache.cat(BUCKET, KEY)
    cache.cat(BUCKET, KEY)
    for _ in range(4):
        cache.cat(BUCKET, KEY)  # four hits pending in the parent when it forks
    child = multiprocessing.get_context("fork").Process(target=_hit_ten_times, args=(cache,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert _stored_hits(cache) == 1 + 10  # the child's ten, written as it exited; the parent's four still pending
    assert cache.stats().counters["hits"] == 15


def test_last_access_reads_the_index_without_changing_it(tmp_path: Path) -> None:
    """What the archive policy asks of a node's cache (cold by access): the newest fill or HEAD of the keys."""
    cache = _cache(tmp_path)
    index = cache.root / "index.sqlite"
    assert last_access(tmp_path / "absent.sqlite", BUCKET, [KEY]) is None
    cache.cat(BUCKET, KEY)
    before = index.read_bytes()
    seen = last_access(index, BUCKET, [KEY, "t/never-read.parquet"])
    assert seen is not None
    assert seen > 0
    assert last_access(index, BUCKET, ["t/never-read.parquet"]) is None
    assert index.read_bytes() == before
