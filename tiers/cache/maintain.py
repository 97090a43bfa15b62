"""Cache upkeep: ``verify`` (checksums, sizes, orphans, leftovers of dead fillers) and ``evict`` (all, a prefix,
or down to a size). Both take each entry's lock exclusive without waiting, so entries in use are left alone."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from tiers.cache.core import EdgeCache
from tiers.cache.fileio import checksum_file
from tiers.cache.index import Entry, EntryState
from tiers.cache.locks import EntryLock

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class VerifyReport:
    checked: int = 0
    ok: int = 0
    corrupt: list[str] = field(default_factory=list)  # "s3://bucket/key[#block]: why"
    refetched: int = 0
    in_use_skipped: int = 0
    orphans_removed: int = 0

    @property
    def clean(self) -> bool:
        return not self.corrupt or self.refetched == len(self.corrupt)


@dataclass(kw_only=True)
class EvictReport:
    entries: int = 0
    bytes: int = 0
    in_use_skipped: int = 0
    pinned_skipped: int = 0


def _label(row: Entry) -> str:
    block = "" if row.block < 0 else f"#block{row.block}"
    return f"s3://{row.bucket}/{row.key}{block}"


def _check(cache: EdgeCache, row: Entry) -> str | None:
    path = cache.data_path(row.id)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "file missing"
    if size != row.nbytes:
        return f"truncated: {size} bytes, expected {row.nbytes}"
    if (found := checksum_file(path, row.checksum)) != row.checksum:
        return f"checksum mismatch: {found}, recorded {row.checksum}"
    return None


def verify(cache: EdgeCache, *, refetch: bool = True) -> VerifyReport:
    """Re-hash every published entry; drop bad ones and (by default) fetch them again from the origin."""
    report = VerifyReport()
    bad: list[Entry] = []
    for row in cache.index.entries(state=EntryState.READY):
        lock = EntryLock(cache.lock_path(row.id))
        if not lock.try_acquire(shared=False):
            report.in_use_skipped += 1
            continue
        try:
            report.checked += 1
            if (why := _check(cache, row)) is None:
                report.ok += 1
                continue
            logger.warning("cache entry %s is bad: %s", _label(row), why)
            report.corrupt.append(f"{_label(row)}: {why}")
            cache.data_path(row.id).unlink(missing_ok=True)
            cache.index.delete([row.id])
            cache.index.add(corrupt=1)
            bad.append(row)
        finally:
            lock.release()
    report.orphans_removed = _remove_orphans(cache)
    if refetch:
        for row in bad:
            if row.block < 0:
                cache.get_path(row.bucket, row.key, info=row.info)
            else:
                start = row.block * cache.options.block_bytes
                cache.read_range(row.bucket, row.key, start, start + 1, info=row.info)
            report.refetched += 1
    return report


def _remove_orphans(cache: EdgeCache) -> int:
    """Files under objects/ with no READY row (a crash between publish and index), and dead fillers' temps."""
    known = {row.id for row in cache.index.entries()}
    removed = 0
    for path in (cache.root / "objects").glob("*/*"):
        if path.name not in known:
            lock = EntryLock(cache.lock_path(path.name))
            if lock.try_acquire(shared=False):
                path.unlink(missing_ok=True)
                lock.release()
                removed += 1
    for temp in (cache.root / "tmp").glob("*.tmp"):
        lock = EntryLock(cache.lock_path(temp.name.split(".")[0]))
        if lock.try_acquire(shared=False):
            temp.unlink(missing_ok=True)
            lock.release()
            removed += 1
    return removed


def evict(cache: EdgeCache, *, prefix: str | None = None, to_bytes: int | None = None) -> EvictReport:
    """Evict every entry (``prefix=None``), those of ``s3://bucket/prefix``, or through the policy down to
    ``to_bytes``. Pinned entries and entries in use stay."""
    report = EvictReport()
    with EntryLock(cache.root / "locks" / "evict.lock") as evict_lock:
        evict_lock.acquire(shared=False, timeout_s=cache.options.fill_timeout_s)
        if to_bytes is not None:
            used = cache.stats().used_bytes
            report.bytes = cache.evict_bytes(max(used - to_bytes, 0))
            return report
        with cache.index.transaction() as db:
            pinned = cache.index.pinned_ids(db)
        for row in cache.index.entries(state=EntryState.READY):
            if prefix is not None and not f"{row.bucket}/{row.key}".startswith(prefix):
                continue
            if row.id in pinned:
                report.pinned_skipped += 1
                continue
            lock = EntryLock(cache.lock_path(row.id))
            if not lock.try_acquire(shared=False):
                report.in_use_skipped += 1
                continue
            try:
                cache.data_path(row.id).unlink(missing_ok=True)
                lock.unlink()
                cache.index.delete([row.id], ghost=True)
                cache.index.add(evictions=1, bytes_evicted=row.nbytes)
                report.entries += 1
                report.bytes += row.nbytes
            finally:
                lock.release()
        cache.index.forget_heads(prefix)  # the next read asks the origin for the current version
    return report
