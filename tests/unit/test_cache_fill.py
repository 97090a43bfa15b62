"""Fills over the local-directory store: O_DIRECT and buffered writes give the same bytes and checksum at every
size around the alignment and chunk edges; a key never seen is filled by one GET and no HEAD."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest
from crc32c import crc32c

from tierlake.config.cache import CacheOptions
from tierlake.errors import StorageError
from tiers.cache.core import EdgeCache
from tiers.cache.fileio import checksum_file
from tiers.cache.maintain import verify
from tiers.store import CHUNK, Body, LocalStore, ObjectInfo

BUCKET = "lake"


class CountingLocalStore(LocalStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: list[str] = []

    def info(self, bucket: str, key: str) -> ObjectInfo:
        self.calls.append("HEAD")
        return super().info(bucket, key)

    def open(self, bucket: str, key: str, *, start: int = 0, end: int | None = None, etag: str | None = None) -> Body:
        self.calls.append("GET")
        return super().open(bucket, key, start=start, end=end, etag=etag)

    def open_info(self, bucket: str, key: str) -> tuple[ObjectInfo, Body]:
        self.calls.append("GET")
        return super().open_info(bucket, key)


def _cache(tmp_path: Path, **options: bool | tuple[str, ...]) -> tuple[EdgeCache, CountingLocalStore]:
    (tmp_path / "origin" / BUCKET).mkdir(parents=True, exist_ok=True)
    store = CountingLocalStore(tmp_path / "origin")
    opts = CacheOptions(directory=tmp_path / "cache", max_bytes=64 * CHUNK, **options)  # type: ignore[arg-type]
    return EdgeCache(store, opts), store


@pytest.mark.parametrize("direct_io", [True, False], ids=["o_direct", "buffered"])
@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])
def test_a_fill_keeps_every_byte_and_records_its_crc32c(tmp_path: Path, size: int, direct_io: bool) -> None:
    cache, store = _cache(tmp_path, direct_io=direct_io)
    body = os.urandom(size)
    store.pipe_file(BUCKET, "t/part-0.parquet", body)
    path = cache.get_path(BUCKET, "t/part-0.parquet")
    assert path.read_bytes() == body
    (row,) = cache.index.entries()
    assert row.checksum == f"crc32c:{crc32c(body):08x}" == checksum_file(path, row.checksum)
    assert verify(cache, refetch=False).corrupt == []


def test_a_key_never_seen_costs_one_get_and_no_head(tmp_path: Path) -> None:
    cache, store = _cache(tmp_path)
    store.pipe_file(BUCKET, "t/_delta_log/_last_checkpoint", b'{"version": 3}')
    store.calls.clear()  # pipe_file's own info()
    assert cache.cat(BUCKET, "t/_delta_log/_last_checkpoint") == b'{"version": 3}'
    assert store.calls == ["GET"]
    assert cache.cat(BUCKET, "t/_delta_log/_last_checkpoint") == b'{"version": 3}'
    assert store.calls == ["GET", "HEAD"]  # a mutable key seen before: revalidated, and still a hit
    assert cache.stats().counters["backend_heads"] == 1


def test_entries_checksummed_with_crc32_still_verify(tmp_path: Path) -> None:
    cache, store = _cache(tmp_path)
    store.pipe_file(BUCKET, "old.bin", b"filled before crc32c")
    path = cache.get_path(BUCKET, "old.bin")
    assert checksum_file(path, "crc32:00000000") == f"crc32:{zlib.crc32(b'filled before crc32c'):08x}"
    with pytest.raises(StorageError, match=r"'md5', which this install cannot compute.*Fix: pip install crc32c"):
        checksum_file(path, "md5:abc")
