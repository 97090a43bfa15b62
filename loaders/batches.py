"""From Parquet row groups to batch arrays, with no per-sample Python.

A :class:`TableSource` reads one row group of a plan and decodes it into *units*: a mapping of column name to a
numpy array whose first axis is the unit (a row, or a packed token sequence). Numeric, boolean and fixed-size-list
columns become numpy views of the Arrow buffers (no copy). :class:`RowGroupStore` keeps the decoded row groups the
next batches need (bounded, least recently used, one read per row group even when several threads ask at once), and
:func:`assemble` gathers a batch with one ``numpy.take`` per column and row group (it releases the GIL).
"""

from __future__ import annotations

import io
import logging
import math
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from loaders import pages
from loaders.order import IntArray
from loaders.plan import Plan
from loaders.table import DataFile, FileSource
from tierlake.errors import NotFound, SchemaMismatch, StorageError, TierlakeError

logger = logging.getLogger(__name__)

Units = Mapping[str, npt.NDArray[Any]]
Decoder = Callable[[pa.Table, DataFile, int], Units]  # (row group table, its file, row count) -> units
_HANDLES_PER_THREAD = 16
# An open file, what the direct page reader reads it through (a descriptor, or the remote file itself), and the
# local file object that owns that descriptor.
_Handle = tuple[pq.ParquetFile, pages.Source, io.FileIO | None]
POOLED_MIN_BYTES = 1 << 16  # smaller gathered arrays come from numpy.empty (the C allocator keeps those warm)
# Buffers the direct page reader's arrays (and its raw chunks) are reused from: a new one only when every one is in
# use, so the memory kept is about the peak the row-group store held. Smaller arrays come from numpy.empty.
_DECODE_SLOTS = 64
_DECODE_MIN_BYTES = 1 << 20


def numpy_column(name: str, column: pa.ChunkedArray | pa.Array) -> npt.NDArray[Any]:
    """A numeric, boolean or fixed-size-list column as a numpy array, without copying when it is one chunk."""
    if isinstance(column, pa.ChunkedArray):  # one chunk (the usual row group) is used in place, not concatenated
        array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    else:
        array = column
    if array.null_count:
        raise SchemaMismatch(
            f"column {name!r} has {array.null_count} nulls in a row group; batches hold dense arrays. "
            "Fix: fill the nulls in the table, or leave the column out (columns=...)"
        )
    kind = array.type
    if pa.types.is_fixed_size_list(kind):
        width = kind.list_size
        values = array.flatten()  # honours the array's offset
        return numpy_column(name, values).reshape(len(array), width)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        # Delta has no fixed-size list type: equal-length lists are reshaped without a copy.
        offsets = array.offsets.to_numpy()
        widths = np.unique(np.diff(offsets))
        if len(widths) <= 1:
            width = int(widths[0]) if len(widths) else 0
            values = numpy_column(name, array.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])))
            return values.reshape(len(array), width)
        raise SchemaMismatch(
            f"column {name!r} holds lists of {len(widths)} different lengths ({widths[:5].tolist()}...), which do "
            "not form a dense tensor. Fix: pack token lists with loaders.tokens.token_dataset"
        )
    if pa.types.is_timestamp(kind):  # int64 microseconds since the epoch, whatever unit the file stores
        return numpy_column(name, array.cast(pa.timestamp("us", kind.tz), safe=False).cast(pa.int64()))
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        result: npt.NDArray[Any] = array.to_numpy(zero_copy_only=not pa.types.is_boolean(kind))
        return result
    raise SchemaMismatch(
        f"column {name!r} has type {kind}, which does not form a dense tensor. Fix: select numeric, boolean or "
        "fixed-size-list columns (columns=...), or read token lists with loaders.tokens.token_dataset"
    )


@dataclass(frozen=True)
class RowsDecoder:
    """Rows as units; selected partition columns are filled from the file's partition value. Picklable."""

    partition_types: tuple[tuple[str, pa.DataType], ...] = ()

    def __call__(self, table: pa.Table, file: DataFile, rows: int) -> Units:
        units: dict[str, npt.NDArray[Any]] = {
            name: numpy_column(name, table.column(name)) for name in table.column_names
        }
        for name, kind in self.partition_types:
            value = pa.scalar(file.partition.get(name), pa.string()).cast(kind)
            units[name] = np.full(rows, value.as_py(), dtype=kind.to_pandas_dtype())
        return units


def _decode_pool() -> ArrayPool:
    return ArrayPool(_DECODE_SLOTS, min_bytes=_DECODE_MIN_BYTES)


@dataclass(frozen=True, kw_only=True)
class TableSource:
    """One table of a dataset: its plan, how its files are opened, the columns read and how they are decoded.

    ``units[i]`` is the number of units row group ``i`` decodes to. Sent to other processes, it carries no client
    (the file source drops its own on pickling).
    """

    plan: Plan
    files: FileSource
    columns: tuple[str, ...]  # physical Parquet columns to read
    decoder: Decoder
    units: IntArray
    _handles: threading.local = field(default_factory=threading.local, repr=False, compare=False)
    _arrays: ArrayPool = field(default_factory=_decode_pool, repr=False, compare=False)
    _refused: set[str] = field(default_factory=set, repr=False, compare=False)  # files the page reader refused

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ("plan", "files", "columns", "decoder", "units")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_handles", threading.local())
        object.__setattr__(self, "_arrays", _decode_pool())
        object.__setattr__(self, "_refused", set())

    def read_row_group(self, rg: int, *, use_threads: bool = True) -> tuple[Units, int]:
        """Decoded units of row group ``rg`` and the bytes Arrow read for it. ``use_threads=False`` decodes the
        columns one after the other in the calling thread instead of on Arrow's thread pool."""
        file = self.plan.snapshot.files[int(self.plan.file_of[rg])]
        index = int(self.plan.index_in_file[rg])
        try:
            parquet, direct = self._parquet(file.uri)
            # The direct page reader first; pyarrow reads what it leaves. A file it refused once (a column with
            # nulls, say) is not offered again: from S3, each offer is a read.
            table = None
            if file.uri not in self._refused:
                table = pages.read_row_group(direct, parquet, index, list(self.columns), self._arrays.empty)
                if table is None:
                    self._refused.add(file.uri)
            if table is None:
                table = parquet.read_row_group(index, columns=list(self.columns), use_threads=use_threads)
        except (NotFound, FileNotFoundError) as exc:
            snapshot = self.plan.snapshot
            raise NotFound(
                f"data file {file.uri} of {snapshot.table_uri} at version {snapshot.version} is missing: it was "
                "deleted after the plan was made (vacuumed, or archived to tape and purged). Fix: restore it through "
                "the cold tier, or pin a version whose files are all present (a cached plan is not re-checked)"
            ) from exc
        except OSError as exc:
            raise StorageError(f"reading row group {self.plan.index_in_file[rg]} of {file.uri} failed: {exc}") from exc
        return self.decoder(table, file, int(self.plan.rows[rg])), int(table.nbytes)

    def _parquet(self, uri: str) -> tuple[pq.ParquetFile, pages.Source]:
        """The open file of ``uri`` and what the direct page reader reads it through: for a local file a second
        descriptor, opened with it (so both read the same file even if the path is replaced or deleted later)."""
        handles: OrderedDict[str, _Handle] | None = getattr(self._handles, "files", None)
        if handles is None:
            handles = OrderedDict()
            self._handles.files = handles
        if uri in handles:
            handles.move_to_end(uri)
            return handles[uri][:2]
        opened = self.files.open(uri)
        # Pre-buffering coalesces the column-chunk reads of remote files; for a local path it only doubles memory.
        if isinstance(opened, str):
            local = io.FileIO(opened)  # closed with its handle
            handles[uri] = (pq.ParquetFile(opened, pre_buffer=False), local.fileno(), local)
        else:
            handles[uri] = (pq.ParquetFile(opened, pre_buffer=True), opened, None)
        while len(handles) > _HANDLES_PER_THREAD:
            handles.popitem(last=False)
        return handles[uri][:2]


@dataclass
class _Entry:
    ready: threading.Event = field(default_factory=threading.Event)
    units: Units | None = None
    nbytes: int = 0
    error: BaseException | None = None


@dataclass
class StoreStats:
    """``reads`` of row groups, of which ``rereads`` were of a row group read before (evicted too early)."""

    reads: int = 0
    rereads: int = 0
    bytes_read: int = 0
    resident_bytes: int = 0
    peak_resident_bytes: int = 0
    largest_row_group_bytes: int = 0


class Needs(Protocol):
    """When row groups are needed (:class:`loaders.schedule.ReadSchedule`): lets the store evict the one needed
    last and keep the ones a batch being built needs."""

    def next_use(self, key: tuple[int, int]) -> int: ...

    def in_flight(self, key: tuple[int, int]) -> bool: ...

    def spent(self, key: tuple[int, int]) -> bool: ...


class RowGroupStore:
    """Decoded row groups shared by the loader's threads: bounded to ``capacity`` entries, single-flight reads.

    Without ``needs`` the least recently used row group is evicted. With it, read-ahead stops when the store is
    full of row groups needed sooner, eviction takes the row group needed last, and a row group that a batch in
    flight needs is never evicted (the store then holds more than ``capacity`` until that batch is gathered).
    ``arrow_threads=False`` decodes each row group in the thread that reads it (for callers whose own threads
    already fill the cores: Arrow's pool would only add a hand-off per column).
    """

    def __init__(
        self,
        sources: tuple[TableSource, ...],
        capacity: int,
        *,
        io_threads: int = 0,
        needs: Needs | None = None,
        arrow_threads: bool = True,
    ) -> None:
        self._sources = sources
        self._arrow_threads = arrow_threads
        self._capacity = max(1, capacity)
        self._needs = needs
        self._entries: OrderedDict[tuple[int, int], _Entry] = OrderedDict()
        self._read: set[tuple[int, int]] = set()
        self._lock = threading.Lock()
        self._io = ThreadPoolExecutor(io_threads, thread_name_prefix="tierlake-rowgroups") if io_threads else None
        self.stats = StoreStats()

    def close(self) -> None:
        """Stop the read-ahead threads (reads in progress finish; queued ones are dropped)."""
        if self._io is not None:
            self._io.shutdown(wait=True, cancel_futures=True)

    def prefetch(self, keys: Iterable[tuple[int, int]]) -> None:
        """Start reading the row groups ``keys`` (source, row group) that are not held or in flight yet."""
        if self._io is None:
            return
        for key in keys:
            with self._lock:
                if key in self._entries:
                    continue
                if self._needs is not None and len(self._entries) >= self._capacity:
                    victim = self._victim(sooner_than=self._needs.next_use(key))
                    if victim is None:
                        return  # full of row groups needed sooner: read the rest when there is room
                    self._drop(victim)
                entry = self._entries[key] = _Entry()
            self._io.submit(self._fill_quietly, key, entry)

    def _fill_quietly(self, key: tuple[int, int], entry: _Entry) -> None:
        try:
            self._fill(key, entry)
        except BaseException:  # the error stays on the entry; the batch that needs the row group raises it
            logger.debug("read-ahead of row group %s failed; the batch that needs it will raise", key)

    def get(self, source: int, rg: int) -> Units:
        key = (source, rg)
        with self._lock:
            entry = self._entries.get(key)
            owner = entry is None
            if entry is None:
                entry = self._entries[key] = _Entry()
            else:
                self._entries.move_to_end(key)
        if owner:
            self._fill(key, entry)
        entry.ready.wait()
        if entry.error is not None:
            raise entry.error
        assert entry.units is not None  # set before ready when there is no error
        return entry.units

    def _fill(self, key: tuple[int, int], entry: _Entry) -> None:
        try:
            entry.units, entry.nbytes = self._sources[key[0]].read_row_group(key[1], use_threads=self._arrow_threads)
        except BaseException as exc:
            entry.error = exc
            with self._lock:
                if self._entries.get(key) is entry:
                    del self._entries[key]
            raise
        finally:
            entry.ready.set()
        with self._lock:
            self.stats.reads += 1
            self.stats.rereads += key in self._read
            self._read.add(key)
            self.stats.bytes_read += entry.nbytes
            self.stats.resident_bytes += entry.nbytes
            self.stats.largest_row_group_bytes = max(self.stats.largest_row_group_bytes, entry.nbytes)
            self._evict()
            self.stats.peak_resident_bytes = max(self.stats.peak_resident_bytes, self.stats.resident_bytes)

    def release(self, keys: Iterable[tuple[int, int]]) -> None:
        """Drop the row groups among ``keys`` that no batch left in the epoch needs (with ``needs`` only): their
        memory goes back to Arrow's allocator for the next reads instead of being held to the epoch's end."""
        if self._needs is None:
            return
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None and entry.ready.is_set() and self._needs.spent(key):
                    self._drop(key)

    def _evict(self) -> None:
        while len(self._entries) > self._capacity:
            victim = self._victim()
            if victim is None:
                return
            self._drop(victim)

    def _victim(self, sooner_than: int | None = None) -> tuple[int, int] | None:
        """The read row group to evict (under the lock): the least recently used one, or with ``needs`` the one
        needed last, if it is needed later than ``sooner_than`` and no batch in flight needs it."""
        ready = [key for key, entry in self._entries.items() if entry.ready.is_set()]
        if self._needs is None:
            return ready[0] if ready else None
        needs = self._needs
        candidates = [(needs.next_use(key), key) for key in ready if not needs.in_flight(key)]
        if not candidates:
            return None
        last_use, key = max(candidates)
        return key if sooner_than is None or last_use > sooner_than else None

    def _drop(self, key: tuple[int, int]) -> None:
        entry = self._entries.pop(key)
        self.stats.resident_bytes -= entry.nbytes


class ArrayPool:
    """Memory for gathered arrays, reused once nothing refers to an array made from it any more.

    A batch is a view of its group's arrays, and the trainer may keep its tensors for as long as it likes, so a
    buffer is handed out again only when its reference count shows that the pool alone holds it (every view,
    slice and tensor made from it holds a reference). Without it, each group's arrays came fresh from the C
    allocator, which unmapped freed ones and faulted the pages in again for the next group. At most ``slots``
    buffers are kept; arrays under ``min_bytes`` (default ``POOLED_MIN_BYTES``) come from ``numpy.empty``.
    Thread-safe.
    """

    def __init__(self, slots: int, *, min_bytes: int | None = None) -> None:
        self._slots = max(0, slots)
        self._min_bytes = POOLED_MIN_BYTES if min_bytes is None else min_bytes
        self._buffers: list[npt.NDArray[np.uint8]] = []
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < self._min_bytes:
            return np.empty(shape, dtype=dtype)
        with self._lock:
            buffer = self._free_buffer(nbytes)
        if buffer is None:
            return np.empty(shape, dtype=dtype)
        return buffer[:nbytes].view(dtype).reshape(shape)

    def _free_buffer(self, nbytes: int) -> npt.NDArray[np.uint8] | None:
        """A buffer of at least ``nbytes`` that nothing outside the pool refers to (under the lock): a free one that
        is large enough, else a free smaller one grown to ``nbytes``, else a new one while there are slots. (Growing
        the first free buffer found had swapped a group's 2 MiB arrays and its smaller temporaries back and forth,
        each swap a fresh allocation whose pages fault in again.)"""
        # 2: the list's reference and getrefcount's argument; a view, slice or tensor of it adds one.
        free = [index for index in range(len(self._buffers)) if sys.getrefcount(self._buffers[index]) == 2]
        fitting = [index for index in free if self._buffers[index].nbytes >= nbytes]
        if fitting:
            return self._buffers[min(fitting, key=lambda index: self._buffers[index].nbytes)]
        if free:
            self._buffers[free[0]] = np.empty(nbytes, dtype=np.uint8)
            return self._buffers[free[0]]
        if len(self._buffers) < self._slots:
            self._buffers.append(np.empty(nbytes, dtype=np.uint8))
            return self._buffers[-1]
        return None


def row_group_keys(sources: IntArray, rgs: IntArray) -> list[tuple[int, int]]:
    """The distinct (source, row group) pairs of a batch, in first-use order."""
    keys = sources * (1 << 40) + rgs
    _, first = np.unique(keys, return_index=True)
    return [(int(sources[i]), int(rgs[i])) for i in np.sort(first)]


def assemble(
    store: RowGroupStore,
    sources: npt.NDArray[np.int64],
    rgs: IntArray,
    offsets: IntArray,
    out: dict[str, npt.NDArray[Any]] | None = None,
    *,
    pool: ArrayPool | None = None,
) -> dict[str, npt.NDArray[Any]]:
    """Gather one batch: unit ``offsets[i]`` of row group ``rgs[i]`` of source ``sources[i]``, in that order.

    ``out`` (e.g. views of a shared-memory slab) receives the batch in place when its shapes match; otherwise the
    arrays (and the temporaries of a batch over several row groups) come from ``pool`` when given.
    """
    empty = np.empty if pool is None else pool.empty
    keys = sources * (1 << 40) + rgs
    unique = np.unique(keys)
    store.prefetch((int(k >> 40), int(k & ((1 << 40) - 1))) for k in unique)
    out = {} if out is None else out
    for key in unique:
        source, rg = int(key >> 40), int(key & ((1 << 40) - 1))
        units = store.get(source, rg)
        single = len(unique) == 1
        picked = np.nonzero(keys == key)[0] if not single else None
        for name, array in units.items():
            if name not in out:
                out[name] = empty((len(keys), *array.shape[1:]), dtype=array.dtype)
            elif out[name].shape != (len(keys), *array.shape[1:]) or out[name].dtype != array.dtype:
                raise SchemaMismatch(
                    f"column {name!r}: row group {rg} of source {source} holds {array.dtype}{array.shape[1:]} but "
                    f"the batch buffer is {out[name].dtype}{out[name].shape}. Fix: mix tables of one schema"
                )
            if picked is None:
                _take_rows(array, offsets, out[name])
            else:
                part = empty((len(picked), *array.shape[1:]), dtype=array.dtype)
                out[name][picked] = _take_rows(array, offsets[picked], part)
    return out


def _take_rows(array: npt.NDArray[Any], rows: IntArray, out: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``array[rows]`` written into ``out``: one copy. ``numpy.take``'s default ``mode="raise"`` copies into a
    temporary first whenever ``out`` is given (so that ``out`` is untouched if an index is bad): a second pass over
    every gathered byte and a fresh allocation per call. The rows are checked here instead, once per call."""
    if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= len(array)):
        raise TierlakeError(
            f"unit offsets {int(rows.min())}..{int(rows.max())} fall outside a row group of {len(array)} units: the "
            "plan does not match the file. Fix: rebuild the plan (clear plan_cache_dir) and report it if it recurs"
        )
    return np.take(array, rows, axis=0, out=out, mode="clip")
