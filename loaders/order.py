"""The global sample order: a pure function of (seed, epoch, table version, global position).

Nothing here holds state between calls. A table is a list of row groups with a number of *units* each (rows, or
packed token sequences). One epoch is laid out in three steps:

1. **Block shuffle**: the row groups are permuted by a hash of (seed, epoch, version).
2. **Windows**: consecutive runs of ``window`` shuffled row groups form a window; the units of a window are
   permuted by a hash of (seed, epoch, version, window index). A window is the whole shuffle buffer, so a reader
   holds at most the row groups of the windows its next batches touch.
3. **Ranks**: global positions are dealt out in global steps of ``world_size * batch_size``; in step ``s`` rank
   ``r`` takes positions ``[s*G + r*B, s*G + (r+1)*B)``. A rank's batches go to its workers round-robin and come
   back in batch order, so the worker count never changes what a rank sees.

Resume therefore needs one integer, the number of positions of the epoch already consumed by all ranks together
(``steps * world_size * batch_size``); the rest of the epoch is re-dealt over any new world size.

**Drop/pad rule** (per-rank lengths are equal by construction): of the ``remaining`` positions of an epoch, ranks
take ``remaining // G`` full steps with ``drop`` (the default): the last ``remaining % G`` positions of the epoch's
order are not served this epoch (fewer than one global batch; a new epoch reshuffles, so different samples fall in
the tail). With ``pad`` they take ``ceil(remaining / G)`` steps and positions past the end wrap to the start of the
epoch's order, so every sample is served at least once and at most ``G - 1`` samples twice.

The hash is SplitMix64 over numpy ``uint64`` (wrapping arithmetic), so the order does not depend on the numpy
version, the platform or Python's hash seed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt

from tierlake.errors import ConfigError, TierlakeError

IntArray = npt.NDArray[np.int64]
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_SALT_BLOCKS = 0x426C6F636B73  # "Blocks"
_SALT_WINDOW = 0x57696E646F77  # "Window"


class TailRule(Enum):
    """What happens to the positions of an epoch that do not fill a last global step."""

    DROP = "drop"
    PAD = "pad"


def tail_rule(value: TailRule | str) -> TailRule:
    """``value`` as a :class:`TailRule`; anything else is a :class:`ConfigError` naming the valid values."""
    try:
        return TailRule(value)
    except ValueError as exc:
        valid = ", ".join(repr(rule.value) for rule in TailRule)
        raise ConfigError(
            f"tail = {value!r} is invalid: the valid values are {valid}. Fix: pass tail='drop' (serve whole global "
            "batches only) or tail='pad' (wrap to the epoch's start so every sample is served)"
        ) from exc


def mix64(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64's finaliser, element-wise; wraps modulo 2**64."""
    with np.errstate(over="ignore"):
        x = values + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


@functools.lru_cache(maxsize=4096)
def derive_key(*parts: int) -> int:
    """A 64-bit key from integers (seed, epoch, version, salt, ...), order-sensitive. Cached: a batch's locate
    derives one key per window it touches, and numpy's scalar-sized hashing cost more than the lookup."""
    key = np.zeros(1, dtype=np.uint64)
    for part in parts:
        key = mix64(key ^ np.array([part & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    return int(key[0])


@functools.lru_cache(maxsize=64)
def permutation(key: int, size: int) -> IntArray:
    """A permutation of ``range(size)`` that depends only on ``key`` (argsort of hashed indices)."""
    hashed = mix64(np.arange(size, dtype=np.uint64) ^ np.uint64(key))
    perm = np.argsort(hashed, kind="stable").astype(np.int64)
    perm.setflags(write=False)
    return perm


@dataclass(frozen=True, kw_only=True)
class EpochLayout:
    """Where every unit of one epoch sits: shuffled row groups, their cumulative units, the windows."""

    key: int
    shuffle: bool
    rg_order: IntArray  # shuffled row-group indices
    rg_units: IntArray  # units of rg_order[i]
    rg_ends: IntArray  # cumulative units over rg_order (exclusive end of each)
    window_ends: IntArray  # exclusive end position of each window
    window_rgs: int

    @property
    def total(self) -> int:
        return int(self.rg_ends[-1]) if len(self.rg_ends) else 0

    def window_span(self, window: int) -> tuple[int, int]:
        start = int(self.window_ends[window - 1]) if window else 0
        return start, int(self.window_ends[window])

    def window_row_groups(self, window: int) -> IntArray:
        return self.rg_order[window * self.window_rgs : (window + 1) * self.window_rgs]


def epoch_layout(
    units: IntArray, *, seed: int, epoch: int, version: int, window: int, shuffle: bool = True
) -> EpochLayout:
    """Lay out one epoch of a table whose row group ``i`` holds ``units[i]`` units."""
    if window < 1:
        raise TierlakeError(f"window = {window} is invalid: a window holds at least 1 row group. Fix: use 1 or more")
    count = len(units)
    key = derive_key(seed, epoch, version)
    rg_order = (
        permutation(derive_key(key, _SALT_BLOCKS), count) if shuffle and count else np.arange(count, dtype=np.int64)
    )
    rg_units = np.asarray(units, dtype=np.int64)[rg_order]
    rg_ends = np.cumsum(rg_units)
    window_last = np.minimum(np.arange(window, count + window, window), count) - 1
    window_ends = rg_ends[window_last] if count else np.zeros(0, dtype=np.int64)
    return EpochLayout(
        key=key,
        shuffle=shuffle,
        rg_order=rg_order,
        rg_units=rg_units,
        rg_ends=rg_ends,
        window_ends=np.asarray(window_ends, dtype=np.int64),
        window_rgs=window,
    )


def locate(layout: EpochLayout, positions: IntArray) -> tuple[IntArray, IntArray]:
    """Global positions of the epoch -> (row-group index, unit offset inside that row group)."""
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) and (positions.min() < 0 or positions.max() >= layout.total):
        raise TierlakeError(f"positions must lie in [0, {layout.total}); got {positions.min()}..{positions.max()}")
    stream = positions.copy()
    if layout.shuffle:
        windows = np.searchsorted(layout.window_ends, positions, side="right")
        for window in np.unique(windows):
            start, end = layout.window_span(int(window))
            mask = windows == window
            perm = permutation(derive_key(layout.key, _SALT_WINDOW, int(window)), end - start)
            stream[mask] = start + perm[positions[mask] - start]
    slot = np.searchsorted(layout.rg_ends, stream, side="right")
    offsets = stream - (layout.rg_ends[slot] - layout.rg_units[slot])
    return layout.rg_order[slot], offsets


@dataclass(frozen=True, kw_only=True)
class RankSlice:
    """One rank's share of the rest of an epoch: ``batches`` batches of ``batch_size`` positions each."""

    total: int  # positions in the epoch
    start: int  # positions already consumed (by all ranks) when this slice was dealt
    world_size: int
    rank: int
    batch_size: int
    batches: int

    @property
    def step(self) -> int:
        return self.world_size * self.batch_size

    def positions(self, batch: int) -> IntArray:
        """Global positions of this rank's ``batch``-th batch (wrapped under the pad rule)."""
        if not 0 <= batch < self.batches:
            raise TierlakeError(f"batch {batch} is out of range: this rank has {self.batches} batches left")
        first = self.start + batch * self.step + self.rank * self.batch_size
        raw = np.arange(first, first + self.batch_size, dtype=np.int64)
        return raw % self.total if self.total else raw

    def batch_positions(self, first: int, last: int) -> IntArray:
        """Global positions of this rank's batches ``first .. last - 1``, one row per batch (as :meth:`positions`)."""
        if not 0 <= first <= last <= self.batches:
            raise TierlakeError(f"batches {first}..{last} are out of range: this rank has {self.batches} batches left")
        starts = self.start + np.arange(first, last, dtype=np.int64) * self.step + self.rank * self.batch_size
        raw = starts[:, None] + np.arange(self.batch_size, dtype=np.int64)[None, :]
        return raw % self.total if self.total else raw

    def consumed_after(self, batches_done: int) -> int:
        """Positions of the epoch consumed by all ranks once each rank has yielded ``batches_done`` batches."""
        return min(self.total, self.start + batches_done * self.step)


def rank_slice(
    *, total: int, start: int, world_size: int, rank: int, batch_size: int, tail: TailRule = TailRule.DROP
) -> RankSlice:
    """Deal the positions ``[start, total)`` of an epoch to ``world_size`` ranks (see the module doc)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise TierlakeError(
            f"rank {rank} of world_size {world_size} is invalid. Fix: 0 <= rank < world_size and world_size >= 1"
        )
    if batch_size < 1:
        raise TierlakeError(f"batch_size = {batch_size} is invalid. Fix: use 1 or more")
    if not 0 <= start <= total:
        raise TierlakeError(f"start = {start} is outside the epoch's {total} positions. Fix: load a matching state")
    step = world_size * batch_size
    remaining = total - start
    batches = remaining // step if tail is TailRule.DROP else -(-remaining // step)
    return RankSlice(total=total, start=start, world_size=world_size, rank=rank, batch_size=batch_size, batches=batches)


def worker_batches(slice_: RankSlice, *, worker: int, num_workers: int) -> range:
    """The batch indices a rank's worker builds (round-robin); the rank yields them back in index order."""
    if num_workers < 1 or not 0 <= worker < num_workers:
        raise TierlakeError(f"worker {worker} of {num_workers} is invalid. Fix: 0 <= worker < num_workers")
    return range(worker, slice_.batches, num_workers)
