"""Issue 19 over the local-directory store: an overwritten immutable key costs one refetch; the dead-filler sweep
never deletes a READY row; corrupt bytes are refetched, never served; waits on another fill count as coalesced;
CacheFull names what really holds the space."""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from tierlake.config.cache import CacheOptions
from tierlake.errors import CacheFull
from tiers.cache import core
from tiers.cache.core import WHOLE, EdgeCache, entry_id
from tiers.cache.index import EntryState
from tiers.cache.locks import EntryLock
from tiers.cache.maintain import evict, verify
from tiers.cache.retry import OriginUnavailable, Retry
from tiers.store import Body, LocalStore, ObjectInfo

BUCKET = "lake"
KEY = "t/part-0.parquet"
BLOCK = 4096


class CountingStore(LocalStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gets = 0

    def open(self, bucket: str, key: str, *, start: int = 0, end: int | None = None, etag: str | None = None) -> Body:
        self.gets += 1
        return super().open(bucket, key, start=start, end=end, etag=etag)

    def open_info(self, bucket: str, key: str) -> tuple[ObjectInfo, Body]:
        self.gets += 1
        return super().open_info(bucket, key)


def _cache(tmp_path: Path, *, max_bytes: int = 1 << 24) -> tuple[EdgeCache, CountingStore]:
    (tmp_path / "origin" / BUCKET).mkdir(parents=True, exist_ok=True)
    store = CountingStore(tmp_path / "origin")
    options = CacheOptions(directory=tmp_path / "cache", max_bytes=max_bytes, block_bytes=BLOCK)
    return EdgeCache(store, options), store


def test_an_overwritten_immutable_key_costs_one_refetch_not_an_outage(tmp_path: Path) -> None:
    cache, store = _cache(tmp_path)
    store.pipe_file(BUCKET, KEY, b"a" * 5 * BLOCK)
    assert cache.read_range(BUCKET, KEY, 0, 10) == b"a" * 10
    new = store.pipe_file(BUCKET, KEY, b"b" * 6 * BLOCK)  # the immutability assumption broken at the origin
    gets = store.gets
    assert cache.read_range(BUCKET, KEY, 2 * BLOCK, 2 * BLOCK + 10) == b"b" * 10
    assert cache.cat(BUCKET, KEY) == b"b" * 6 * BLOCK
    assert store.gets - gets == 3  # the failed If-Match GET, the block again, the whole object
    assert cache.known(BUCKET, KEY) == new
    assert {row.etag for row in cache.index.entries()} == {new.etag}  # the stale version's entries are gone


def test_evict_by_prefix_forgets_the_remembered_version_too(tmp_path: Path) -> None:
    cache, store = _cache(tmp_path)
    store.pipe_file(BUCKET, KEY, b"a" * 100)
    cache.cat(BUCKET, KEY)
    assert cache.known(BUCKET, KEY) is not None
    evict(cache, prefix=f"{BUCKET}/t/")
    assert cache.known(BUCKET, KEY) is None
    assert cache.index.head(BUCKET, KEY, float("inf")) is None


def test_the_dead_filler_sweep_never_deletes_a_row_published_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, store = _cache(tmp_path)
    store.pipe_file(BUCKET, KEY, b"a" * 100)
    cache.cat(BUCKET, KEY)
    (ready,) = cache.index.entries()
    listed_before_publish = [replace(ready, state=EntryState.FILLING)]
    monkeypatch.setattr(cache.index, "entries", lambda state=None: listed_before_publish)
    cache._drop_dead_fillings("another-entry")  # the filler published and let go between list and probe
    monkeypatch.undo()
    assert [row.state for row in cache.index.entries()] == [EntryState.READY]
    assert cache.stats().counters["stale_fills_recovered"] == 0


@pytest.mark.parametrize("size", [100, 3 * BLOCK], ids=["small", "whole-object"])
def test_a_flipped_byte_is_refetched_never_served(tmp_path: Path, size: int) -> None:
    cache, store = _cache(tmp_path)
    body = os.urandom(size)
    info = store.pipe_file(BUCKET, KEY, body)
    assert cache.cat(BUCKET, KEY) == body
    path = cache.data_path(entry_id(info, WHOLE))
    flipped = bytearray(path.read_bytes())
    flipped[size // 2] ^= 0xFF
    path.write_bytes(bytes(flipped))
    assert cache.cat(BUCKET, KEY) == body
    assert cache.read_range(BUCKET, KEY, 0, size) == body
    assert cache.stats().counters["corrupt"] == 1
    assert verify(cache, refetch=False).corrupt == []


def test_a_corrupt_block_read_whole_is_refetched(tmp_path: Path) -> None:
    cache, store = _cache(tmp_path)
    body = os.urandom(3 * BLOCK + 5)
    info = store.pipe_file(BUCKET, KEY, body)
    assert cache.read_range(BUCKET, KEY, BLOCK, 2 * BLOCK) == body[BLOCK : 2 * BLOCK]
    path = cache.data_path(entry_id(info, 1))
    path.write_bytes(b"\0" * BLOCK)
    assert cache.read_range(BUCKET, KEY, BLOCK, 2 * BLOCK) == body[BLOCK : 2 * BLOCK]
    assert cache.stats().counters["corrupt"] == 1


class _SignallingLock(EntryLock):
    """Sets ``refused`` when a try fails: the test's observable event that a reader now waits on a fill."""

    refused = threading.Event()

    def try_acquire(self, *, shared: bool) -> bool:
        got = super().try_acquire(shared=shared)
        if not got:
            _SignallingLock.refused.set()
        return got


def test_a_wait_on_another_fill_counts_as_coalesced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, store = _cache(tmp_path)
    info = store.pipe_file(BUCKET, KEY, b"c" * 100)
    monkeypatch.setattr(core, "EntryLock", _SignallingLock)
    _SignallingLock.refused.clear()
    filler = EntryLock(cache.lock_path(entry_id(info, WHOLE)))
    assert filler.try_acquire(shared=False)  # "another process" is filling this entry
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(cache.cat(BUCKET, KEY, info=info)))
    reader.start()
    assert _SignallingLock.refused.wait(timeout=30)
    other = EdgeCache(store, cache.options)
    entry = entry_id(info, WHOLE)
    other._fill(info, WHOLE, entry, other.data_path(entry))  # the other process's fill, lock still held
    filler.release()
    reader.join(timeout=30)
    assert got == [b"c" * 100]
    assert cache.stats().counters["coalesced"] == 1


def test_cache_full_blames_pins_only_when_pins_hold_the_space(tmp_path: Path) -> None:
    cache, store = _cache(tmp_path, max_bytes=3 * BLOCK)
    store.pipe_file(BUCKET, "t/a.parquet", b"a" * 2 * BLOCK)
    store.pipe_file(BUCKET, "t/b.parquet", b"b" * 2 * BLOCK)
    cache.pin(BUCKET, "t/a.parquet")
    cache.cat(BUCKET, "t/a.parquet")
    with pytest.raises(CacheFull, match=r"pinned entries hold 8192 bytes.*cache pin --remove") as caught:
        cache.cat(BUCKET, "t/b.parquet")
    assert "--unpin" not in str(caught.value)


def test_cache_full_names_the_disk_when_other_files_fill_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache, store = _cache(tmp_path)
    store.pipe_file(BUCKET, KEY, b"a" * 2 * BLOCK)
    monkeypatch.setattr(core, "free_bytes", lambda _folder: 0)  # another file took the file system's space
    with pytest.raises(CacheFull, match=r"files outside the cache fill the rest.*Fix: free space") as caught:
        cache.cat(BUCKET, KEY)
    assert "pin" not in str(caught.value)


class _CutBody:
    """Half of the bytes, then the end: what a GET looks like when the origin is killed mid-answer."""

    def __init__(self, body: Body) -> None:
        self.body = body

    def read(self, size: int = -1) -> bytes:
        chunk = self.body.read(size)
        return chunk[: len(chunk) // 2]  # cut on the first read, then nothing more arrives after it

    def close(self) -> None:
        self.body.close()


class CuttingStore(CountingStore):
    def __init__(self, root: Path, cuts: int) -> None:
        super().__init__(root)
        self.cuts = cuts

    def open(self, bucket: str, key: str, *, start: int = 0, end: int | None = None, etag: str | None = None) -> Body:
        body = super().open(bucket, key, start=start, end=end, etag=etag)
        if self.cuts:
            self.cuts -= 1
            return _OnceBody(_CutBody(body))
        return body


class _OnceBody:
    def __init__(self, body: _CutBody) -> None:
        self.body, self.done = body, False

    def read(self, size: int = -1) -> bytes:
        if self.done:
            return b""
        self.done = True
        return self.body.read(size)

    def close(self) -> None:
        self.body.close()


@pytest.mark.parametrize("cuts", [2, 99], ids=["retried", "gives-up"])
def test_a_fill_cut_by_the_origin_is_retried_within_bounds(tmp_path: Path, cuts: int) -> None:
    (tmp_path / "origin" / BUCKET).mkdir(parents=True)
    store = CuttingStore(tmp_path / "origin", cuts)
    cache = EdgeCache(store, CacheOptions(directory=tmp_path / "cache", max_bytes=1 << 24, block_bytes=BLOCK))
    cache.retry = Retry(attempts=3, first_s=0.0, max_s=0.0)
    body = os.urandom(3 * BLOCK)
    info = store.pipe_file(BUCKET, KEY, body)
    if cuts < cache.retry.attempts:
        assert cache.read_range(BUCKET, KEY, 0, len(body), info=info) == body
    else:
        with pytest.raises(OriginUnavailable, match=r"failed 3 times .*origin sent .* Fix: check that the object"):
            cache.read_range(BUCKET, KEY, 0, len(body), info=info)
    assert [row.state for row in cache.index.entries(state=EntryState.FILLING)] == []
    assert list((cache.root / "tmp").iterdir()) == []
    assert verify(cache, refetch=False).corrupt == []
