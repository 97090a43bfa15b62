"""Worker processes that write batches into preallocated shared-memory slabs (the alternative to threads).

``SlabLoader`` has :class:`~loaders.loader.DeltaLoader`'s API, order, state and drop/pad rule; only the hand-off
differs. Before the epoch, each worker process gets ``slabs_per_worker`` slabs: one shared-memory tensor per column,
shaped like a whole batch, allocated once. Worker ``w`` builds the rank's batches ``w, w+n, ...`` straight into a free
slab of its own (``numpy.take(..., out=slab)``) and sends only ``(batch index, slab)`` to the main process, which
copies the slab into the batch it yields and gives the slab back. No tensor is pickled, and no shared-memory
segment is created per batch. Each worker owns its slabs, so a worker running ahead can never take the slab the
next batch in order needs (no deadlock). ``bench/loader.py`` measures it against the threads.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import signal
from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from loaders.batches import RowGroupStore, assemble, row_group_keys
from loaders.dataset import OrderedDataset
from loaders.loader import DeltaLoader
from loaders.order import RankSlice, worker_batches
from tierlake.errors import TierlakeError

logger = logging.getLogger(__name__)
_WAIT_S = 300.0


def _slab_worker(
    *,
    dataset: OrderedDataset,
    epoch: int,
    plan: RankSlice,
    worker: int,
    workers: int,
    slabs: list[dict[str, torch.Tensor]],
    free: Any,
    ready: Any,
) -> None:
    # A forked worker inherits the parent's Python signal handlers (an Airflow task, for one, handles SIGTERM); a
    # handler that returns would make the worker ignore the terminate() that ends it, and exit would wait forever.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle; it then ends us
    store = RowGroupStore(dataset.sources, 2 * dataset.window_row_groups + 1, io_threads=1)
    try:
        for batch in worker_batches(plan, worker=worker, num_workers=workers):
            sources, rgs, offsets = dataset.locate(epoch, plan.positions(batch))
            store.prefetch(row_group_keys(sources, rgs))
            slot = free.get()
            assemble(store, sources, rgs, offsets, out={k: v.numpy() for k, v in slabs[slot].items()})
            ready.put((batch, slot, None))
    except BaseException as exc:  # reported to the main process, which raises it with the batch index
        ready.put((-1, -1, f"{type(exc).__name__}: {exc}"))
    finally:
        store.close()


class SlabLoader(DeltaLoader):
    """``DeltaLoader`` whose workers are processes writing into shared slabs (``slabs_per_worker`` each)."""

    def __init__(self, dataset: OrderedDataset, *, slabs_per_worker: int = 2, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        if slabs_per_worker < 1:
            raise TierlakeError(f"slabs_per_worker = {slabs_per_worker} is invalid. Fix: use 1 or more")
        self.slabs_per_worker = slabs_per_worker

    def _allocate(self) -> list[dict[str, torch.Tensor]]:
        """One batch-shaped shared tensor per column and slab; shapes come from the first row group."""
        units, _ = self.dataset.sources[0].read_row_group(0)
        count = self.options.num_workers * self.slabs_per_worker
        batch = self.options.batch_size
        slabs: list[dict[str, torch.Tensor]] = []
        for _ in range(count):
            slab = {}
            for name, array in units.items():
                tensor = torch.from_numpy(np.empty((batch, *array.shape[1:]), dtype=array.dtype))
                slab[name] = tensor.share_memory_()  # type: ignore[no-untyped-call]
            slabs.append(slab)
        return slabs

    def _produce(self, epoch: int, plan: RankSlice) -> Generator[dict[str, Any], None, None]:
        if plan.batches == 0:
            return
        if self.options.num_workers == 0:  # no worker processes: build in the calling thread, as DataLoader does
            yield from super()._produce(epoch, plan)
            return
        context = mp.get_context("fork")
        workers = self.options.num_workers
        slabs = self._allocate()
        ready = context.Queue()
        frees = [context.Queue() for _ in range(workers)]
        for slot in range(len(slabs)):
            frees[slot // self.slabs_per_worker].put(slot)
        procs = [
            context.Process(
                target=_slab_worker,
                kwargs={
                    "dataset": self.dataset,
                    "epoch": epoch,
                    "plan": plan,
                    "worker": w,
                    "workers": workers,
                    "slabs": slabs,
                    "free": frees[w],
                    "ready": ready,
                },
                daemon=True,
                name=f"tierlake-slab-r{self.rank}-w{w}",
            )
            for w in range(workers)
        ]
        for proc in procs:
            proc.start()
        arrived: dict[int, int] = {}
        try:
            for batch in range(plan.batches):
                while batch not in arrived:
                    arrived.update([self._next_ready(ready, procs)])
                slot = arrived.pop(batch)
                out = {name: tensor.numpy().copy() for name, tensor in slabs[slot].items()}
                frees[slot // self.slabs_per_worker].put(slot)
                yield out
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
                proc.join(timeout=10)

    @staticmethod
    def _next_ready(ready: Any, procs: list[Any]) -> tuple[int, int]:
        try:
            batch, slot, error = ready.get(timeout=_WAIT_S)
        except queue.Empty as exc:
            alive = [p.name for p in procs if p.is_alive()]
            raise TierlakeError(
                f"no batch from the slab workers in {_WAIT_S:.0f} s (alive: {alive}). Fix: check the workers' "
                "logs; a worker killed by the OOM killer shows here as not alive"
            ) from exc
        if error is not None:
            raise TierlakeError(f"a slab worker failed: {error}")
        return batch, slot
