"""S3-FIFO and LRU as pure state machines: bounds, protection, scan resistance; entry ids and block maths."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierlake.config.cache import CacheOptions
from tiers.cache.core import WHOLE, block_span, blocks_for, entry_id
from tiers.cache.policy import LRU, S3FIFO, Queue, scan_heavy_trace, simulate
from tiers.store import ObjectInfo

requests = st.lists(st.tuples(st.integers(0, 40), st.integers(1, 50)), min_size=1, max_size=300)


@given(requests, st.integers(50, 400), st.sets(st.integers(0, 40), max_size=5))
@settings(max_examples=200, deadline=None)
def test_s3fifo_stays_within_capacity_and_never_evicts_protected(
    trace: list[tuple[int, int]], capacity: int, protected: set[int]
) -> None:
    policy = S3FIFO(capacity)
    sizes: dict[str, int] = {}
    for number, size in trace:
        key = f"k{number}"
        if key in policy:
            policy.access(key)
            continue
        victims = policy.evict(size, lambda k: int(k[1:]) not in protected)
        assert not {int(v[1:]) for v in victims} & protected
        assert all(v not in policy for v in victims)
        if policy.used + size <= capacity:
            policy.insert(key, size)
            sizes[key] = size
        resident = [n.key for n in policy.nodes()]
        assert len(resident) == len(set(resident))
        assert policy.used == sum(sizes[k] for k in resident)
        assert policy.used <= capacity


def test_a_key_in_the_ghost_queue_goes_straight_to_main() -> None:
    policy = S3FIFO(100, small_fraction=0.1)
    policy.insert("a", 60)
    policy.insert("b", 50)
    assert policy.evict(0) == ["a"]  # used 110 > 100: "a" was never re-read, it leaves S for the ghost queue
    policy.insert("a", 10)
    assert [n.queue for n in policy.nodes() if n.key == "a"] == [Queue.MAIN]


def test_a_re_read_small_entry_is_promoted_not_evicted() -> None:
    policy = S3FIFO(100)
    policy.insert("hot", 40)
    policy.access("hot")
    policy.insert("cold", 40)
    assert policy.evict(40) == ["cold"]
    assert "hot" in policy


def test_lru_evicts_least_recently_used() -> None:
    policy = LRU(100)
    for key in "abc":
        policy.insert(key, 30)
    policy.access("a")
    assert policy.evict(30) == ["b"]


def test_s3fifo_beats_lru_on_a_scan_heavy_trace() -> None:
    trace = scan_heavy_trace(hot_keys=50, scan_keys=200, rounds=20, size=1)
    s3fifo, lru = simulate(S3FIFO(100), trace), simulate(LRU(100), trace)
    assert s3fifo.hit_ratio > lru.hit_ratio + 0.05
    assert lru.requests == s3fifo.requests == len(trace)


def test_policy_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="capacity"):
        S3FIFO(0)
    with pytest.raises(ValueError, match="small_fraction"):
        S3FIFO(10, small_fraction=1.5)


fields = st.text(min_size=0, max_size=12)


@given(st.tuples(fields, fields, fields, st.integers(0, 9), st.integers(-1, 3)), st.data())
def test_entry_ids_differ_whenever_any_field_differs(
    first: tuple[str, str, str, int, int], data: st.DataObject
) -> None:
    second = data.draw(st.tuples(fields, fields, fields, st.integers(0, 9), st.integers(-1, 3)))

    def make(t: tuple[str, str, str, int, int]) -> str:
        return entry_id(ObjectInfo(bucket=t[0], key=t[1], etag=t[2], size=t[3]), t[4])

    assert (make(first) == make(second)) == (first == second)


def test_entry_id_separates_fields_without_ambiguity() -> None:
    a = entry_id(ObjectInfo(bucket="ab", key="c", etag="e", size=1))
    b = entry_id(ObjectInfo(bucket="a", key="bc", etag="e", size=1))
    assert a != b


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(1, 999))
def test_blocks_cover_exactly_the_range(start: int, length: int, block_bytes: int) -> None:
    end = start + length
    info = ObjectInfo(bucket="b", key="k", etag="e", size=end + 5)
    covered = [block_span(info, b, block_bytes) for b in blocks_for(start, end, block_bytes)]
    if length == 0:
        assert covered == []
        return
    assert covered[0][0] <= start < covered[0][1]
    assert covered[-1][0] < end <= covered[-1][1]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
    assert block_span(info, WHOLE, block_bytes) == (0, end + 5)


def test_cache_options_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match=r"max_bytes = 0 .*Fix"):
        CacheOptions(directory=Path("cache"), max_bytes=0)
