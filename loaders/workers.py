"""The same batches through a plain ``torch.utils.data.DataLoader`` with worker processes.

:class:`DeltaLoader` (threads) is the fast path. :class:`DeltaIterableDataset` exists for code that must hand a
``Dataset`` to ``torch.utils.data.DataLoader(ds, batch_size=None, num_workers=n)``: each worker process builds the
rank's batches ``w, w+n, w+2n, ...`` and the DataLoader returns them round-robin, i.e. in batch order, so the
samples are exactly those of ``DeltaLoader`` with the same arguments. The price is the DataLoader's per-batch
hand-off (tensor into shared memory, file descriptor, unpickle); ``bench/loader.py`` measures both.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from loaders.batches import RowGroupStore, assemble
from loaders.dataset import OrderedDataset
from loaders.loader import Batch
from loaders.order import TailRule, rank_slice, worker_batches


class DeltaIterableDataset(IterableDataset[Batch]):
    """One epoch of one rank from ``start`` (a ``samples_consumed`` of a loader state), pre-batched."""

    def __init__(
        self,
        dataset: OrderedDataset,
        *,
        batch_size: int,
        epoch: int = 0,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
        tail: TailRule = TailRule.DROP,
        max_cached_row_groups: int = 8,
    ) -> None:
        self.dataset = dataset
        self.epoch = epoch
        self.slice = rank_slice(
            total=dataset.epoch_length(epoch),
            start=start,
            world_size=world_size,
            rank=rank,
            batch_size=batch_size,
            tail=tail,
        )
        self.max_cached_row_groups = max_cached_row_groups

    def __len__(self) -> int:
        return self.slice.batches

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        store = RowGroupStore(self.dataset.sources, self.max_cached_row_groups)
        for batch in worker_batches(self.slice, worker=worker, num_workers=workers):
            sources, rgs, offsets = self.dataset.locate(self.epoch, self.slice.positions(batch))
            arrays = assemble(store, sources, rgs, offsets)
            yield {name: torch.from_numpy(array) for name, array in arrays.items()}
