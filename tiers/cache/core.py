"""The edge cache: a read-through, cross-process, bounded cache of object versions on a local directory.

Layout of ``options.directory``::

    index.sqlite          entries, policy state, pins, HEAD results, counters (see tiers.cache.index)
    objects/ab/<id>       published entries: a whole object, or one block of it (``<id>`` names the block)
    locks/ab/<id>.lock    one flock per entry (tiers.cache.locks); locks/evict.lock serialises eviction
    tmp/<id>.<pid>.tmp    fills in progress; never visible under objects/

An entry's id hashes (bucket, key, ETag, size, block), so a replaced object gets new entries and never serves old
bytes, and every fill's GET carries ``If-Match`` so it cannot mix two versions. Fills go temp → fsync →
``os.replace`` → fsync of the directory, with a CRC-32 recorded (an MD5 cost a third of the miss path's speed on
2 cores). Whole-object reads return a path pyarrow can memory-map; ranged reads fill only the ``block_bytes``
blocks they touch (a Parquet footer, a row group).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tierlake.errors import CacheFull, StorageError
from tiers.cache.index import Entry, EntryState, Index
from tiers.cache.locks import EntryLock
from tiers.cache.policy import S3FIFO
from tiers.store import CHUNK, ObjectChanged, ObjectInfo, ObjectStore, fsync_dir

logger = logging.getLogger(__name__)
WHOLE = -1  # the block number of a whole-object entry


class DiskFull(CacheFull):
    """The cache's file system ran out of space during a fill (the partial file is already gone)."""


@dataclass(frozen=True, kw_only=True)
class CacheOptions:
    """How big, where, and how careful. ``capacity`` is min(max_bytes, disk_fraction of the file system)."""

    directory: Path
    max_bytes: int
    disk_fraction: float = 0.9
    block_bytes: int = 8 * 1024 * 1024
    revalidate_s: float = 0.0
    fill_timeout_s: float = 300.0
    evict_to_fraction: float = 0.95
    verify_reads: bool = False

    def __post_init__(self) -> None:
        checks = (
            ("max_bytes", self.max_bytes, self.max_bytes >= 1, "a byte budget of at least 1, e.g. 10737418240"),
            ("disk_fraction", self.disk_fraction, 0 < self.disk_fraction <= 1, "a fraction in (0, 1], e.g. 0.9"),
            ("block_bytes", self.block_bytes, self.block_bytes >= 4096, "at least 4096, e.g. 8388608"),
            ("revalidate_s", self.revalidate_s, self.revalidate_s >= 0, "0 (HEAD on every open) or more"),
            ("fill_timeout_s", self.fill_timeout_s, self.fill_timeout_s > 0, "seconds, e.g. 300"),
            ("evict_to_fraction", self.evict_to_fraction, 0 < self.evict_to_fraction <= 1, "e.g. 0.95"),
        )
        for name, value, ok, fix in checks:
            if not ok:
                raise ValueError(f"cache option {name} = {value!r} is invalid. Fix: {fix}")


@dataclass(frozen=True, kw_only=True)
class CacheStats:
    counters: dict[str, int]
    entries: int
    used_bytes: int
    capacity_bytes: int
    pinned_objects: int = 0
    ratios: dict[str, float] = field(default_factory=dict)

    @property
    def hit_ratio(self) -> float:
        total = self.counters.get("hits", 0) + self.counters.get("misses", 0)
        return self.counters.get("hits", 0) / total if total else 0.0


def entry_id(info: ObjectInfo, block: int = WHOLE) -> str:
    """Stable id of one block (or the whole) of one object version. Length-prefixed fields: no two tuples collide."""
    digest = hashlib.sha256()
    for part in (info.bucket, info.key, info.etag, str(info.size), str(block)):
        encoded = part.encode()
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return digest.hexdigest()[:40]


def block_span(info: ObjectInfo, block: int, block_bytes: int) -> tuple[int, int]:
    """The half-open byte range an entry holds."""
    if block == WHOLE:
        return 0, info.size
    start = block * block_bytes
    return start, min(start + block_bytes, info.size)


def blocks_for(start: int, end: int, block_bytes: int) -> range:
    """The block numbers that cover ``[start, end)`` (empty for an empty range)."""
    if end <= start:
        return range(0)
    return range(start // block_bytes, (end - 1) // block_bytes + 1)


class EdgeCache:
    """The cache in front of one :class:`ObjectStore`. Safe to use from many threads and processes at once."""

    def __init__(self, store: ObjectStore, options: CacheOptions) -> None:
        self.store = store
        self.options = options
        self.root = options.directory
        for folder in ("objects", "locks", "tmp"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.index = Index(self.root / "index.sqlite")

    # -- paths ------------------------------------------------------------------------------------------

    def data_path(self, entry: str) -> Path:
        return self.root / "objects" / entry[:2] / entry

    def lock_path(self, entry: str) -> Path:
        return self.root / "locks" / entry[:2] / f"{entry}.lock"

    def capacity(self) -> int:
        disk = os.statvfs(self.root)
        return min(self.options.max_bytes, int(disk.f_blocks * disk.f_frsize * self.options.disk_fraction))

    # -- reading ----------------------------------------------------------------------------------------

    def info(self, bucket: str, key: str) -> ObjectInfo:
        """The current version at the origin (a HEAD), or the remembered one younger than ``revalidate_s``."""
        if self.options.revalidate_s > 0 and (known := self.index.head(bucket, key, self.options.revalidate_s)):
            return known
        info = self.store.info(bucket, key)
        self.index.remember_head(info)
        return info

    @contextmanager
    def open_path(self, bucket: str, key: str, *, info: ObjectInfo | None = None) -> Iterator[Path]:
        """The whole object as a local file, filled on a miss; never evicted while the ``with`` block runs."""
        path, lock = self._fresh(bucket, key, info, WHOLE)
        try:
            yield path
        finally:
            lock.release()

    def get_path(self, bucket: str, key: str, *, info: ObjectInfo | None = None) -> Path:
        """Like :meth:`open_path` without the in-use pin (an mmap taken from it stays valid after eviction)."""
        with self.open_path(bucket, key, info=info) as path:
            return path

    def cat(self, bucket: str, key: str, *, info: ObjectInfo | None = None) -> bytes:
        with self.open_path(bucket, key, info=info) as path:
            return path.read_bytes()

    def read_range(self, bucket: str, key: str, start: int, end: int, *, info: ObjectInfo | None = None) -> bytes:
        """Bytes ``[start, end)`` (clipped to the object), filling only the blocks they need."""
        info = info or self.info(bucket, key)
        end = min(end, info.size)
        if start < 0 or start > end:
            raise ValueError(f"byte range [{start}, {end}) is invalid for an object of {info.size} bytes")
        whole = self.index.get(entry_id(info, WHOLE))
        if info.size <= self.options.block_bytes or (whole is not None and whole.state is EntryState.READY):
            path, lock = self._ensure(info, WHOLE)
            try:
                return _pread(path, start, end - start)
            finally:
                lock.release()
        parts = []
        for block in blocks_for(start, end, self.options.block_bytes):
            lo, hi = block_span(info, block, self.options.block_bytes)
            path, lock = self._ensure(info, block)
            try:
                parts.append(_pread(path, max(start, lo) - lo, min(end, hi) - max(start, lo)))
            finally:
                lock.release()
        return b"".join(parts)

    # -- the single-flight fill ------------------------------------------------------------------------

    def _fresh(self, bucket: str, key: str, info: ObjectInfo | None, block: int) -> tuple[Path, EntryLock]:
        """:meth:`_ensure` for the current version; if the object is replaced mid-fill, HEAD again once."""
        given = info
        info = info or self.info(bucket, key)
        try:
            return self._ensure(info, block)
        except ObjectChanged:
            if given is not None:
                raise
            self.index.forget_head(bucket, key)
            return self._ensure(self.store.info(bucket, key), block)

    def _ensure(self, info: ObjectInfo, block: int) -> tuple[Path, EntryLock]:
        """Return the published entry and its lock held shared. At most one process fills; the rest wait."""
        entry = entry_id(info, block)
        path, lock = self.data_path(entry), EntryLock(self.lock_path(entry))
        timeout = self.options.fill_timeout_s
        lock.acquire(shared=True, timeout_s=timeout)
        if (row := self._usable(entry, path, exclusive=False)) is not None:
            self.index.hit(entry, row.nbytes)
            return path, lock
        lock.release()
        lock.acquire(shared=False, timeout_s=timeout)
        try:
            # Another process may have filled it while we waited.
            if (row := self._usable(entry, path, exclusive=True)) is not None:
                self.index.hit(entry, row.nbytes, coalesced=True)
            else:
                try:
                    self._fill(info, block, entry, path)
                except DiskFull:  # the disk filled up under us: the next reservation evicts for room, once
                    logger.warning("disk full while filling %s; evicting and trying once more", entry)
                    self._fill(info, block, entry, path)
            lock.downgrade()
        except BaseException:
            lock.release()
            raise
        return path, lock

    def _usable(self, entry: str, path: Path, *, exclusive: bool) -> Entry | None:
        """The READY row of a published, complete entry. Holding the lock exclusive, a bad entry is dropped."""
        row = self.index.get(entry)
        if row is None or row.state is not EntryState.READY:
            return None
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = -1
        bad = size != row.nbytes or (self.options.verify_reads and checksum_file(path) != row.checksum)
        if bad and exclusive:
            logger.warning("cache entry %s is corrupt (size %d, expected %d): refetching", entry, size, row.nbytes)
            self.index.delete([entry])
            self.index.add(corrupt=1)
            return None
        return None if bad else row

    def _fill(self, info: ObjectInfo, block: int, entry: str, path: Path) -> None:
        lo, hi = block_span(info, block, self.options.block_bytes)
        self._clear_stale_temps(entry)
        self._reserve(info, entry=entry, block=block, nbytes=hi - lo)
        temp = self.root / "tmp" / f"{entry}.{os.getpid()}.tmp"
        try:
            checksum = self._download(info, lo, hi, temp)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, path)
            fsync_dir(path.parent)
            self.index.publish(entry, checksum, hi - lo)
        except OSError as exc:
            temp.unlink(missing_ok=True)  # first give the space back: the index may need it to record the failure
            self.index.delete([entry])
            if exc.errno == errno.ENOSPC:
                raise DiskFull(
                    f"cache directory {self.root}: the file system filled up while caching s3://{info.bucket}/"
                    f"{info.key} ({hi - lo} bytes). Fix: lower cache.max_bytes or cache.disk_fraction, or free space"
                ) from exc
            raise StorageError(f"caching s3://{info.bucket}/{info.key} into {self.root} failed: {exc}") from exc
        except BaseException:
            temp.unlink(missing_ok=True)
            self.index.delete([entry])
            raise

    def _download(self, info: ObjectInfo, lo: int, hi: int, temp: Path) -> str:
        """One GET of ``[lo, hi)`` pinned to the ETag, streamed into ``temp`` and fsynced. Returns its checksum."""
        self.index.add(backend_gets=1)
        crc, written = 0, 0
        body = self.store.open(info.bucket, info.key, start=lo, end=hi, etag=info.etag)
        try:
            with temp.open("wb") as out:
                while chunk := body.read(CHUNK):
                    out.write(chunk)
                    crc = zlib.crc32(chunk, crc)
                    written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        finally:
            body.close()
        if written != hi - lo:
            raise StorageError(
                f"s3://{info.bucket}/{info.key}: expected {hi - lo} bytes of [{lo}, {hi}), the origin sent {written}"
            )
        return checksum_text(crc)

    def _clear_stale_temps(self, entry: str) -> None:
        """Temp files of this entry left by a filler that died (we hold the entry exclusive: nobody else fills)."""
        for stale in (self.root / "tmp").glob(f"{entry}.*"):
            stale.unlink(missing_ok=True)
            self.index.add(stale_fills_recovered=1)
            logger.info("removed %s, left by a filler that died", stale)

    # -- space ------------------------------------------------------------------------------------------

    def _reserve(self, info: ObjectInfo, *, entry: str, block: int, nbytes: int) -> None:
        """Make room (evicting) and record a FILLING row, or raise CacheFull. One evictor at a time."""
        capacity = self.capacity()
        if nbytes > capacity:
            raise CacheFull(
                f"s3://{info.bucket}/{info.key} needs {nbytes} bytes, more than the cache's capacity of {capacity} "
                f"(cache.max_bytes={self.options.max_bytes}, disk_fraction={self.options.disk_fraction}). "
                "Fix: raise cache.max_bytes, or read it by ranges"
            )
        with EntryLock(self.root / "locks" / "evict.lock") as evict_lock:
            evict_lock.acquire(shared=False, timeout_s=self.options.fill_timeout_s)
            self._drop_dead_fillings(entry)
            with self.index.transaction() as db:
                ready, filling = self.index.used_bytes(db)
            free = _free_bytes(self.root)
            over_budget = ready + filling + nbytes - capacity
            over_disk = nbytes - (free - _slack(self.root))
            if max(over_budget, over_disk) > 0:
                target = max(over_budget, over_disk) + int(capacity * (1 - self.options.evict_to_fraction))
                self.evict_bytes(target, required=max(over_budget, over_disk))
            with self.index.transaction() as db:
                self.index.reserve(db, info, entry_id=entry, block=block, nbytes=nbytes)

    def _drop_dead_fillings(self, own: str) -> None:
        """FILLING rows whose filler is gone (its entry lock is free) were left by a crash: drop them."""
        dead = []
        for row in self.index.entries(state=EntryState.FILLING):
            if row.id == own:
                dead.append(row.id)
                continue
            probe = EntryLock(self.lock_path(row.id))
            if probe.try_acquire(shared=False):
                dead.append(row.id)
                probe.release()
        if dead:
            self.index.delete(dead)
            self.index.add(stale_fills_recovered=len([d for d in dead if d != own]))

    def evict_bytes(self, target: int, *, required: int = 0) -> int:
        """Free about ``target`` bytes through the policy, skipping pinned entries and entries in use.

        Raises CacheFull when fewer than ``required`` bytes could be freed. Call with the evict lock held.
        """
        held: dict[str, EntryLock] = {}
        with self.index.transaction() as db:
            nodes, ghosts = self.index.policy_nodes(db)
            pinned = self.index.pinned_ids(db)
        policy = S3FIFO(max(sum(n.size for n in nodes), 1))
        policy.load(nodes, ghosts)

        def can_evict(entry: str) -> bool:
            if entry in pinned:
                return False
            lock = EntryLock(self.lock_path(entry))
            if not lock.try_acquire(shared=False):
                return False  # a reader is using it
            held[entry] = lock
            return True

        victims = policy.evict(target, can_evict)
        sizes = {n.key: n.size for n in nodes}
        freed = sum(sizes[v] for v in victims)
        try:
            for victim in victims:
                self.data_path(victim).unlink(missing_ok=True)
                held[victim].unlink()
            with self.index.transaction() as db:
                self.index.delete_in(db, victims, ghost=True)
                self.index.save_policy(db, policy.nodes())
                self.index._add(db, evictions=len(victims), bytes_evicted=freed)
        finally:
            for lock in held.values():
                lock.release()
        if freed < required:
            raise CacheFull(
                f"cache {self.root}: needed {required} bytes, could free only {freed}: the rest is pinned or in use "
                f"(budget {self.capacity()} bytes). Fix: unpin (`tierlake cache evict --unpin`), raise cache.max_bytes "
                "or free disk space"
            )
        if victims:
            logger.info("evicted %d entries, %d bytes", len(victims), freed)
        return freed

    # -- pins -------------------------------------------------------------------------------------------

    def pin(self, bucket: str, key: str) -> None:
        """Never evict any cached version of this object until :meth:`unpin`."""
        self.index.pin(bucket, key)

    def unpin(self, bucket: str, key: str) -> None:
        self.index.pin(bucket, key, pinned=False)

    def stats(self) -> CacheStats:
        with self.index.transaction() as db:
            ready, filling = self.index.used_bytes(db)
            entries = db.execute("SELECT COUNT(*) FROM entries WHERE state = 'READY'").fetchone()[0]
            pins = db.execute("SELECT COUNT(*) FROM pins").fetchone()[0]
        stats = CacheStats(
            counters=self.index.counters(),
            entries=int(entries),
            used_bytes=ready + filling,
            capacity_bytes=self.capacity(),
            pinned_objects=int(pins),
        )
        stats.ratios["hit_ratio"] = round(stats.hit_ratio, 4)
        return stats


def _pread(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def checksum_text(crc: int) -> str:
    return f"crc32:{crc:08x}"


def checksum_file(path: Path) -> str:
    """The checksum recorded at fill, recomputed (CRC-32: what HDFS, Kafka and GCS use against bit rot)."""
    crc = 0
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
    return checksum_text(crc)


def _free_bytes(folder: Path) -> int:
    disk = os.statvfs(folder)
    return disk.f_bavail * disk.f_frsize


def _slack(folder: Path) -> int:
    """Room kept free for the index and its WAL: 1 % of the file system, at least 256 KiB."""
    disk = os.statvfs(folder)
    return max(256 * 1024, disk.f_blocks * disk.f_frsize // 100)
