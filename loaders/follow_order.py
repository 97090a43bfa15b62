"""The order of a followed table's new data: a pure function of (seed, the versions seen, position).

When a loader follows a live table (:mod:`loaders.follow`), every Delta version after the pinned one brings zero or
more row groups (compactions and other ``dataChange: false`` commits bring none). The versions are cut, in commit
order, into **segments**: a segment starts right after the previous one and closes at the end of the first version
at which it holds at least ``window`` row groups. A version whose segment is still open is not served yet: the
shuffle window is bounded by ``window`` row groups (plus the row groups of the version that closes it), and
``window=1`` serves each version with data as soon as it commits.

A closed segment is laid out like one epoch of a small table (:func:`loaders.order.epoch_layout`): its row groups
are block-shuffled and their units permuted within windows of ``window`` row groups, keyed by a hash of (seed,
first version, last version). Positions run over the closed segments in order. So:

- appending versions never changes the order of positions already laid out (what a rank served stays served);
- versions that bring no row group never close a segment or shift a position;
- a cursor ``(version, offset)``, where ``version`` starts a segment, names every later position: resuming from it
  lays out the same segments from that version on, whatever came before.

Nothing here holds state between calls.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from loaders.order import EpochLayout, IntArray, derive_key, epoch_layout, locate
from tierlake.errors import TierlakeError

_SALT_FOLLOW = 0x466F6C6C6F77  # "Follow"


@dataclass(frozen=True, kw_only=True)
class VersionUnits:
    """One committed version: its number and the units of each row group it added with ``dataChange: true``."""

    version: int
    units: IntArray


@dataclass(frozen=True, kw_only=True)
class Segment:
    """Versions ``versions[first_slot .. last_slot]`` (inclusive), laid out as one shuffle unit."""

    first_slot: int
    last_slot: int
    first_version: int
    last_version: int
    slot_of: IntArray  # per row group of the segment (in commit order): index into the versions
    rg_of: IntArray  # per row group of the segment: its index inside that version
    layout: EpochLayout


@dataclass(frozen=True, kw_only=True)
class StreamLayout:
    """The closed segments of a run of versions and where each starts in the position stream."""

    segments: tuple[Segment, ...]
    starts: IntArray  # first position of each segment
    total: int  # positions laid out (the units of the closed segments)
    open_from: int  # slot of the first version of the segment still open (len(versions) when none)

    def next_segment_version(self, versions: Sequence[VersionUnits], start_version: int) -> int:
        """The version the next segment starts at (the first one not in a closed segment)."""
        if self.open_from < len(versions):
            return versions[self.open_from].version
        return versions[-1].version + 1 if versions else start_version


def stream_layout(versions: Sequence[VersionUnits], *, seed: int, window: int, shuffle: bool = True) -> StreamLayout:
    """Cut ``versions`` (consecutive, the first one starting a segment) into closed segments and lay each out."""
    if window < 1:
        raise TierlakeError(f"window = {window} row groups is invalid. Fix: use 1 or more")
    for before, after in itertools.pairwise(versions):
        if after.version != before.version + 1:
            raise TierlakeError(
                f"versions must be consecutive: {before.version} is followed by {after.version}. Fix: pass every "
                "version from the cursor on, including those that added no data"
            )
    segments: list[Segment] = []
    starts: list[int] = []
    position, first, held = 0, 0, 0
    for slot, entry in enumerate(versions):
        held += len(entry.units)
        if held < window:
            continue
        segment = _segment(versions, first, slot, seed=seed, window=window, shuffle=shuffle)
        segments.append(segment)
        starts.append(position)
        position += segment.layout.total
        first, held = slot + 1, 0
    return StreamLayout(
        segments=tuple(segments), starts=np.asarray(starts, dtype=np.int64), total=position, open_from=first
    )


def _segment(
    versions: Sequence[VersionUnits], first: int, last: int, *, seed: int, window: int, shuffle: bool
) -> Segment:
    chosen = versions[first : last + 1]
    slot_of = np.concatenate([np.full(len(v.units), first + i, dtype=np.int64) for i, v in enumerate(chosen)])
    rg_of = np.concatenate([np.arange(len(v.units), dtype=np.int64) for v in chosen])
    units = np.concatenate([np.asarray(v.units, dtype=np.int64) for v in chosen])
    layout = epoch_layout(
        units,
        seed=derive_key(seed, _SALT_FOLLOW),
        epoch=chosen[0].version,
        version=chosen[-1].version,
        window=window,
        shuffle=shuffle,
    )
    return Segment(
        first_slot=first,
        last_slot=last,
        first_version=chosen[0].version,
        last_version=chosen[-1].version,
        slot_of=slot_of,
        rg_of=rg_of,
        layout=layout,
    )


def locate_stream(stream: StreamLayout, positions: IntArray) -> tuple[IntArray, IntArray, IntArray]:
    """Positions of the stream -> (version slot, row group inside that version, unit offset inside the row group)."""
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) and (positions.min() < 0 or positions.max() >= stream.total):
        raise TierlakeError(
            f"positions must lie in [0, {stream.total}) (the closed segments); got {positions.min()}..{positions.max()}"
        )
    slots = np.empty(len(positions), dtype=np.int64)
    rgs = np.empty(len(positions), dtype=np.int64)
    offsets = np.empty(len(positions), dtype=np.int64)
    which = np.searchsorted(stream.starts, positions, side="right") - 1
    for index in np.unique(which):
        segment = stream.segments[int(index)]
        mask = which == index
        local_rgs, local_offsets = locate(segment.layout, positions[mask] - stream.starts[index])
        slots[mask] = segment.slot_of[local_rgs]
        rgs[mask] = segment.rg_of[local_rgs]
        offsets[mask] = local_offsets
    return slots, rgs, offsets


def consumed_segments(stream: StreamLayout, offset: int) -> int:
    """How many whole segments the first ``offset`` positions cover (they can be dropped from the cursor)."""
    ends = stream.starts + np.asarray([s.layout.total for s in stream.segments], dtype=np.int64)
    return int(np.searchsorted(ends, offset, side="right"))
