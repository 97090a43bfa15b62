"""Following a live table: after the pinned snapshot, each new Delta version is served as it commits.

``DeltaLoader(dataset, batch_size=..., follow=FollowOptions(...))`` first serves the pinned version's epoch (unless
``serve_snapshot=False``), then reads the table's log, one JSON commit after the other, from the version after the
pin: no listing of the table, no scan. A commit's ``add`` actions with ``dataChange: true`` are new rows; their
Parquet footers give the row groups, and :mod:`loaders.follow_order` lays them out in segments of at least
``window`` row groups, so the order stays a pure function of (seed, the versions seen, position).

What each kind of commit does:

- an append (``add`` with ``dataChange: true``): its rows are served once;
- a compaction (OPTIMIZE, ``dataChange: false`` on its adds and removes), a vacuum, a property change: nothing is
  served (the rows it rewrites were served already);
- a ``remove`` with ``dataChange: true`` (DELETE, UPDATE, MERGE, overwrite): the table is not append-only, which the
  loader cannot follow without serving rows twice: it stops with an error naming the version;
- a schema or partitioning change, or a reader feature the loader cannot read: it stops with
  :class:`~tierlake.errors.SchemaMismatch` naming the version, after serving the versions before it.

Following ends (the iteration returns) when ``stop`` is set, after ``max_versions`` new versions, or after
``idle_timeout_s`` without a new version. The loader's ``state_dict`` then holds the cursor (the first version not
wholly served and the positions served from it), so a resumed loader serves exactly what the uninterrupted one
would have; iterating again continues following from there.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from loaders.batches import RowGroupStore, RowsDecoder, StoreStats, TableSource, assemble, row_group_keys
from loaders.dataset import DeltaDataset
from loaders.follow_order import StreamLayout, VersionUnits, consumed_segments, locate_stream, stream_layout
from loaders.plan import Plan
from loaders.table import (
    _UNSUPPORTED_READER_FEATURES,
    DataFile,
    FileSource,
    PartitionFilter,
    Snapshot,
    _filter_partitions,
    s3_filesystem,
)
from tierlake.errors import NotFound, SchemaMismatch, StorageError, TierlakeError

if TYPE_CHECKING:
    import torch

    from loaders.loader import DeltaLoader

logger = logging.getLogger(__name__)
STATE_FORMAT = "tierlake.follow/1"


@dataclass(frozen=True, kw_only=True)
class FollowOptions:
    """How a loader follows its table. ``window``: row groups of new data laid out together (1 serves each version
    as it commits; more mixes versions at the cost of waiting for them). Following stops at the first of ``stop``
    set, ``max_versions`` new versions read, or ``idle_timeout_s`` seconds with no new version (None: never);
    the log is read every ``poll_interval_s``. ``serve_snapshot=False`` serves new versions only."""

    idle_timeout_s: float | None = 60.0
    max_versions: int | None = None
    stop: threading.Event | None = field(default=None, compare=False)
    poll_interval_s: float = 0.5
    window: int = 1
    serve_snapshot: bool = True

    def __post_init__(self) -> None:
        if self.idle_timeout_s is not None and self.idle_timeout_s < 0:
            raise TierlakeError(
                f"idle_timeout_s = {self.idle_timeout_s} is invalid. Fix: use 0 or more seconds, or None to follow "
                "until stop is set"
            )
        if self.max_versions is not None and self.max_versions < 1:
            raise TierlakeError(f"max_versions = {self.max_versions} is invalid. Fix: use 1 or more, or None")
        if not self.poll_interval_s > 0:
            raise TierlakeError(f"poll_interval_s = {self.poll_interval_s} is invalid. Fix: use more than 0 seconds")
        if self.window < 1:
            raise TierlakeError(f"window = {self.window} row groups is invalid. Fix: use 1 or more")


@dataclass
class FollowCursor:
    """Where following stands: the snapshot served or not, the first version of the first segment not wholly
    served, and the positions of the stream from that version already served by all ranks together."""

    snapshot_done: bool
    version: int
    offset: int = 0


class Following:
    """A loader's follow options and cursor; the cursor goes into the loader's ``state_dict``."""

    def __init__(self, options: FollowOptions, dataset: object) -> None:
        if not isinstance(dataset, DeltaDataset) or not isinstance(dataset.sources[0].decoder, RowsDecoder):
            raise TierlakeError(
                f"follow= needs a dataset of table rows from delta_dataset(); got {type(dataset).__name__}"
                f"{'' if not isinstance(dataset, DeltaDataset) else ' of packed token sequences'}. Fix: follow a "
                "delta_dataset (token and mixed datasets read fixed versions only)"
            )
        self.options = options
        self.dataset = dataset
        self.cursor = FollowCursor(snapshot_done=not options.serve_snapshot, version=dataset.version + 1)

    def state(self) -> dict[str, Any]:
        c = self.cursor
        return {
            "format": STATE_FORMAT,
            "window": self.options.window,
            "snapshot_done": c.snapshot_done,
            "version": c.version,
            "offset": c.offset,
        }

    def load(self, state: Mapping[str, Any] | None) -> None:
        if state is None or state.get("format") != STATE_FORMAT:
            raise TierlakeError(
                f"the loader state has no follow cursor ({STATE_FORMAT!r}): it was saved by a loader that did not "
                "follow its table. Fix: pass a state saved with follow=..., or build the loader without follow"
            )
        if int(state["window"]) != self.options.window:
            raise TierlakeError(
                f"the state was saved with window = {state['window']} row groups, this loader has window = "
                f"{self.options.window}: the order of new data would differ. Fix: use FollowOptions(window="
                f"{state['window']})"
            )
        if int(state["offset"]) < 0:
            raise TierlakeError(f"follow offset = {state['offset']} is invalid. Fix: pass a state from state_dict()")
        self.cursor = FollowCursor(
            snapshot_done=bool(state["snapshot_done"]), version=int(state["version"]), offset=int(state["offset"])
        )


def follow_options(value: FollowOptions | bool | None) -> FollowOptions | None:
    """``follow=`` of the loader: True for the defaults, False or None for a fixed version."""
    if value is None or value is False:
        return None
    if value is True:
        return FollowOptions()
    if isinstance(value, FollowOptions):
        return value
    raise TierlakeError(f"follow = {value!r} is invalid. Fix: pass True, False or a FollowOptions")


# -- the log -----------------------------------------------------------------------------------------------


class DeltaLog:
    """Reads a table's ``_delta_log`` commits by version through ``pyarrow.fs`` (a local path or S3); owns the
    S3 client."""

    def __init__(self, location: str, storage_options: Mapping[str, str] | None) -> None:
        parsed = urlparse(location)
        self._fs: pafs.FileSystem
        if parsed.scheme in ("", "file"):
            self._fs, root = pafs.LocalFileSystem(), unquote(parsed.path) if parsed.scheme else location
        elif parsed.scheme in ("s3", "s3a"):
            self._fs, root = s3_filesystem(dict(storage_options or {})), f"{parsed.netloc}{unquote(parsed.path)}"
        else:
            raise StorageError(
                f"table {location!r}: scheme {parsed.scheme!r} is not supported. Fix: use s3:// or a local path"
            )
        self.location = location
        self._dir = f"{root.rstrip('/')}/_delta_log"

    def actions(self, version: int) -> list[dict[str, Any]] | None:
        """The actions of commit ``version``, or None while it is not committed."""
        path = f"{self._dir}/{version:020d}.json"
        try:
            with self._fs.open_input_stream(path) as stream:
                text = stream.read().decode("utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"reading commit {version} of {self.location} failed: {exc}") from exc
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise StorageError(f"commit {version} of {self.location} is not JSON lines: {exc}") from exc

    def check_reachable(self, version: int) -> None:
        """Fail when commit ``version`` is gone while later ones exist (the log was cleaned past the cursor)."""
        if self.actions(version) is not None:
            return
        selector = pafs.FileSelector(self._dir, allow_not_found=True)
        names = [info.base_name for info in self._fs.get_file_info(selector)]
        later = [int(n[:20]) for n in names if n.endswith(".json") and n[:20].isdigit() and int(n[:20]) > version]
        if later:
            raise NotFound(
                f"commit {version} of {self.location} is gone from its log (the oldest JSON commit left is "
                f"{min(later)}): log retention removed it before the loader read it. Fix: resume from a newer state, "
                "or raise the table's delta.logRetentionDuration"
            )


@dataclass(frozen=True, kw_only=True)
class Commit:
    """What one version brings to a follower: the files it added with ``dataChange: true``."""

    version: int
    operation: str
    files: tuple[DataFile, ...]
    rewritten: int  # files added with dataChange: false (compaction)


@dataclass(frozen=True, kw_only=True)
class PinnedTable:
    """What commits are checked against: the pinned snapshot's schema and partitioning, and the filters."""

    snapshot: Snapshot
    filters: Sequence[PartitionFilter] = ()


def parse_commit(version: int, actions: list[dict[str, Any]], pinned: PinnedTable) -> Commit:
    """The files a commit adds, after checking it keeps the pinned schema and appends only."""
    snapshot = pinned.snapshot
    info: dict[str, Any] = next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
    operation = str(info.get("operation", "?"))
    for action in actions:
        if "metaData" in action:
            _check_metadata(version, action["metaData"], snapshot)
        if "protocol" in action:
            _check_protocol(version, action["protocol"], snapshot)
        if "remove" in action and action["remove"].get("dataChange", True):
            raise TierlakeError(
                f"version {version} of {snapshot.table_uri} ({operation}) removes data file "
                f"{action['remove'].get('path')!r} with dataChange=true: the table is not append-only (a DELETE, "
                "UPDATE, MERGE or overwrite), and following it would serve changed rows twice. Fix: follow an "
                f"append-only table, or pin version {version} or later and read it as a fixed version"
            )
    adds = [a["add"] for a in actions if "add" in a]
    files = tuple(_data_file(snapshot.location or snapshot.table_uri, add) for add in adds if add.get("dataChange"))
    if pinned.filters and files:
        files = _filtered(files, snapshot, pinned.filters)
    rewritten = sum(not a.get("dataChange") for a in adds)
    return Commit(version=version, operation=operation, files=files, rewritten=rewritten)


def _check_metadata(version: int, metadata: dict[str, Any], snapshot: Snapshot) -> None:
    from deltalake import Schema  # noqa: PLC0415 - delta-rs loads a Rust extension; import where used

    schema = pa.schema(Schema.from_json(metadata["schemaString"]))
    partitions = tuple(metadata.get("partitionColumns") or ())
    if schema.equals(snapshot.schema, check_metadata=False) and partitions == snapshot.partition_columns:
        return
    old = {f.name: str(f.type) for f in snapshot.schema}
    new = {f.name: str(f.type) for f in schema}
    changes = [
        f"{n}: {old.get(n, '(none)')} -> {new.get(n, '(none)')}" for n in {**old, **new} if old.get(n) != new.get(n)
    ]
    if partitions != snapshot.partition_columns:
        changes.append(f"partition columns: {list(snapshot.partition_columns)} -> {list(partitions)}")
    raise SchemaMismatch(
        f"version {version} of {snapshot.table_uri} changes its schema ({'; '.join(changes) or 'field options'}); "
        f"the loader follows the schema of version {snapshot.version}. Fix: stop here and start a loader pinned "
        f"at version {version} or later"
    )


def _check_protocol(version: int, protocol: dict[str, Any], snapshot: Snapshot) -> None:
    for feature in protocol.get("readerFeatures") or ():
        if feature in _UNSUPPORTED_READER_FEATURES:
            raise SchemaMismatch(
                f"version {version} of {snapshot.table_uri} turns on reader feature {feature!r}, which the loader's "
                f"direct Parquet reads would get wrong. Fix: {_UNSUPPORTED_READER_FEATURES[feature]}"
            )


def _data_file(base: str, add: dict[str, Any]) -> DataFile:
    path = unquote(str(add["path"]))
    uri = path if "://" in path or path.startswith("/") else f"{base.rstrip('/')}/{path}"
    stats = json.loads(add["stats"]) if add.get("stats") else {}
    partition = {k: None if v is None else str(v) for k, v in (add.get("partitionValues") or {}).items()}
    return DataFile(uri=uri, size=int(add.get("size", 0)), rows=int(stats.get("numRecords") or 0), partition=partition)


def _filtered(
    files: tuple[DataFile, ...], snapshot: Snapshot, filters: Sequence[PartitionFilter]
) -> tuple[DataFile, ...]:
    """The files whose partition values pass the dataset's filters (the same rule as the pinned snapshot's)."""
    columns = {
        f"partition.{c}": pa.array([f.partition.get(c) for f in files], pa.string()) for c in snapshot.partition_columns
    }
    keep = pa.table({"index": pa.array(range(len(files)), pa.int64()), **columns})
    kept = _filter_partitions(keep, snapshot.partition_columns, filters, snapshot.table_uri)
    return tuple(files[i] for i in kept.column("index").to_pylist())


def plan_commit(commit: Commit, pinned: Snapshot, files: FileSource) -> Plan:
    """Row groups of the files one commit added, from their footers (read concurrently)."""

    def footer(uri: str) -> list[int]:
        try:
            meta = pq.ParquetFile(files.open(uri)).metadata
        except (NotFound, FileNotFoundError) as exc:
            raise NotFound(
                f"data file {uri} added by version {commit.version} of {pinned.table_uri} is missing (vacuumed "
                "before the loader reached it). Fix: follow with a vacuum retention longer than the loader's lag"
            ) from exc
        except OSError as exc:
            raise StorageError(f"reading the Parquet footer of {uri} failed: {exc}") from exc
        return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]

    uris = [f.uri for f in commit.files]
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(uris)))) as pool:
        footers = list(pool.map(footer, uris))
    picked = [(i, rg, n) for i, counts in enumerate(footers) for rg, n in enumerate(counts) if n]
    snapshot = Snapshot(
        table_uri=pinned.table_uri,
        version=commit.version,
        schema=pinned.schema,
        partition_columns=pinned.partition_columns,
        files=commit.files,
        table_id=pinned.table_id,
        location=pinned.location,
    )
    return Plan(
        snapshot=snapshot,
        file_of=np.asarray([p[0] for p in picked], dtype=np.int64),
        index_in_file=np.asarray([p[1] for p in picked], dtype=np.int64),
        rows=np.asarray([p[2] for p in picked], dtype=np.int64),
        fingerprint=f"table={pinned.table_id}:commit={commit.version}",
    )


# -- the loop ----------------------------------------------------------------------------------------------


class _Stream:
    """The versions read from the cursor on, each as a table source of its new row groups."""

    def __init__(self, dataset: DeltaDataset, start_version: int, window: int) -> None:
        self.window = window
        self.template = dataset.sources[0]
        self.pinned = PinnedTable(snapshot=self.template.plan.snapshot, filters=dataset.partition_filters)
        self.log = DeltaLog(self.pinned.snapshot.location or self.pinned.snapshot.table_uri, dataset.storage_options)
        self.order = dataset.order
        self.versions: list[VersionUnits] = []
        self.sources: list[TableSource] = []
        self.next_version = start_version
        self.pending_error: TierlakeError | None = None

    def read_new(self, limit: int | None) -> int:
        """Read the commits after the last one read (at most ``limit``); returns how many. A commit the loader
        cannot follow is kept as ``pending_error`` and ends the reading: the versions before it are served first."""
        read = 0
        while self.pending_error is None and (limit is None or read < limit):
            actions = self.log.actions(self.next_version)
            if actions is None:
                break
            try:
                commit = parse_commit(self.next_version, actions, self.pinned)
            except TierlakeError as exc:
                self.pending_error = exc
                break
            self._add(commit)
            self.next_version += 1
            read += 1
        return read

    def _add(self, commit: Commit) -> None:
        plan = plan_commit(commit, self.pinned.snapshot, self.template.files)
        t = self.template
        self.sources.append(
            TableSource(plan=plan, files=t.files, columns=t.columns, decoder=t.decoder, units=plan.rows.copy())
        )
        self.versions.append(VersionUnits(version=commit.version, units=plan.rows.copy()))
        logger.info(
            "following %s: version %d (%s) adds %d files, %d rows%s",
            self.pinned.snapshot.table_uri,
            commit.version,
            commit.operation,
            len(commit.files),
            plan.total_rows,
            f"; {commit.rewritten} files rewritten without data change (not served again)" if commit.rewritten else "",
            extra={"table_version": commit.version},
        )

    def layout(self) -> StreamLayout:
        return stream_layout(self.versions, seed=self.order.seed, window=self.window, shuffle=self.order.shuffle)

    def drop_served(self, stream: StreamLayout, cursor: FollowCursor) -> None:
        """Forget the segments every rank has served: the cursor moves to the next segment's first version."""
        done = consumed_segments(stream, cursor.offset)
        if not done:
            return
        last = stream.segments[done - 1]
        cursor.offset -= int(stream.starts[done - 1]) + last.layout.total
        cursor.version = self.versions[last.last_slot].version + 1
        del self.versions[: last.last_slot + 1]
        del self.sources[: last.last_slot + 1]


def follow_batches(loader: DeltaLoader, following: Following) -> Iterator[dict[str, torch.Tensor]]:
    """The loader's iteration when it follows its table: the snapshot's epoch (once), then new versions."""
    if not following.cursor.snapshot_done:
        yield from loader._epoch_batches()
        following.cursor.snapshot_done = True
    loader._running = True
    try:
        yield from _follow(loader, following)
    finally:
        loader._running = False


def _follow(loader: DeltaLoader, following: Following) -> Iterator[dict[str, torch.Tensor]]:
    """Poll the log, serve the whole global steps laid out, move the cursor; until a stop condition holds."""
    options, cursor = following.options, following.cursor
    stream = _Stream(following.dataset, cursor.version, options.window)
    stream.log.check_reachable(cursor.version)
    taken, last_new = 0, time.monotonic()
    loader.stats.store = StoreStats()
    while True:
        read = stream.read_new(None if options.max_versions is None else options.max_versions - taken)
        taken += read
        last_new = time.monotonic() if read else last_new
        layout = stream.layout()
        yield from _round_batches(loader, layout, tuple(stream.sources), cursor, options.stop)
        stream.drop_served(layout, cursor)
        if options.stop is not None and options.stop.is_set():
            return
        if stream.pending_error is not None:
            raise stream.pending_error
        if _should_stop(options, taken, last_new):
            logger.info(
                "stopped following %s at version %d (offset %d): %d new versions read",
                stream.pinned.snapshot.table_uri,
                cursor.version,
                cursor.offset,
                taken,
            )
            return
        if options.stop is not None:
            options.stop.wait(options.poll_interval_s)
        else:
            time.sleep(options.poll_interval_s)


def _round_batches(
    loader: DeltaLoader,
    layout: StreamLayout,
    sources: tuple[TableSource, ...],
    cursor: FollowCursor,
    stop: threading.Event | None,
) -> Iterator[dict[str, torch.Tensor]]:
    """This rank's batches of the global steps laid out and not served yet; the cursor moves before each yield,
    so a ``state_dict`` taken while the caller holds a batch counts it served."""
    import torch  # noqa: PLC0415 - torch only where batches become tensors

    batch, step = loader.options.batch_size, loader.options.batch_size * loader.world_size
    if layout.total - cursor.offset < step:
        return
    store = RowGroupStore(sources, loader._capacity(), io_threads=loader.options.num_workers)
    try:
        while layout.total - cursor.offset >= step and not (stop is not None and stop.is_set()):
            first = cursor.offset + loader.rank * batch
            ahead = loader.options.prefetch_batches
            _prefetch(store, layout, offset=cursor.offset, first=first, step=step, batch=batch, ahead=ahead)
            waited = time.perf_counter()
            slots, rgs, offsets = locate_stream(layout, np.arange(first, first + batch, dtype=np.int64))
            arrays = assemble(store, slots, rgs, offsets)
            loader.stats.wait_s += time.perf_counter() - waited
            loader.stats.batches += 1
            cursor.offset += step
            yield {name: torch.from_numpy(array) for name, array in arrays.items()}
    finally:
        store.close()
        _add_stats(loader.stats.store, store.stats)


def _prefetch(
    store: RowGroupStore, layout: StreamLayout, *, offset: int, first: int, step: int, batch: int, ahead: int
) -> None:
    """Start reading the row groups of this rank's next ``ahead`` batches that are laid out already (global step
    ``k`` from ``offset``: this rank's batch starts at ``first + k * step``)."""
    starts = [first + k * step for k in range(ahead) if offset + (k + 1) * step <= layout.total]
    if not starts:
        return
    positions = (np.asarray(starts, dtype=np.int64)[:, None] + np.arange(batch, dtype=np.int64)[None, :]).reshape(-1)
    slots, rgs, _ = locate_stream(layout, positions)
    store.prefetch(row_group_keys(slots, rgs))


def _should_stop(options: FollowOptions, taken: int, last_new: float) -> bool:
    if options.stop is not None and options.stop.is_set():
        return True
    if options.max_versions is not None and taken >= options.max_versions:
        return True
    return options.idle_timeout_s is not None and time.monotonic() - last_new >= options.idle_timeout_s


def _add_stats(total: StoreStats, part: StoreStats) -> None:
    total.reads += part.reads
    total.rereads += part.rereads
    total.bytes_read += part.bytes_read
    total.peak_resident_bytes = max(total.peak_resident_bytes, part.peak_resident_bytes)
    total.largest_row_group_bytes = max(total.largest_row_group_bytes, part.largest_row_group_bytes)
