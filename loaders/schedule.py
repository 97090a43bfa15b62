"""Which row groups a rank's coming batches need, and when: drives the row-group store's read-ahead and eviction.

The order of an epoch is a pure function (:mod:`loaders.order`), so before reading anything the loader knows which
row groups each of its coming batches touches. :class:`ReadSchedule` locates batches ahead of the ones handed to the
workers (until it has seen as many distinct row groups as the store may hold, or ``max_ahead`` batches) and answers,
for any row group, the first unfinished batch that needs it. The store then reads ahead in that order while it has
room and, when full, evicts the row group needed last (Belady's rule), never one a batch being built still needs.
So a row group is read once per rank per epoch whenever the budget holds the row groups of the batches in flight
plus the ones read ahead; only a smaller budget, or the ``pad`` tail wrapping to the epoch's start, reads one again.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from loaders.dataset import OrderedDataset
from loaders.order import IntArray, RankSlice

Key = tuple[int, int]  # (source, row group)
NEVER = 1 << 62  # the next use of a row group no located batch needs
_CHUNK = 64  # batches located per call to the dataset's locate


class ReadSchedule:
    """The row-group uses of one rank's epoch, located ``max_ahead`` batches ahead at most; thread-safe."""

    def __init__(self, dataset: OrderedDataset, epoch: int, plan: RankSlice, *, keys: int, max_ahead: int = 4096):
        self._dataset = dataset
        self._epoch = epoch
        self._plan = plan
        self._key_limit = max(1, keys)
        self._max_ahead = max(1, max_ahead)
        self._uses: dict[Key, deque[int]] = {}  # located, unfinished batches that need the row group, ascending
        self._located = 0
        self._submitted = 0
        self._lock = threading.Lock()
        # Where each located batch's units are (sources, row groups, offsets; one row per batch), per chunk of
        # _CHUNK batches, with the batches not yet asked for: a worker takes them instead of locating again.
        self._places: dict[int, tuple[IntArray, IntArray, IntArray, int]] = {}
        self._batch_keys: dict[int, list[Key]] = {}  # the row groups of each located, unfinished batch

    def take(self, batch: int) -> None:
        """``batch`` is handed to a worker: locate far enough ahead of it."""
        with self._lock:
            self._submitted = max(self._submitted, batch + 1)
            self._locate_ahead()

    def pinned_with(self, end: int) -> int:
        """How many row groups the store must keep if the batches before ``end`` are in flight (located ones)."""
        with self._lock:
            while self._located < min(end, self._plan.batches):
                self._locate_chunk()
            return sum(1 for uses in self._uses.values() if uses and uses[0] < end)

    def _locate_ahead(self) -> None:
        while self._located < min(self._submitted, self._plan.batches):
            self._locate_chunk()
        # The horizon grows by at most two chunks per batch taken (faster than batches are taken), so the
        # first batch does not wait for the whole horizon to be located.
        for _ in range(2):
            if self._located >= min(self._plan.batches, self._submitted + self._max_ahead):
                break
            if len(self._uses) >= self._key_limit:
                break
            self._locate_chunk()

    def _locate_chunk(self) -> None:
        first = self._located
        last = min(self._plan.batches, first + _CHUNK)
        positions = self._plan.batch_positions(first, last)
        sources, rgs, offsets = self._dataset.locate(self._epoch, positions.reshape(-1))
        size = self._plan.batch_size
        self._places[first] = (
            sources.reshape(-1, size),
            rgs.reshape(-1, size),
            offsets.reshape(-1, size),
            last - first,
        )
        batches = np.repeat(np.arange(first, last, dtype=np.int64), self._plan.batch_size)
        # One (batch, source, row group) triple per use, sorted by batch: one unique over the chunk, of one int64
        # per triple (a row-wise unique sorts void records: it had cost the first batch more CPU than a read).
        rg_span = int(rgs.max()) + 1 if len(rgs) else 1
        source_span = int(sources.max()) + 1 if len(sources) else 1
        codes = np.unique(((batches - first) * source_span + sources) * rg_span + rgs)
        batch_of, rest = np.divmod(codes, source_span * rg_span)
        source_of, rg_of = np.divmod(rest, rg_span)
        for batch, source, rg in zip((batch_of + first).tolist(), source_of.tolist(), rg_of.tolist(), strict=True):
            self._uses.setdefault((source, rg), deque()).append(batch)
            self._batch_keys.setdefault(batch, []).append((source, rg))
        self._located = last

    def places(self, batch: int) -> tuple[IntArray, IntArray, IntArray] | None:
        """Where ``batch``'s units are (as the dataset's ``locate``), located already with its chunk; None when it
        was not located here. Each batch is asked for once: a chunk is dropped when all of its batches were."""
        with self._lock:
            first = batch - batch % _CHUNK
            found = self._places.get(first)
            if found is None or not 0 <= batch - first < len(found[0]):
                return None
            sources, rgs, offsets, left = found
            if left <= 1:
                del self._places[first]
            else:
                self._places[first] = (sources, rgs, offsets, left - 1)
            row = batch - first
            return sources[row], rgs[row], offsets[row]

    def group_end(self, first: int, most: int, row_groups: int) -> int:
        """The end of a group of consecutive batches from ``first`` (at most ``most``) that one worker gathers at
        once: it grows while the group needs at most ``row_groups`` row groups, or no more than ``first`` alone.
        The batches considered are located first."""
        with self._lock:
            while self._located < min(first + most, self._plan.batches):
                self._locate_chunk()
            union = set(self._batch_keys.get(first, ()))
            limit = max(row_groups, len(union))
            end = first + 1
            while end < first + most and end in self._batch_keys:
                union.update(self._batch_keys[end])
                if len(union) > limit:
                    break
                end += 1
            return end

    def finish(self, batch: int, keys: list[Key]) -> None:
        """``batch`` has been gathered: it no longer needs ``keys``."""
        with self._lock:
            self._batch_keys.pop(batch, None)
            for key in keys:
                uses = self._uses.get(key)
                if uses is None:
                    continue
                if batch in uses:
                    uses.remove(batch)
                if not uses:
                    del self._uses[key]

    def next_use(self, key: Key) -> int:
        """The first unfinished located batch that needs ``key`` (``NEVER`` when none)."""
        with self._lock:
            uses = self._uses.get(key)
            return uses[0] if uses else NEVER

    def spent(self, key: Key) -> bool:
        """Whether no batch left in this epoch needs ``key``: every batch is located and none unfinished needs it."""
        with self._lock:
            return self._located >= self._plan.batches and not self._uses.get(key)

    def in_flight(self, key: Key) -> bool:
        """Whether a batch already handed to a worker still needs ``key`` (the store must keep it)."""
        with self._lock:
            uses = self._uses.get(key)
            return uses is not None and len(uses) > 0 and uses[0] < self._submitted

    def upcoming(self) -> list[Key]:
        """The row groups the located batches need, in the order they are first needed."""
        with self._lock:
            return sorted(self._uses, key=lambda key: self._uses[key][0])
