"""Fills published in groups (tiers/cache/group.py): an object is READY only after its bytes, its name and its
folder are durable; a group that fails publishes nothing and leaves neither files, rows nor locks behind; the
writer stops running ahead of the publisher at ``max_pending_bytes``."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest
from crc32c import crc32c

from tierlake.config.cache import CacheOptions
from tierlake.errors import StorageError
from tiers.cache.core import EdgeCache, entry_id
from tiers.cache.group import GroupFill
from tiers.cache.index import EntryState
from tiers.cache.locks import EntryLock
from tiers.store import CHUNK, LocalStore, ObjectInfo
from tiers.store import fsync_dir as store_fsync_dir

pytestmark = pytest.mark.unit
BUCKET = "lake"


class _Body(io.BytesIO):
    """A :class:`tiers.store.Body` over bytes."""


def _cache(tmp_path: Path) -> EdgeCache:
    (tmp_path / "origin" / BUCKET).mkdir(parents=True, exist_ok=True)
    options = CacheOptions(directory=tmp_path / "cache", max_bytes=64 * CHUNK)
    return EdgeCache(LocalStore(tmp_path / "origin"), options)


def _objects(count: int, size: int = 200_000) -> dict[ObjectInfo, bytes]:
    found = {}
    for n in range(count):
        data = os.urandom(size + n)
        found[ObjectInfo(bucket=BUCKET, key=f"t/part-{n}.parquet", size=len(data), etag=f"sha-{n}")] = data
    return found


def test_a_group_marks_objects_ready_only_after_their_bytes_and_names_are_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _cache(tmp_path)
    objects = _objects(5)
    events: list[tuple[str, str]] = []
    publish_group = cache.index.publish_group

    def recorded(published: list[tuple[str, str, int]], versions: list[ObjectInfo]) -> None:
        assert all(cache.index.get(entry) is not None for entry, _, _ in published)
        events.extend(("ready", v.key) for v in versions)
        publish_group(published, versions)

    fsync_dir = store_fsync_dir

    def dir_synced(folder: Path) -> None:
        events.append(("dir", folder.name))
        fsync_dir(folder)

    monkeypatch.setattr(cache.index, "publish_group", recorded)
    monkeypatch.setattr("tiers.cache.group.fsync_dir", dir_synced)
    seen: list[Path] = []
    with GroupFill(cache, step=lambda step, key: events.append((step, key))) as group:
        for info, data in objects.items():
            group.put(info, _Body(data), seen.append)
    assert len(seen) == len(objects)
    for info in objects:
        steps = [e[0] for e in events]
        synced, renamed, ready = (events.index((s, info.key)) for s in ("synced", "renamed", "ready"))
        assert synced < renamed < ready
        assert "dir" in steps[renamed:ready]  # its folder fsynced between its rename and READY
    for info, data in objects.items():
        row = cache.index.get(entry_id(info))
        assert row is not None
        assert row.state is EntryState.READY
        assert row.checksum == f"crc32c:{crc32c(data):08x}"
        assert cache.get_path(BUCKET, info.key).read_bytes() == data  # the version is remembered: no origin asked
    assert not list((cache.root / "tmp").iterdir())


def test_a_failed_group_publishes_nothing_and_frees_its_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _cache(tmp_path)
    objects = _objects(3)

    def broken(_published: list[tuple[str, str, int]], _versions: list[ObjectInfo]) -> None:
        raise StorageError("the cache index failed: disk I/O error")

    monkeypatch.setattr(cache.index, "publish_group", broken)
    seen: list[Path] = []
    group = GroupFill(cache)

    def fill_all() -> None:  # the error comes from the next put or from close, whichever follows the failure
        for info, data in objects.items():
            group.put(info, _Body(data), seen.append)
        group.close()

    with pytest.raises(StorageError, match="disk I/O error"):
        fill_all()
    group.close()  # after the error was raised once: stops the publisher, raises nothing more
    assert seen == []
    assert cache.index.entries() == []  # no READY row, no FILLING row left
    assert [p for p in (cache.root / "objects").rglob("*") if p.is_file()] == []
    assert list((cache.root / "tmp").iterdir()) == []
    for info in objects:  # every entry lock is free: the next fill is not blocked
        lock = EntryLock(cache.lock_path(entry_id(info)))
        assert lock.try_acquire(shared=False)
        lock.release()


@pytest.mark.parametrize("bound", ["max_pending_bytes", "half_the_cache"])
def test_the_writer_waits_for_the_publisher_beyond_max_pending_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: str
) -> None:
    """Unpublished fills cannot be evicted: beyond half a small cache, the writer waits instead of CacheFull."""
    first, second = _objects(2)
    max_bytes = 64 * CHUNK if bound == "max_pending_bytes" else first.size + second.size
    (tmp_path / "origin" / BUCKET).mkdir(parents=True, exist_ok=True)
    cache = EdgeCache(LocalStore(tmp_path / "origin"), CacheOptions(directory=tmp_path / "cache", max_bytes=max_bytes))
    pending = first.size + 1 if bound == "max_pending_bytes" else 64 * CHUNK
    release = threading.Event()
    fsync = os.fsync

    def held_fsync(fd: int) -> None:
        release.wait(timeout=30)
        fsync(fd)

    monkeypatch.setattr(os, "fsync", held_fsync)  # the publisher's fsyncs (the writer does none)
    seen: list[Path] = []
    with GroupFill(cache, max_pending_bytes=pending) as group:
        group.put(first, _Body(b"x" * first.size), seen.append)  # handed over: its publication is held
        second_put = threading.Thread(target=group.put, args=(second, _Body(b"y" * second.size), seen.append))
        second_put.start()
        second_put.join(timeout=0.5)
        assert second_put.is_alive()  # it waits for room, not writing
        assert not (cache.root / "tmp" / f"{entry_id(second)}.{os.getpid()}.tmp").exists()
        release.set()
        second_put.join()
    assert len(seen) == 2
