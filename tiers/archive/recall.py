"""Recalls: the purged files a reader needs, read back from tape and put where the reader finds them.

A table version whose files were archived and purged is still readable: :func:`plan_for_objects` asks the catalog
which of the version's files are on tape only, :func:`plan_recall` turns them into a **recall plan** (pure: the files
grouped by cartridge, in their order on tape, one mount per cartridge, the copy of either site that needs the fewest
mounts, and an estimate of bytes, cartridges, mounts and time at the drives' speed), and :func:`recall` carries it
out. Each file streams from tape, hashed on the way, and becomes visible only once its SHA-256 matched: in the
lake under its original key (a temp file of the staging folder, then one PUT: an object appears whole or not at
all), or only in the node's edge cache (a cache fill: temp file, fsync, rename, READY in the cache index, done
for groups of files by a publisher thread while the next file is read; the stream raises before its end on a
wrong SHA-256, which aborts the fill). A reader therefore never sees a half-recalled file, even when the recall
is killed; the next recall starts that file again.

A copy that is unreadable or fails its SHA-256 is not published; the file is planned again without that cartridge,
so the other site's copy is used. Readers of one file in several processes cause one recall: each file is copied
under its own flock, and whoever gets the lock second finds the file already there. Every recall is in the audit
log twice: before anything is published (who asked, why, which files; written while the first file is read) and
after (what was published from which copy).

Recalled to the lake, a file is VERIFIED again in the catalog (as after ``archive restore``); recalled to the cache
it stays PURGED, since the lake still lacks it.
"""

from __future__ import annotations

import fcntl
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from tqdm import tqdm

from tierlake.errors import NotFound, TapeError
from tiers.archive.catalog import Catalog, quote
from tiers.archive.context import ArchiveContext
from tiers.archive.recall_io import (
    CacheTarget,
    ChecksumMismatch,
    FolderTarget,
    LakeTarget,
    Step,
    TapeOrigin,
    Target,
    read_ahead,
    target_for,
    verified,
)
from tiers.archive.state import FileState
from tiers.tape.library import Library
from tiers.tape.volume import Volume

logger = logging.getLogger(__name__)
RecallTarget = Literal["lake", "cache"]
NOMINAL_DRIVE_MB_S = 360.0
"""The estimate's drive speed when ``archive.drive_mb_s`` is 0 (virtual drives at disk speed): LTO-8 native."""
MOUNT_S = 20.0
"""The estimate's cost of one mount: robot move, load and thread (LTO-8 takes 15-20 s before the first locate)."""
Published = Callable[["RecallFile", str], None]
"""Called as each file of a recall becomes readable, with where it went (empty: another reader put it there)."""
__all__ = [
    "CacheTarget",
    "ChecksumMismatch",
    "FolderTarget",
    "LakeTarget",
    "RecallPlan",
    "TapeOrigin",
    "Target",
    "plan_for_objects",
    "plan_recall",
    "recall",
    "target_for",
]


@dataclass(frozen=True, kw_only=True)
class RecallFile:
    """One purged file and the copy chosen for it: where it is on which cartridge."""

    file_id: str
    table: str
    path: str
    bucket: str
    key: str
    size: int
    sha256: str
    copy: int
    cartridge: str
    site: str
    aggregate: str
    member_offset: int
    start_block: int
    extent_partition: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True, kw_only=True)
class CartridgeRecall:
    """The files read from one cartridge in one mount, in their order on tape."""

    cartridge: str
    site: str
    files: tuple[RecallFile, ...]

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True, kw_only=True)
class Estimate:
    files: int
    bytes: int
    cartridges: int
    mounts: int
    seconds: float
    drive_mb_s: float


@dataclass(frozen=True, kw_only=True)
class RecallPlan:
    """What a recall reads: ``cartridges`` in mount order; ``unarchived``: wanted objects the catalog has no usable
    copy of; ``holders``: every cartridge that holds each wanted object (for messages); ``rows``: the catalog rows
    of every copy, to plan again around a bad one."""

    cartridges: tuple[CartridgeRecall, ...]
    unarchived: tuple[str, ...] = ()
    holders: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    rows: tuple[dict[str, Any], ...] = ()

    @property
    def files(self) -> list[RecallFile]:
        return [f for c in self.cartridges for f in c.files]

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.cartridges)

    def estimate(self, *, drive_mb_s: float, mount_s: float = MOUNT_S) -> Estimate:
        """Bytes at the drives' speed (one drive per cartridge, one after another) plus one load per mount."""
        speed = drive_mb_s if drive_mb_s > 0 else NOMINAL_DRIVE_MB_S
        mounts = len(self.cartridges)
        return Estimate(
            files=len(self.files),
            bytes=self.bytes,
            cartridges=len({c.cartridge for c in self.cartridges}),
            mounts=mounts,
            seconds=self.bytes / (speed * 1e6) + mounts * mount_s,
            drive_mb_s=speed,
        )

    def describe(self) -> list[str]:
        """One line per file: its URI and every cartridge that holds a copy (the chosen one first)."""
        lines = []
        for item in self.files:
            others = [c for c in self.holders.get(item.uri, ()) if c != item.cartridge]
            lines.append(f"{item.uri} (size {item.size}): cartridges {', '.join([item.cartridge, *others])}")
        lines += [f"{uri}: no copy in the archive catalog" for uri in self.unarchived]
        return lines


def _recall_file(row: Mapping[str, Any]) -> RecallFile:
    return RecallFile(
        file_id=str(row["file_id"]),
        table=str(row["table"]),
        path=str(row["path"]),
        bucket=str(row["bucket"]),
        key=str(row["key"]),
        size=int(row["size"]),
        sha256=str(row["sha256"]),
        copy=int(row["copy"]),
        cartridge=str(row["cartridge"]),
        site=str(row["site"]),
        aggregate=str(row["aggregate"]),
        member_offset=int(row["member_offset"]),
        start_block=int(row["start_block"]),
        extent_partition=str(row["extent_partition"]),
    )


def plan_recall(
    rows: Iterable[Mapping[str, Any]],
    wanted: Sequence[tuple[str, str]],
    *,
    avoid: Mapping[str, set[str]] | None = None,
) -> RecallPlan:
    """The recall plan of the objects ``wanted`` ((bucket, key) pairs) from the catalog ``rows`` of their copies.

    Each file takes one copy, never one on a cartridge in ``avoid[file_id]`` (a copy found bad), chosen to need
    few mounts (:func:`_fewest_mounts`), so a partition archived together is recalled from one cartridge.
    """
    avoid = avoid or {}
    copies: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        copies[(str(row["bucket"]), str(row["key"]))].append(row)
    holders = {f"s3://{b}/{k}": tuple(sorted({str(r["cartridge"]) for r in copies.get((b, k), [])})) for b, k in wanted}
    usable = {
        pair: [r for r in copies.get(pair, []) if str(r["cartridge"]) not in avoid.get(str(r["file_id"]), set())]
        for pair in dict.fromkeys(wanted)
    }
    missing = [f"s3://{b}/{k}" for (b, k), candidates in usable.items() if not candidates]
    chosen: dict[str, list[RecallFile]] = defaultdict(list)
    for row in _fewest_mounts({pair: c for pair, c in usable.items() if c}).values():
        chosen[str(row["cartridge"])].append(_recall_file(row))
    cartridges = tuple(
        CartridgeRecall(
            cartridge=barcode,
            site=files[0].site,
            files=tuple(sorted(files, key=lambda f: (f.extent_partition, f.start_block, f.member_offset, f.path))),
        )
        for barcode, files in sorted(chosen.items())
    )
    every = tuple(dict(r) for pair in usable for r in copies.get(pair, []))
    return RecallPlan(cartridges=cartridges, unarchived=tuple(missing), holders=holders, rows=every)


Choice = dict[tuple[str, str], Mapping[str, Any]]


def _fewest_mounts(usable: Mapping[tuple[str, str], list[Mapping[str, Any]]]) -> Choice:
    """One copy per file: the choice with the fewest cartridges among a greedy cover (the cartridge holding most
    of the files still unassigned, again and again) and each copy number's own choice (all of one site's copies,
    where it has one). Ties go to the earlier of those, so copy 1 wins where nothing is gained."""
    greedy: Choice = {}
    left = dict(usable)
    while left:
        holds: dict[str, int] = defaultdict(int)
        for candidates in left.values():
            for cartridge in {str(r["cartridge"]) for r in candidates}:
                holds[cartridge] += 1
        best = min(holds, key=lambda c: (-holds[c], c))
        for pair, candidates in list(left.items()):
            if row := next((r for r in candidates if str(r["cartridge"]) == best), None):
                greedy[pair] = row
                del left[pair]
    options = [greedy]
    for copy in sorted({int(r["copy"]) for candidates in usable.values() for r in candidates}):
        options.append(
            {pair: next((r for r in c if int(r["copy"]) == copy), greedy[pair]) for pair, c in usable.items()}
        )
    return min(options, key=lambda choice: len({str(r["cartridge"]) for r in choice.values()}))


SMALL_CATALOG_BYTES = 32 * 1024 * 1024
"""A local catalog up to this size (its Parquet files) is read whole with pyarrow and filtered in memory: 2 ms for
the bench's catalog, where a DuckDB connection alone took 19 ms of a 40 ms plan. Larger ones go through DuckDB,
which skips row groups by their statistics."""


def catalog_rows_under(catalog: Catalog, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every catalog row (all copies) of objects under ``s3://bucket/prefix/`` (the whole bucket when ``prefix`` is
    empty), ordered by key and copy: one scan of the catalog."""
    from tiers.archive.catalog import AUDIT_SCHEMA, query  # noqa: PLC0415

    folder = prefix.strip("/") + "/" if prefix.strip("/") else ""
    source = catalog.dataset()
    if isinstance(source, list) and sum(Path(f).stat().st_size for f in source) <= SMALL_CATALOG_BYTES:
        return _rows_under_small(source, bucket, folder)
    where = f"bucket = {quote(bucket)}"
    if folder:
        where += f" AND starts_with(key, {quote(folder)})"
    sql = f"SELECT * FROM catalog WHERE {where} ORDER BY key, copy"  # noqa: S608 - quoted literals
    # The audit log is not read here: an empty one, not a second Delta table opened per plan.
    found: list[dict[str, Any]] = query(sql, catalog=source, audit=AUDIT_SCHEMA.empty_table()).to_pylist()
    return found


def _rows_under_small(files: list[str], bucket: str, folder: str) -> list[dict[str, Any]]:
    """:func:`catalog_rows_under` over a small local catalog: each file read whole (cast to the catalog's schema:
    delta-rs ``update`` writes strings as ``string_view``), filtered and sorted in memory."""
    import pyarrow.compute as pc  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    from tiers.archive.catalog import CATALOG_SCHEMA  # noqa: PLC0415

    parts = [pq.read_table(f).select(CATALOG_SCHEMA.names).cast(CATALOG_SCHEMA) for f in files]
    table = pa.concat_tables(parts) if parts else CATALOG_SCHEMA.empty_table()
    keep = pc.equal(table["bucket"], bucket)
    if folder:
        keep = pc.and_(keep, pc.starts_with(table["key"], folder))
    found: list[dict[str, Any]] = (
        table.filter(pc.fill_null(keep, False)).sort_by([("key", "ascending"), ("copy", "ascending")]).to_pylist()
    )
    return found


def plan_for_objects(
    context: ArchiveContext, catalog: Catalog, bucket: str, prefix: str, keys: Iterable[str], *, to: str = "lake"
) -> RecallPlan:
    """The recall plan of the objects ``keys`` under ``s3://bucket/prefix/`` that are purged and not back yet.

    One catalog scan finds which of them are PURGED: the lake lacks those (a recall or restore to the lake sets
    them VERIFIED again), so no HEAD is sent; for ``to="cache"`` the ones the edge cache holds already are left
    out (a local lookup). A file published by a recall killed before it updated the catalog is planned again and
    found there by the recall's own check under the file's lock, not read twice.
    """
    wanted_keys = set(keys)
    rows = [r for r in catalog_rows_under(catalog, bucket, prefix) if r["key"] in wanted_keys]
    purged = {str(r["key"]): int(r["size"]) for r in rows if r["state"] == FileState.PURGED.value}
    cache = target_for(context, "cache") if to == "cache" and purged else None
    wanted = [(bucket, k) for k, size in sorted(purged.items()) if cache is None or not cache.present(bucket, k, size)]
    return plan_recall(rows, wanted)


# ---------------------------------------------------------------------------------------------------------
# Carrying a plan out


@dataclass(kw_only=True)
class RecallReport:
    """``recalled``: what this call published; ``already``: files another reader recalled first (not read again);
    ``fallbacks``: copies found bad, each with the reason; ``mounts``: cartridges loaded."""

    recalled: list[dict[str, Any]] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    mounts: int = 0
    bytes: int = 0


@dataclass(kw_only=True)
class _Run:
    catalog: Catalog
    library: Library
    target: Target
    staging: Path
    bar: tqdm[Any]
    step: Step
    published: Published
    asked_by: str
    reason: str
    report: RecallReport
    locks: list[_FileLock] = field(default_factory=list)
    audited: Future[None] | None = None  # the ``recall`` event being written while the first reads run
    reader: ThreadPoolExecutor | None = None  # reads and hashes each file ahead of the writer


def _no_step(_step: str, _path: str) -> None:
    return None


def _no_publish(_item: RecallFile, _where: str) -> None:
    return None


class _FileLock:
    """One recall of a file at a time across processes (a killed holder frees it: flock). Held from the check
    that the file is not there yet until it is published, which for the cache comes later, from the target's
    publisher thread: released there (:meth:`release` is idempotent)."""

    def __init__(self, folder: Path, file_id: str) -> None:
        self._handle: Any = (folder / f"{file_id}.lock").open("a")
        fcntl.flock(self._handle, fcntl.LOCK_EX)

    def release(self) -> None:
        if (handle := self._handle) is not None:
            self._handle = None
            handle.close()  # closing the only descriptor drops the flock


def _recall_one(run: _Run, volume: Volume, item: RecallFile) -> bool:
    """Recall one file under its lock in one streaming pass (tiers/archive/recall_io.py); False when this copy is
    bad (the caller plans the other one). The file may be published after this returns (a cache target
    publishes in groups): :func:`_published` then runs from the target's thread."""
    lock = _FileLock(run.staging / "locks", item.file_id)
    try:
        if run.target.present(item.bucket, item.key, item.size):
            lock.release()
            run.report.already.append(item.uri)
            run.bar.update(item.size)
            run.published(item, "")
            return True
        chunks = volume.read(item.aggregate, start=item.member_offset, length=item.size)
        read = read_ahead(verified(_counted(chunks, run.bar), item, run.step), pool=run.reader)
        stream = _after_audit(read, run.audited)
        run.locks.append(lock)
        run.target.put(item, stream, lambda where: _published(run, item, lock, where))
    except ChecksumMismatch:
        lock.release()
        run.report.fallbacks.append(f"{item.path}: copy {item.copy} ({item.cartridge}) SHA-256 mismatch")
        return False
    except TapeError as exc:
        lock.release()
        run.report.fallbacks.append(f"{item.path}: copy {item.copy} ({item.cartridge}) unreadable: {exc}")
        return False
    except BaseException:
        lock.release()
        raise
    return True


def _published(run: _Run, item: RecallFile, lock: _FileLock, where: str) -> None:
    """``item`` is readable at ``where``: its lock goes, the report and the caller's hook learn of it."""
    lock.release()
    run.step("published", item.path)
    run.report.recalled.append(
        {"file_id": item.file_id, "path": item.path, "uri": item.uri, "to": where, "copy": item.copy}
        | {"cartridge": item.cartridge}
    )
    run.report.bytes += item.size
    run.published(item, where)


def _after_audit(chunks: Iterator[bytes], audited: Future[None] | None) -> Iterator[bytes]:
    """``chunks``, then a wait for the ``recall`` audit event before the stream ends: a target publishes a file
    only once its stream ended without an error, so nothing is readable before the event is written (and a failed
    write publishes nothing)."""
    yield from chunks
    if audited is not None:
        audited.result()


def _counted(chunks: Iterable[bytes], bar: tqdm[Any]) -> Iterator[bytes]:
    for chunk in chunks:
        bar.update(len(chunk))
        yield chunk


def _recall_cartridge(run: _Run, cart: CartridgeRecall) -> list[RecallFile]:
    """One mount: every file of ``cart`` in tape order; returns the files whose copy here was bad."""
    before = len(run.report.recalled)
    failed = []
    try:
        with run.library.mount(cart.cartridge) as volume:
            run.report.mounts += 1
            try:
                failed = [item for item in cart.files if not _recall_one(run, volume, item)]
            finally:
                _settle(run)
    except TapeError as exc:
        logger.warning("recall: cartridge %s unusable: %s", cart.cartridge, exc, extra={"cartridge": cart.cartridge})
        run.report.fallbacks += [f"{f.path}: copy {f.copy} ({cart.cartridge}) unusable: {exc}" for f in cart.files]
        done = {r["path"] for r in run.report.recalled[before:]} | set(run.report.already)
        failed = [f for f in cart.files if f.path not in done and f.uri not in done]
    return failed


def _settle(run: _Run) -> None:
    """Wait until everything handed to the target is published (raising its error), then free every file lock
    left (of files whose publication failed)."""
    try:
        run.target.flush()
    finally:
        for lock in run.locks:
            lock.release()
        run.locks.clear()


def _audit(run: _Run, action: str, plan: RecallPlan, files: list[Any]) -> None:
    """One audit event for the whole recall (not one per cartridge): ``recall`` before any file is published (who
    asked, why, which files from which cartridges), ``recalled`` after (what was published from which copy)."""
    tables = sorted({f.table for f in plan.files})
    cartridges = ",".join(c.cartridge for c in plan.cartridges)
    detail: dict[str, Any] = {"asked_by": run.asked_by, "reason": run.reason, "to": run.target.name}
    detail["sites"] = sorted({c.site for c in plan.cartridges})
    run.catalog.record(action, table=",".join(tables), target=cartridges, files=files, **detail)


def recall(
    context: ArchiveContext,
    catalog: Catalog,
    plan: RecallPlan,
    *,
    to: str = "lake",
    asked_by: str = "",
    reason: str = "",
    progress: bool = True,
    step: Step | None = None,
    published: Published | None = None,
    target: Target | None = None,
) -> RecallReport:
    """Carry out ``plan``: each cartridge mounted once, its files read in tape order, verified, published to
    ``to`` (lake or cache). A bad copy sends its file to the next pass, planned without that cartridge.
    ``published(file, where)`` is called as each file becomes readable (``where`` empty: it was there already),
    so a reader can start on the first file while the others are recalled. ``target``: a target of the caller's
    instead of ``to`` (a :class:`FolderTarget` for a checkpoint restored from tape)."""
    if plan.unarchived:
        raise NotFound(
            f"{len(plan.unarchived)} wanted file(s) have no copy in the archive catalog: {list(plan.unarchived)[:5]}. "
            "Fix: they were not archived (vacuumed?); pin a version whose files are in the lake or on tape"
        )
    staging = context.archive.staging_dir / "recall"
    (staging / "locks").mkdir(parents=True, exist_ok=True)  # each file's lock is taken there (_FileLock)
    bar = tqdm(total=plan.bytes, unit="B", unit_scale=True, desc="recall from tape", disable=not progress)
    run = _Run(
        catalog=catalog,
        library=Library(context.archive),
        target=target if target is not None else target_for(context, to, step=step),
        staging=staging,
        bar=bar,
        step=step or _no_step,
        published=published or _no_publish,
        asked_by=asked_by,
        reason=reason,
        report=RecallReport(),
    )
    if not plan.cartridges:
        return run.report
    # The ``recall`` event is written by a helper thread while the cartridge is mounted and the first file read;
    # every file's stream waits for it before it ends, so it is in the log before anything is published.
    auditor = ThreadPoolExecutor(1, thread_name_prefix="recall-audit")
    run.audited = auditor.submit(_audit, run, "recall", plan, [f.path for f in plan.files])
    run.reader = ThreadPoolExecutor(1, thread_name_prefix="recall-read-ahead")
    try:
        _carry_out(run, plan)
    finally:
        run.reader.shutdown(wait=True)
        run.target.close()
        bar.close()
        auditor.shutdown(wait=True)
        run.audited.result()  # its error, if the recall itself did not fail first
        if run.report.recalled:  # also when a later file failed: what was published is audited
            _audit(run, "recalled", plan, run.report.recalled)
    _mark_restored(catalog, run)
    return run.report


def _carry_out(run: _Run, plan: RecallPlan) -> None:
    avoid: dict[str, set[str]] = defaultdict(set)
    todo = plan
    while todo.cartridges:
        failed = [item for cart in todo.cartridges for item in _recall_cartridge(run, cart)]
        for item in failed:
            avoid[item.file_id].add(item.cartridge)
        todo = plan_recall(plan.rows, [(f.bucket, f.key) for f in failed], avoid=avoid)
        if todo.unarchived:
            raise TapeError(
                f"no healthy copy of {list(todo.unarchived)} on any cartridge: {run.report.fallbacks}. "
                "Fix: `tierlake archive verify` the cartridges named, then rebuild the bad copies"
            )


def _mark_restored(catalog: Catalog, run: _Run) -> None:
    """Files back in the lake are VERIFIED again (PURGED -> VERIFIED, as after a restore)."""
    if run.target.name != "lake" or not run.report.recalled:
        return
    ids = ",".join(quote(r["file_id"]) for r in run.report.recalled)
    state = FileState.VERIFIED.value
    catalog.update(f"file_id IN ({ids}) AND state = {quote(FileState.PURGED.value)}", {"state": quote(state)})
