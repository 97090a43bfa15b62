"""The DataLoader-style iterator: threads build batches from Arrow buffers; state is one integer per epoch.

``DeltaLoader(dataset, batch_size=..., num_workers=...)`` iterates one epoch per ``iter()`` and yields dicts of
``torch.Tensor``. Its workers are threads: pyarrow and numpy release the GIL while reading, decoding and gathering,
so a batch reaches the training loop without pickling or a copy into shared memory. At most ``prefetch_batches``
batches are in flight and ``max_cached_row_groups`` bounds the decoded row groups held (exceeded only while the
batches in flight need more), so host memory is bounded (``stats`` reports the peak). Row groups are read ahead in
the order the coming batches need them, so each is read once per rank per epoch when that budget holds the row groups
of the batches in flight plus one shuffle window (``stats.store.rereads`` counts the others; under ``tail="pad"`` the
wrap to the epoch's start may read its first row groups again).

Resume (``state_dict`` / ``load_state_dict``, StatefulDataLoader style): the state is the epoch and the number of
positions of that epoch consumed by all ranks together. Loading it under another world size, worker count or even
batch size re-deals the rest of the epoch (:mod:`loaders.order`), so nothing is lost or repeated. All ranks must
save the state after the same number of steps (what a synchronous training loop does); ``load_state_dict`` checks
that every rank loaded the same state when ``torch.distributed`` is initialised.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from loaders.batches import ArrayPool, RowGroupStore, StoreStats, assemble, row_group_keys
from loaders.dataset import OrderedDataset
from loaders.follow import Following, FollowOptions, follow_batches, follow_options
from loaders.order import RankSlice, TailRule, rank_slice, tail_rule
from loaders.schedule import ReadSchedule
from tierlake.errors import TierlakeError

logger = logging.getLogger(__name__)
STATE_FORMAT = "tierlake.loader/1"
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class LoaderOptions:
    """``batch_size`` per rank; ``num_workers`` threads; ``prefetch_batches`` in flight (the readahead bound; the
    workers gather them in groups of ``prefetch_batches // num_workers``, one copy per row group for a group);
    ``tail`` the drop/pad rule; ``max_cached_row_groups`` decoded row groups held (default: two shuffle windows
    plus one per worker). ``num_workers=0`` builds every batch in the calling thread, as torch's DataLoader does
    in the main process (no threads, no read-ahead)."""

    batch_size: int
    num_workers: int = 2
    prefetch_batches: int = 16
    tail: TailRule = TailRule.DROP
    max_cached_row_groups: int | None = None

    def __post_init__(self) -> None:
        checks = {
            "batch_size": self.batch_size >= 1,
            "prefetch_batches": self.prefetch_batches >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise TierlakeError(f"{name} = {getattr(self, name)} is invalid. Fix: use 1 or more")
        object.__setattr__(self, "tail", tail_rule(self.tail))  # a str from a config file, or a bad value
        if self.num_workers < 0:
            raise TierlakeError(
                f"num_workers = {self.num_workers} is invalid. Fix: use 0 (the calling thread) or more threads"
            )
        if self.max_cached_row_groups is not None and self.max_cached_row_groups < 1:
            raise TierlakeError(
                f"max_cached_row_groups = {self.max_cached_row_groups} is invalid. Fix: use 1 or more, or None"
            )


@dataclass
class LoaderStats:
    """Per-iteration counters: row-group reads, bytes, the peak of decoded bytes held, time waiting on data."""

    batches: int = 0
    wait_s: float = 0.0
    store: StoreStats = field(default_factory=StoreStats)


def reader_threads(workers: int, window: int, cores: int) -> int:
    """Row-group reader threads: one per row group of a shuffle window, so the first batch of a shuffled epoch
    (which needs the whole first window) waits for one read, not ``window / workers`` of them; but no more than
    the cores, since decoding is CPU-bound: on 2 cores four concurrent decodes end no sooner than two pairs, and
    each holds its decode buffers (and its allocator's thread cache) meanwhile. Never fewer than ``workers``."""
    return max(workers, min(window, cores))


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world size) from ``torch.distributed`` when initialised, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class DeltaLoader:
    """Iterates a dataset's epochs for one rank; owns the worker threads while an epoch runs. With ``follow``
    (:mod:`loaders.follow`) it serves the pinned version, then each new version of the table as it commits."""

    def __init__(
        self,
        dataset: OrderedDataset,
        *,
        batch_size: int,
        num_workers: int = 2,
        prefetch_batches: int = 16,
        tail: TailRule | str = TailRule.DROP,
        max_cached_row_groups: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        follow: FollowOptions | bool | None = None,
    ) -> None:
        self.options = LoaderOptions(
            batch_size=batch_size,
            num_workers=num_workers,
            prefetch_batches=prefetch_batches,
            tail=tail_rule(tail),
            max_cached_row_groups=max_cached_row_groups,
        )
        default_rank, default_world = distributed_rank_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.dataset = dataset
        self._epoch = 0
        self._consumed = 0
        self._running = False
        self.stats = LoaderStats()
        options = follow_options(follow)
        self._follow = None if options is None else Following(options, dataset)
        self._slice()  # validates rank / world size now rather than at the first batch

    # -- DataLoader-style surface ------------------------------------------------------------------------

    def __len__(self) -> int:
        """Batches this rank yields in the current epoch from the current state."""
        return self._slice().batches

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning at the next ``iter()`` (like ``DistributedSampler.set_epoch``)."""
        if epoch < 0:
            raise TierlakeError(f"epoch = {epoch} is invalid. Fix: use 0 or more")
        if epoch != self._epoch:
            self._epoch, self._consumed = epoch, 0

    @property
    def epoch(self) -> int:
        return self._epoch

    def state_dict(self) -> dict[str, Any]:
        """Where the epoch stands: enough to resume on any world size, worker count or batch size."""
        return {
            "format": STATE_FORMAT,
            "fingerprint": self.dataset.fingerprint,
            "epoch": self._epoch,
            "samples_consumed": self._consumed,
            "world_size": self.world_size,
            "batch_size": self.options.batch_size,
            **({"follow": self._follow.state()} if self._follow is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._running:
            raise TierlakeError("load_state_dict during an epoch is not allowed. Fix: call it before iter(loader)")
        if state.get("format") != STATE_FORMAT:
            raise TierlakeError(
                f"state format {state.get('format')!r} is not {STATE_FORMAT!r}. Fix: pass a state "
                "saved by DeltaLoader.state_dict()"
            )
        if state["fingerprint"] != self.dataset.fingerprint:
            raise TierlakeError(
                f"the state was saved for another dataset: it differs in "
                f"{fingerprint_difference(str(state['fingerprint']), self.dataset.fingerprint)}. "
                "Fix: build the dataset with the same table, version, filters and order options"
            )
        epoch, consumed = int(state["epoch"]), int(state["samples_consumed"])
        if not 0 <= consumed <= self.dataset.epoch_length(epoch):
            raise TierlakeError(f"samples_consumed = {consumed} is outside epoch {epoch}. Fix: pass a matching state")
        _check_same_state_on_all_ranks(epoch, consumed)
        if self._follow is not None:
            self._follow.load(state.get("follow"))
        self._epoch, self._consumed = epoch, consumed
        logger.info("resuming epoch %d at position %d on rank %d/%d", epoch, consumed, self.rank, self.world_size)

    def __iter__(self) -> Iterator[Batch]:
        if self._running:
            raise TierlakeError("this loader is already being iterated. Fix: finish or close the other iterator")
        if self._follow is not None:
            return follow_batches(self, self._follow)
        return self._epoch_batches()

    # -- internals -----------------------------------------------------------------------------------------

    def _slice(self) -> RankSlice:
        return rank_slice(
            total=self.dataset.epoch_length(self._epoch),
            start=self._consumed,
            world_size=self.world_size,
            rank=self.rank,
            batch_size=self.options.batch_size,
            tail=self.options.tail,
        )

    def _capacity(self) -> int:
        if self.options.max_cached_row_groups is not None:
            return self.options.max_cached_row_groups
        return 2 * self.dataset.window_row_groups + self.options.num_workers + 1

    def _group_size(self) -> int:
        """Consecutive batches one worker gathers together: the in-flight budget split over the workers."""
        workers = self.options.num_workers
        return max(1, self.options.prefetch_batches // workers) if workers else 1

    def _build(  # noqa: PLR0917 - submitted to the worker pool positionally
        self,
        store: RowGroupStore,
        schedule: ReadSchedule,
        epoch: int,
        plan: RankSlice,
        first: int,
        count: int,
        *,
        buffers: ArrayPool | None = None,
    ) -> dict[str, Any]:
        """On a worker thread (or the caller's, with no workers): batches ``first .. first + count - 1`` gathered
        into one array per column (``count * batch_size`` rows; the caller hands out slices). One copy per row
        group and column for the whole group: the per-batch numpy and locking costs are paid once per group."""
        placed = []
        for batch in range(first, first + count):
            places = schedule.places(batch)  # located with its chunk ahead of time: not located twice
            placed.append(places if places is not None else self.dataset.locate(epoch, plan.positions(batch)))
        if count == 1:
            sources, rgs, offsets = placed[0]
        else:
            sources, rgs, offsets = (np.concatenate(parts) for parts in zip(*placed, strict=True))
        keys = row_group_keys(sources, rgs)
        store.prefetch(keys)
        try:
            return assemble(store, sources, rgs, offsets, pool=buffers)
        finally:
            for batch in range(first, first + count):
                schedule.finish(batch, keys)
            store.release(keys)

    def _produce(self, epoch: int, plan: RankSlice) -> Generator[dict[str, Any], None, None]:
        """This rank's batches of ``plan`` as numpy arrays, in batch order (threads; subclasses may differ).

        The schedule reads ahead the row groups of the coming batches in the order they are needed, as far as the
        row-group budget allows, so each is read once per epoch (:mod:`loaders.schedule`). Workers gather groups of
        ``prefetch_batches // num_workers`` consecutive batches; a batch is a slice of its group's arrays.
        """
        workers = self.options.num_workers
        schedule = ReadSchedule(self.dataset, epoch, plan, keys=self._capacity())
        cores = os.cpu_count() or 1
        readers = reader_threads(workers, self.dataset.window_row_groups, cores) if workers else 0
        # Readers that fill the cores decode in their own thread: Arrow's pool would add a hand-off per column.
        store = RowGroupStore(
            self.dataset.sources, self._capacity(), io_threads=readers, needs=schedule, arrow_threads=readers < cores
        )
        self.stats.store = store.stats
        # Gathered arrays: the groups in flight, the one being handed out and those the trainer still holds.
        buffers = ArrayPool(4 * (self.options.prefetch_batches + workers))
        if not workers:
            try:
                for batch in range(plan.batches):
                    schedule.take(batch)
                    yield self._build(store, schedule, epoch, plan, batch, 1, buffers=buffers)
            finally:
                store.close()
            return
        yield from self._produce_threaded(epoch, plan, schedule, store, buffers)

    def _produce_threaded(
        self, epoch: int, plan: RankSlice, schedule: ReadSchedule, store: RowGroupStore, buffers: ArrayPool
    ) -> Generator[dict[str, Any], None, None]:
        """:meth:`_produce` with worker threads, each gathering a group of consecutive batches."""
        workers = self.options.num_workers
        group = self._group_size()
        # A group pins the row groups of all its batches until it is gathered: it stays within the budget's share
        # of one worker, or within what its first batch alone needs.
        capacity = self._capacity()
        row_groups = max(1, capacity // workers)
        pool = ThreadPoolExecutor(workers, thread_name_prefix=f"tierlake-loader-r{self.rank}")
        pending: deque[tuple[int, Future[dict[str, Any]]]] = deque()
        in_flight = submitted = 0
        first = True
        try:
            while pending or submitted < plan.batches:
                while submitted < plan.batches and in_flight < self.options.prefetch_batches:
                    most = min(group, plan.batches - submitted, self.options.prefetch_batches - in_flight)
                    # The first group needs no row group beyond the first batch's: batch 0 waits for no other.
                    count = schedule.group_end(submitted, most, row_groups if submitted else 0) - submitted
                    if pending and schedule.pinned_with(submitted + count) > capacity:
                        break  # the row groups of the batches in flight would exceed the budget: wait for one
                    for batch in range(submitted, submitted + count):
                        schedule.take(batch)
                    future = pool.submit(self._build, store, schedule, epoch, plan, submitted, count, buffers=buffers)
                    pending.append((count, future))
                    submitted += count
                    in_flight += count
                # Read-ahead beyond the batches in flight starts once the first batch is out: before, its reads
                # took the cores that the first batch's own row groups need (in storage order the first batch
                # needs one row group, and waited for every row group the store had room for).
                if not first:
                    store.prefetch(schedule.upcoming())
                count, future = pending.popleft()
                arrays = future.result()
                in_flight -= count
                if first:
                    first = False
                    store.prefetch(schedule.upcoming())
                yield from self._sliced(arrays, count)
        finally:
            for _, future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            store.close()

    def _sliced(self, arrays: dict[str, Any], count: int) -> Iterator[dict[str, Any]]:
        """The ``count`` batches of a gathered group, each a slice of the group's arrays."""
        size = self.options.batch_size
        for k in range(count):
            yield {name: array[k * size : (k + 1) * size] for name, array in arrays.items()}

    def _epoch_batches(self) -> Iterator[Batch]:
        self._running = True
        epoch, plan = self._epoch, self._slice()
        self.stats = LoaderStats()
        produced = self._produce(epoch, plan)
        done = 0
        try:
            while done < plan.batches:
                waited = time.perf_counter()
                arrays = next(produced)
                self.stats.wait_s += time.perf_counter() - waited
                done += 1
                self.stats.batches = done
                self._consumed = plan.consumed_after(done)
                if done == plan.batches:  # the epoch is complete once its last batch is out
                    self._epoch, self._consumed = epoch + 1, 0
                yield {name: torch.from_numpy(array) for name, array in arrays.items()}
            if plan.batches == 0 and self._epoch == epoch:
                self._epoch, self._consumed = epoch + 1, 0
        finally:
            produced.close()
            self._running = False
            logger.debug("epoch %d on rank %d: %s", epoch, self.rank, asdict(self.stats))


def fingerprint_difference(saved: str, current: str) -> str:
    """The parts of two dataset fingerprints that differ, e.g. ``seed: saved 1, now 2``.

    Fingerprints are ``name=value`` parts joined by ``:`` (:func:`loaders.plan.plan_fingerprint`); one that is not
    (a mixture's hash) is compared whole.
    """

    def parts(fingerprint: str) -> dict[str, str] | None:
        pairs = [part.partition("=") for part in fingerprint.split(":")]
        return None if any(not sep for _, sep, _ in pairs) else {name: value for name, _, value in pairs}

    old, new = parts(saved), parts(current)
    if old is None or new is None:
        return f"the whole fingerprint (saved {saved!r}, now {current!r})"
    names = [name for name in {**old, **new} if old.get(name) != new.get(name)]
    return "; ".join(f"{name}: saved {old.get(name, '(none)')}, now {new.get(name, '(none)')}" for name in names)


def _check_same_state_on_all_ranks(epoch: int, consumed: int) -> None:
    """Fail loudly (instead of hanging at the epoch's end) when ranks resume from different states."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    states: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, (epoch, consumed))
    if len(set(states)) != 1:
        raise TierlakeError(
            f"ranks loaded different loader states {states} (epoch, samples_consumed). Fix: save the state on all "
            "ranks after the same step, or load rank 0's state everywhere"
        )
