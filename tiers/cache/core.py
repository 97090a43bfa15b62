"""The edge cache: a read-through, cross-process, bounded cache of object versions on a local directory.

Layout of ``options.directory``::

    index.sqlite          entries, policy state, pins, HEAD results, counters (see tiers.cache.index)
    objects/ab/<id>       published entries: a whole object, or one block of it (``<id>`` names the block)
    locks/ab/<id>.lock    one flock per entry (tiers.cache.locks); locks/evict.lock serialises eviction
    tmp/<id>.<pid>.tmp    fills in progress; never visible under objects/

An entry's id hashes (bucket, key, ETag, size, block), so a replaced object gets new entries and never serves old
bytes, and every fill's GET carries ``If-Match`` so it cannot mix two versions. Fills go temp → fsync →
``os.replace`` → fsync of the directory, with a CRC-32C recorded (hardware CRC through the ``crc32c`` package,
about 10 GB/s; zlib's CRC-32 at about 1.3 GB/s when it is missing; an MD5 cost a third of the miss path's speed
on 2 cores). Whole-object reads return a path pyarrow can memory-map; ranged reads fill only the ``block_bytes``
blocks they touch (a Parquet footer, a row group).

Which version an open serves (tiers.cache.freshness): keys matching ``immutable_patterns`` (Delta data files) use
the version remembered at fill, with no HEAD; other keys are HEADed per open (``revalidate_s: 0``) or trust a
HEAD younger than ``revalidate_s``. A whole-object miss on a key the cache has never seen sends no HEAD at all:
one GET, whose response names the version (single-flight across processes on a per-object lock).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tierlake.config.cache import CacheOptions
from tierlake.errors import CacheFull, StorageError
from tiers.cache.fileio import checksum_file, download, free_bytes, pread, slack
from tiers.cache.freshness import is_immutable
from tiers.cache.index import Entry, EntryState, Index
from tiers.cache.locks import EntryLock
from tiers.cache.policy import S3FIFO
from tiers.cache.retry import Retry, with_retries
from tiers.store import Body, ObjectChanged, ObjectInfo, ObjectStore, fsync_dir

logger = logging.getLogger(__name__)
WHOLE = -1  # the block number of a whole-object entry
VERIFY_SMALL_BYTES = 1024 * 1024  # entries up to this size are checksummed on every read (0.06 ms each)


class DiskFull(CacheFull):
    """The cache's file system ran out of space during a fill (the partial file is already gone)."""


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


def fill_failure(exc: OSError, root: Path, info: ObjectInfo, nbytes: int) -> StorageError:
    """The error for a cache fill of ``info`` into ``root`` that failed with ``exc``: a full disk says so, with
    the settings that size the cache."""
    if exc.errno == errno.ENOSPC:
        return DiskFull(
            f"cache directory {root}: the file system filled up while caching s3://{info.bucket}/{info.key} "
            f"({nbytes} bytes). Fix: lower cache.max_bytes or cache.disk_fraction, or free space"
        )
    return StorageError(f"caching s3://{info.bucket}/{info.key} into {root} failed: {exc}")


def entry_id(info: ObjectInfo, block: int = WHOLE) -> str:
    """Stable id of one block (or the whole) of one object version. Length-prefixed fields: no two tuples collide."""
    digest = hashlib.sha256()
    for part in (info.bucket, info.key, info.etag, str(info.size), str(block)):
        encoded = part.encode()
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return digest.hexdigest()[:40]


def object_id(bucket: str, key: str) -> str:
    """Stable id of an object whatever its version (names the lock of a GET-first fill)."""
    digest = hashlib.sha256(b"object")
    for part in (bucket, key):
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

    retry = Retry()  # a fill's GET cut by an origin restart is sent again (If-Match) within this budget

    def __init__(self, store: ObjectStore, options: CacheOptions) -> None:
        self.store = store
        self.options = options
        self.root = options.directory
        for folder in ("objects", "locks", "tmp"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self._objects, self._locks = str(self.root / "objects"), str(self.root / "locks")
        self.index = Index(self.root / "index.sqlite")

    # -- paths ------------------------------------------------------------------------------------------

    def data_path(self, entry: str) -> Path:
        return Path(f"{self._objects}/{entry[:2]}/{entry}")  # one Path, not three joins: this runs on every hit

    def lock_path(self, entry: str) -> Path:
        return Path(f"{self._locks}/{entry[:2]}/{entry}.lock")

    def object_lock_path(self, bucket: str, key: str) -> Path:
        name = object_id(bucket, key)
        return self.root / "locks" / name[:2] / f"{name}.get.lock"

    def capacity(self) -> int:
        disk = os.statvfs(self.root)
        return min(self.options.max_bytes, int(disk.f_blocks * disk.f_frsize * self.options.disk_fraction))

    # -- reading ----------------------------------------------------------------------------------------

    def info(self, bucket: str, key: str) -> ObjectInfo:
        """The version to serve: a remembered one the freshness rule trusts, else the origin's current one (HEAD)."""
        if (known := self.known(bucket, key)) is not None:
            return known
        info = self.store.info(bucket, key)
        self.index.remember_head(info)
        return info

    def immutable(self, key: str) -> bool:
        return is_immutable(key, self.options.immutable_patterns)

    def known(self, bucket: str, key: str) -> ObjectInfo | None:
        """The remembered version, if the freshness rule lets an open use it without asking the origin."""
        found = self._known_entry(bucket, key)
        return None if found is None else found[0]

    def _known_entry(self, bucket: str, key: str) -> tuple[ObjectInfo, Entry | None] | None:
        """:meth:`known` and that version's whole-object entry, in one index lookup."""
        if self.immutable(key):
            return self.index.head_and_entry(bucket, key, float("inf"))
        if self.options.revalidate_s > 0:
            return self.index.head_and_entry(bucket, key, self.options.revalidate_s)
        return None

    @contextmanager
    def open_path(
        self, bucket: str, key: str, *, info: ObjectInfo | None = None, verify: bool = False
    ) -> Iterator[Path]:
        """The whole object as a local file, filled on a miss; never evicted while the ``with`` block runs.

        ``verify``: the caller reads every byte, so a hit is checked against its CRC-32C first (see
        :meth:`_must_verify`); a bad entry is fetched again, never served.
        """
        path, lock = self._fresh(bucket, key, info, WHOLE, verify=verify)
        try:
            yield path
        finally:
            lock.release()

    def get_path(self, bucket: str, key: str, *, info: ObjectInfo | None = None) -> Path:
        """Like :meth:`open_path` without the in-use pin (an mmap taken from it stays valid after eviction)."""
        with self.open_path(bucket, key, info=info) as path:
            return path

    def cat(self, bucket: str, key: str, *, info: ObjectInfo | None = None) -> bytes:
        with self.open_path(bucket, key, info=info, verify=True) as path:
            return path.read_bytes()

    def read_range(self, bucket: str, key: str, start: int, end: int, *, info: ObjectInfo | None = None) -> bytes:
        """Bytes ``[start, end)`` (clipped to the object), filling only the blocks they need.

        Without ``info``, a version the cache remembered that the origin no longer has (an immutable key
        overwritten) costs one refetch: the stale head and entries are dropped and the current version read.
        """
        if info is not None:
            return self._read_range(info, start, end)
        try:
            return self._read_range(self.info(bucket, key), start, end)
        except ObjectChanged:
            self.forget(bucket, key)
            return self._read_range(self.info(bucket, key), start, end)

    def _read_range(self, info: ObjectInfo, start: int, end: int) -> bytes:
        end = min(end, info.size)
        if start < 0 or start > end:
            raise ValueError(f"byte range [{start}, {end}) is invalid for an object of {info.size} bytes")
        whole = self.index.get(entry_id(info, WHOLE))
        if info.size <= self.options.block_bytes or (whole is not None and whole.state is EntryState.READY):
            path, lock = self._ensure(info, WHOLE, verify=start == 0 and end == info.size)
            try:
                return pread(path, start, end - start)
            finally:
                lock.release()
        parts = []
        for block in blocks_for(start, end, self.options.block_bytes):
            lo, hi = block_span(info, block, self.options.block_bytes)
            path, lock = self._ensure(info, block, verify=start <= lo and hi <= end)
            try:
                parts.append(pread(path, max(start, lo) - lo, min(end, hi) - max(start, lo)))
            finally:
                lock.release()
        return b"".join(parts)

    # -- the single-flight fill ------------------------------------------------------------------------

    def blocks_cached(self, info: ObjectInfo) -> bool:
        """Whether some block of this version is cached (a whole read then goes by blocks: no second copy)."""
        return self.index.has_blocks(info.bucket, info.key, info.etag, info.size)

    def forget(self, bucket: str, key: str) -> int:
        """Drop what the cache remembers of an object: its HEAD row and every entry not in use. Returns entries."""
        self.index.forget_head(bucket, key)
        dropped = 0
        for row in self.index.object_entries(bucket, key):
            lock = EntryLock(self.lock_path(row.id))
            if not lock.try_acquire(shared=False):
                continue  # a reader still uses that version's bytes; the eviction policy takes it later
            try:
                self.data_path(row.id).unlink(missing_ok=True)
                lock.unlink()
                self.index.delete([row.id])
                dropped += 1
            finally:
                lock.release()
        return dropped

    def _fresh(
        self, bucket: str, key: str, info: ObjectInfo | None, block: int, *, verify: bool = False
    ) -> tuple[Path, EntryLock]:
        """:meth:`_ensure` for the current version; if the object is replaced mid-fill, HEAD again once."""
        given, row = info, None
        if info is None and (found := self._known_entry(bucket, key)) is not None:
            info, row = found
        if info is None and block == WHOLE and self.index.head(bucket, key, float("inf")) is None:
            return self._fill_unknown(bucket, key)  # never seen: nothing to revalidate, so no HEAD
        info = info or self.info(bucket, key)
        try:
            return self._ensure(info, block, row=row if block == WHOLE else None, verify=verify)
        except ObjectChanged:
            if given is not None:
                raise
            self.forget(bucket, key)
            return self._ensure(self.info(bucket, key), block, verify=verify)

    def _fill_unknown(self, bucket: str, key: str) -> tuple[Path, EntryLock]:
        """A miss on an object of unknown version: one GET names the version and fills it; no HEAD.

        Processes that ask at once queue on the object's lock; the first GETs and publishes. The others then find
        a version checked after they asked (as fresh as a HEAD of their own) and read the published entry.
        """
        asked = time.time()
        object_lock = EntryLock(self.object_lock_path(bucket, key))
        if waited := not object_lock.try_acquire(shared=False):  # another process is filling it: wait for it
            object_lock.acquire(shared=False, timeout_s=self.options.fill_timeout_s)
        try:
            if (seen := self.index.head(bucket, key, time.time() - asked)) is not None:
                try:
                    return self._ensure(seen, WHOLE, waited=waited, verify=True)
                except ObjectChanged:
                    self.forget(bucket, key)
            self.index.add(backend_gets=1)
            info, body = self.store.open_info(bucket, key)
            try:
                entry = entry_id(info, WHOLE)
                path, lock = self.data_path(entry), EntryLock(self.lock_path(entry))
                if not lock.try_acquire(shared=False):  # a reader that knew the version is filling it: wait
                    body.close()
                    return self._ensure(info, WHOLE, waited=True, verify=True)
                try:
                    if (row := self._usable(entry, path, exclusive=True, verify=True)) is not None:
                        self.index.hit(entry, row.nbytes, coalesced=True)
                    else:
                        try:
                            self._fill(info, WHOLE, entry, path, body=body)
                        except DiskFull:  # as in _ensure: evict for room and fetch once more (pinned to the ETag)
                            logger.warning("disk full while filling %s; evicting and trying once more", entry)
                            self._fill(info, WHOLE, entry, path)
                    self.index.remember_head(info, from_get=True)
                    lock.downgrade()
                except BaseException:
                    lock.release()
                    raise
                return path, lock
            finally:
                body.close()
        finally:
            object_lock.release()

    def _ensure(
        self, info: ObjectInfo, block: int, *, row: Entry | None = None, waited: bool = False, verify: bool = False
    ) -> tuple[Path, EntryLock]:
        """Return the published entry and its lock held shared. At most one process fills; the rest wait.

        ``row``: the entry's index row if the caller already read it (checked again against the file under the lock).
        ``waited``: the caller already waited for another process's fill (counted as ``coalesced``).
        """
        entry = entry_id(info, block)
        path, lock = self.data_path(entry), EntryLock(self.lock_path(entry))
        timeout = self.options.fill_timeout_s
        if not lock.try_acquire(shared=True):  # held exclusive: another process is filling it
            waited = True
            lock.acquire(shared=True, timeout_s=timeout)
        if (row := self._usable(entry, path, exclusive=False, row=row, verify=verify)) is not None:
            self.index.hit(entry, row.nbytes, freq=row.freq, coalesced=waited)
            return path, lock
        lock.release()
        lock.acquire(shared=False, timeout_s=timeout)
        try:
            # Another process may have filled it while we waited.
            if (row := self._usable(entry, path, exclusive=True, verify=verify)) is not None:
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

    def _usable(
        self, entry: str, path: Path, *, exclusive: bool, row: Entry | None = None, verify: bool = False
    ) -> Entry | None:
        """The READY row of a published, complete entry. Holding the lock exclusive, a bad entry is dropped.

        A ``row`` read before the lock was taken is trusted only with its file present at its size: an evictor
        deletes the file (under the exclusive lock) before the row. Its CRC-32C is checked when
        :meth:`_must_verify` says so: a corrupt entry is never served, the caller fetches it again.
        """
        row = row if row is not None and row.id == entry else self.index.get(entry)
        if row is None or row.state is not EntryState.READY:
            return None
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = -1
        bad = size != row.nbytes or (
            self._must_verify(row, whole_read=verify) and checksum_file(path, row.checksum) != row.checksum
        )
        if bad and exclusive:
            logger.warning("cache entry %s is corrupt (size %d, expected %d): refetching", entry, size, row.nbytes)
            self.index.delete([entry])
            self.index.add(corrupt=1)
            return None
        return None if bad else row

    def _must_verify(self, row: Entry, *, whole_read: bool) -> bool:
        """Checksum on every read of a small entry, and of an entry read whole; other reads trust periodic verify.

        CRC-32C runs at 8-17 GB/s here: 0.06 ms for 1 MiB, 1 ms for an 8 MiB block, 8 ms for 64 MiB. A read that
        takes every byte of an entry pays less than its own pread again; a 64 KiB range of an 8 MiB block would pay
        250 times its pread, so partial reads of big entries rely on ``cache verify`` (or ``verify_reads: true``).
        """
        return self.options.verify_reads or whole_read or row.nbytes <= VERIFY_SMALL_BYTES

    def _fill(self, info: ObjectInfo, block: int, entry: str, path: Path, *, body: Body | None = None) -> None:
        """Fill one entry (holding its lock exclusive): from ``body`` if given (a GET already sent), else a GET."""
        lo, hi = block_span(info, block, self.options.block_bytes)
        self._clear_stale_temps(entry)
        self._reserve(info, entry=entry, block=block, nbytes=hi - lo)
        temp = self.root / "tmp" / f"{entry}.{os.getpid()}.tmp"
        first = [body]

        def fetch() -> str:  # the GET already sent, then new ones (If-Match: the same version) while RGW restarts
            if (sent := first.pop() if first else None) is None:
                self.index.add(backend_gets=1)
                sent = self.store.open(info.bucket, info.key, start=lo, end=hi, etag=info.etag)
            return download(sent, temp, direct_io=self.options.direct_io, expected=hi - lo)

        try:
            checksum = with_retries(f"caching s3://{info.bucket}/{info.key} bytes [{lo}, {hi})", fetch, self.retry)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, path)
            fsync_dir(path.parent)
            self.index.publish(entry, checksum, hi - lo)
        except OSError as exc:
            temp.unlink(missing_ok=True)  # first give the space back: the index may need it to record the failure
            self.index.delete([entry])
            raise fill_failure(exc, self.root, info, hi - lo) from exc
        except BaseException:
            temp.unlink(missing_ok=True)
            self.index.delete([entry])
            raise

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
            free = free_bytes(self.root)
            over_budget = ready + filling + nbytes - capacity
            over_disk = nbytes - (free - slack(self.root))
            if max(over_budget, over_disk) > 0:
                target = max(over_budget, over_disk) + int(capacity * (1 - self.options.evict_to_fraction))
                self.evict_bytes(target, required=max(over_budget, over_disk), disk=over_disk > over_budget)
            with self.index.transaction() as db:
                self.index.reserve(db, info, entry_id=entry, block=block, nbytes=nbytes)

    def _drop_dead_fillings(self, own: str) -> None:
        """FILLING rows whose filler is gone (its entry lock is free) were left by a crash: drop them. A filler may
        publish between the listing and the probe, so the delete holds the probe and is conditioned on FILLING."""
        self.index.delete_filling([own])  # our own leftover row (a fill of ours that failed): not a dead one's
        recovered = 0
        for row in self.index.entries(state=EntryState.FILLING):
            if row.id == own:
                continue
            probe = EntryLock(self.lock_path(row.id))
            if probe.try_acquire(shared=False):
                try:
                    recovered += self.index.delete_filling([row.id])
                finally:
                    probe.release()
        if recovered:
            self.index.add(stale_fills_recovered=recovered)

    def evict_bytes(self, target: int, *, required: int = 0, disk: bool = False) -> int:
        """Free about ``target`` bytes through the policy, skipping pinned entries and entries in use.

        Raises CacheFull when fewer than ``required`` bytes could be freed (``disk``: the file system, not the
        byte budget, is what is short). Call with the evict lock held.
        """
        held: dict[str, EntryLock] = {}
        self.index.flush_hits()  # this process's recent hits count in the eviction order
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
            pinned_bytes = sum(n.size for n in nodes if n.key in pinned)
            raise CacheFull(self._full_message(required, freed, pinned_bytes=pinned_bytes, disk=disk))
        if victims:
            logger.info("evicted %d entries, %d bytes", len(victims), freed)
        return freed

    def _full_message(self, required: int, freed: int, *, pinned_bytes: int, disk: bool) -> str:
        """Why no room could be made, naming what holds the space and the fix that applies."""
        head = f"cache {self.root}: needed {required} more bytes, could free only {freed}"
        if disk:
            return (
                f"{head}: its file system has {free_bytes(self.root)} bytes free and files outside the cache fill "
                f"the rest (the cache's budget is {self.capacity()} bytes). Fix: free space on that file system, "
                "or lower cache.disk_fraction / cache.max_bytes"
            )
        held = f"pinned entries hold {pinned_bytes} bytes, the rest is in use by readers"
        fix = "raise cache.max_bytes, or retry when the readers finish"
        if pinned_bytes:
            fix = f"unpin objects (`tierlake cache pin --remove s3://bucket/key`), {fix}"
        return f"{head} within its budget of {self.capacity()} bytes: {held}. Fix: {fix}"

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
