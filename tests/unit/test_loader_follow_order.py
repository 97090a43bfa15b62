"""Properties of the order of a followed table's new data (loaders.follow_order): every unit once, appending
versions never reorders what was laid out, empty versions change nothing, and a cursor resumes the same stream."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loaders.follow_order import VersionUnits, consumed_segments, locate_stream, stream_layout
from tierlake.errors import TierlakeError

# Each version adds 0..3 row groups of 1..30 units (0 row groups: a compaction or a property change).
version_lists = st.lists(st.lists(st.integers(1, 30), min_size=0, max_size=3), min_size=0, max_size=14)


def as_versions(units: list[list[int]], first: int = 5) -> list[VersionUnits]:
    return [VersionUnits(version=first + i, units=np.asarray(u, dtype=np.int64)) for i, u in enumerate(units)]


def served(versions: list[VersionUnits], *, seed: int, window: int) -> list[tuple[int, int, int]]:
    """(version, row group, offset) of every laid-out position, in order."""
    stream = stream_layout(versions, seed=seed, window=window)
    slots, rgs, offsets = locate_stream(stream, np.arange(stream.total, dtype=np.int64))
    return [(versions[s].version, r, o) for s, r, o in zip(slots.tolist(), rgs.tolist(), offsets.tolist(), strict=True)]


@settings(max_examples=150, deadline=None)
@given(units=version_lists, seed=st.integers(0, 2**40), window=st.integers(1, 5))
def test_closed_segments_serve_every_unit_once_and_an_open_one_nothing(
    units: list[list[int]], seed: int, window: int
) -> None:
    versions = as_versions(units)
    stream = stream_layout(versions, seed=seed, window=window)
    order = served(versions, seed=seed, window=window)
    closed = versions[: stream.open_from]
    assert sorted(order) == sorted(
        (v.version, rg, off) for v in closed for rg, n in enumerate(v.units) for off in range(n)
    )
    assert sum(len(v.units) for v in versions[stream.open_from :]) < window  # the open segment is below the window
    assert all(len(segment.rg_of) >= window for segment in stream.segments)  # the shuffle spans a window
    if window == 1:  # each version with data is served as soon as it is seen
        assert stream.open_from == len(versions) or all(len(v.units) == 0 for v in versions[stream.open_from :])


@settings(max_examples=150, deadline=None)
@given(units=version_lists, more=version_lists, seed=st.integers(0, 2**40), window=st.integers(1, 5))
def test_appending_versions_never_reorders_what_was_laid_out(
    units: list[list[int]], more: list[list[int]], seed: int, window: int
) -> None:
    before = served(as_versions(units), seed=seed, window=window)
    after = served(as_versions(units + more), seed=seed, window=window)
    assert after[: len(before)] == before


@settings(max_examples=100, deadline=None)
@given(units=version_lists, seed=st.integers(0, 2**40), window=st.integers(1, 5), data=st.data())
def test_a_cursor_resumes_exactly_the_rest_of_the_stream(
    units: list[list[int]], seed: int, window: int, data: st.DataObject
) -> None:
    versions = as_versions(units)
    whole = served(versions, seed=seed, window=window)
    offset = data.draw(st.integers(0, len(whole)))
    stream = stream_layout(versions, seed=seed, window=window)
    done = consumed_segments(stream, offset)
    rest_from, rest_offset = 0, offset
    if done:  # what the loader's cursor does: drop the segments served, keep the offset into the next one
        last = stream.segments[done - 1]
        rest_from, rest_offset = last.last_slot + 1, offset - int(stream.starts[done - 1]) - last.layout.total
    resumed = served(versions[rest_from:], seed=seed, window=window)
    assert resumed[rest_offset:] == whole[offset:]


@settings(max_examples=100, deadline=None)
@given(units=version_lists, seed=st.integers(0, 2**40), window=st.integers(1, 5))
def test_versions_without_data_never_close_a_segment(units: list[list[int]], seed: int, window: int) -> None:
    """A compaction between appends leaves the cut of segments, and so what each position holds up to the
    version numbers, as it was."""
    with_data = [u for u in units if u]
    padded = [x for u in with_data for x in ([], u)]  # an empty version before each append
    plain = stream_layout(as_versions(with_data), seed=seed, window=window)
    spaced = stream_layout(as_versions(padded), seed=seed, window=window)
    assert [len(s.rg_of) for s in plain.segments] == [len(s.rg_of) for s in spaced.segments]
    assert plain.total == spaced.total


def test_the_seed_changes_the_order_and_the_same_seed_repeats_it() -> None:
    versions = as_versions([[30, 30], [30], [30, 30, 30]])
    first = served(versions, seed=1, window=2)
    assert first == served(versions, seed=1, window=2)
    assert first != served(versions, seed=2, window=2)


def test_versions_that_skip_one_are_refused() -> None:
    gap = [VersionUnits(version=3, units=np.array([4])), VersionUnits(version=5, units=np.array([4]))]
    with pytest.raises(TierlakeError, match="3 is followed by 5"):
        stream_layout(gap, seed=0, window=1)
