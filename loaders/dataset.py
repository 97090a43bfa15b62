"""Datasets over pinned Delta tables: what a position of an epoch is (which unit of which row group of which table).

:func:`delta_dataset` pins a table (``version=`` or ``timestamp=``), plans its row groups and returns a
:class:`DeltaDataset` whose order is the pure function of :mod:`loaders.order`. Datasets are cheap to pickle: they
carry the plan and options, never a client.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

from loaders.batches import RowsDecoder, TableSource
from loaders.order import EpochLayout, IntArray, epoch_layout, locate
from loaders.plan import build_plan
from loaders.recall import Recall, with_recall
from loaders.table import ArrowFileSource, FileSource, PartitionFilter, Snapshot, pin_snapshot
from tierlake.errors import SchemaMismatch, TierlakeError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class OrderOptions:
    """How an epoch is ordered: ``seed``; ``shuffle`` (off: storage order); ``window`` row groups per shuffle
    window (the in-window shuffle's bound: a reader holds about two windows of decoded row groups)."""

    seed: int = 0
    shuffle: bool = True
    window: int = 4

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**63:
            raise TierlakeError(f"seed = {self.seed} is invalid. Fix: use an integer in [0, 2**63)")
        if self.window < 1:
            raise TierlakeError(f"window = {self.window} row groups is invalid. Fix: use 1 or more")


class OrderedDataset(Protocol):
    """What the loader needs: the tables, a fingerprint for resume states, and the pure position -> unit map."""

    @property
    def sources(self) -> tuple[TableSource, ...]: ...

    @property
    def fingerprint(self) -> str: ...

    @property
    def window_row_groups(self) -> int:
        """Row groups one shuffle window spans (summed over tables): sizes the loader's row-group cache (what to
        read ahead comes from ``locate`` of the coming batches, :mod:`loaders.schedule`)."""
        ...

    def epoch_length(self, epoch: int) -> int: ...

    def locate(self, epoch: int, positions: IntArray) -> tuple[IntArray, IntArray, IntArray]: ...


class DeltaDataset:
    """One pinned table: every unit once per epoch, in the order of (seed, epoch, table version, position).
    ``storage_options`` and ``partition_filters`` are kept for a loader that follows the table's log."""

    def __init__(
        self,
        source: TableSource,
        order: OrderOptions,
        *,
        storage_options: Mapping[str, str] | None = None,
        partition_filters: Sequence[PartitionFilter] = (),
    ) -> None:
        self._source = source
        self._order = order
        self.storage_options = dict(storage_options or {})
        self.partition_filters = tuple(partition_filters)

    @property
    def sources(self) -> tuple[TableSource, ...]:
        return (self._source,)

    @property
    def order(self) -> OrderOptions:
        return self._order

    @property
    def window_row_groups(self) -> int:
        return self._order.window

    @property
    def version(self) -> int:
        return self._source.plan.snapshot.version

    @property
    def fingerprint(self) -> str:
        o = self._order
        return f"{self._source.plan.fingerprint}:seed={o.seed}:shuffle={o.shuffle}:window={o.window}"

    def __len__(self) -> int:
        return int(self._source.units.sum())

    def epoch_length(self, epoch: int) -> int:
        return len(self)

    def layout(self, epoch: int) -> EpochLayout:
        return _layout(self._source.units.tobytes(), self._order, self.version, epoch)

    def locate(self, epoch: int, positions: IntArray) -> tuple[IntArray, IntArray, IntArray]:
        rgs, offsets = locate(self.layout(epoch), positions)
        return np.zeros(len(rgs), dtype=np.int64), rgs, offsets


@functools.lru_cache(maxsize=8)
def _layout(units: bytes, order: OrderOptions, version: int, epoch: int) -> EpochLayout:
    return epoch_layout(
        np.frombuffer(units, dtype=np.int64),
        seed=order.seed,
        epoch=epoch,
        version=version,
        window=order.window,
        shuffle=order.shuffle,
    )


def select_columns(snapshot: Snapshot, columns: Sequence[str] | None) -> tuple[tuple[str, ...], dict[str, pa.DataType]]:
    """Split the requested columns into physical Parquet columns and partition columns (filled per file)."""
    names = list(columns) if columns is not None else list(snapshot.schema.names)
    unknown = [name for name in names if name not in snapshot.schema.names]
    if unknown:
        raise SchemaMismatch(
            f"columns {unknown} are not in {snapshot.table_uri} v{snapshot.version} "
            f"(it has {snapshot.schema.names}). Fix: pick columns from that list"
        )
    physical = tuple(name for name in names if name not in snapshot.partition_columns)
    partitions = {name: snapshot.schema.field(name).type for name in names if name in snapshot.partition_columns}
    return physical, partitions


def delta_dataset(
    table_uri: str | Path,
    *,
    version: int | None = None,
    timestamp: datetime | str | None = None,
    columns: Sequence[str] | None = None,
    partition_filters: Sequence[PartitionFilter] = (),
    storage_options: Mapping[str, str] | None = None,
    file_source: FileSource | None = None,
    plan_cache_dir: Path | None = None,
    order: OrderOptions | None = None,
    recall: Recall | None = None,
) -> DeltaDataset:
    """Pin ``table_uri`` and plan it; rows are the units. ``file_source`` is the seam for the edge cache;
    ``recall`` (:class:`loaders.recall.Recall`): what to do with files of the version that are on tape only."""
    snapshot = pin_snapshot(
        table_uri,
        version=version,
        timestamp=timestamp,
        storage_options=storage_options,
        partition_filters=partition_filters,
    )
    files = with_recall(snapshot, file_source or ArrowFileSource(storage_options), recall)
    physical, partitions = select_columns(snapshot, columns)
    plan = build_plan(snapshot, files, filters=partition_filters, cache_dir=plan_cache_dir)
    source = TableSource(
        plan=plan, files=files, columns=physical, decoder=RowsDecoder(tuple(partitions.items())), units=plan.rows.copy()
    )
    return DeltaDataset(
        source, order or OrderOptions(), storage_options=storage_options, partition_filters=partition_filters
    )
