"""Properties of the pure order: bijection per epoch, ranks x workers exactly once, drop/pad, elastic resume."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from loaders.order import (
    IntArray,
    TailRule,
    derive_key,
    epoch_layout,
    locate,
    permutation,
    rank_slice,
    worker_batches,
)
from tierlake.errors import TierlakeError

units_lists = st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=25)


def served(total: int, start: int, world: int, batch: int, *, workers: int, tail: TailRule) -> IntArray:
    """Every position served by every rank's every worker, from ``start`` to the end of the epoch."""
    out: list[IntArray] = []
    for rank in range(world):
        part = rank_slice(total=total, start=start, world_size=world, rank=rank, batch_size=batch, tail=tail)
        for worker in range(workers):
            out.extend(part.positions(b) for b in worker_batches(part, worker=worker, num_workers=workers))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


@settings(max_examples=150, deadline=None)
@given(
    units=units_lists,
    seed=st.integers(0, 2**40),
    epoch=st.integers(0, 50),
    window=st.integers(1, 6),
    shuffle=st.booleans(),
)
def test_an_epoch_visits_every_unit_exactly_once(
    units: list[int], seed: int, epoch: int, window: int, shuffle: bool
) -> None:
    layout = epoch_layout(np.array(units), seed=seed, epoch=epoch, version=3, window=window, shuffle=shuffle)
    rgs, offsets = locate(layout, np.arange(sum(units)))
    pairs = set(zip(rgs.tolist(), offsets.tolist(), strict=True))
    assert pairs == {(rg, off) for rg, count in enumerate(units) for off in range(count)}


@settings(max_examples=100, deadline=None)
@given(units=units_lists, seed=st.integers(0, 2**40), epoch=st.integers(0, 5), window=st.integers(1, 6))
def test_same_seed_gives_the_same_order_and_positions_are_independent(
    units: list[int], seed: int, epoch: int, window: int
) -> None:
    total = sum(units)
    first = epoch_layout(np.array(units), seed=seed, epoch=epoch, version=7, window=window)
    again = epoch_layout(np.array(units), seed=seed, epoch=epoch, version=7, window=window)
    whole = locate(first, np.arange(total))
    assert all(np.array_equal(a, b) for a, b in zip(whole, locate(again, np.arange(total)), strict=True))
    # A position's unit does not depend on which other positions are asked for (pure per position).
    probe = np.arange(total)[::-1][: max(1, total // 3)]
    alone = locate(first, probe)
    assert np.array_equal(alone[0], whole[0][probe])
    assert np.array_equal(alone[1], whole[1][probe])


def test_seed_epoch_and_version_each_change_the_order() -> None:
    units = np.full(20, 50)
    base = locate(epoch_layout(units, seed=1, epoch=0, version=1, window=4), np.arange(1000))[1]
    for kwargs in (
        {"seed": 2, "epoch": 0, "version": 1},
        {"seed": 1, "epoch": 1, "version": 1},
        {"seed": 1, "epoch": 0, "version": 2},
    ):
        other = locate(epoch_layout(units, window=4, shuffle=True, **kwargs), np.arange(1000))[1]
        assert not np.array_equal(base, other), kwargs


def test_window_bounds_the_shuffle() -> None:
    units = np.full(12, 10)
    layout = epoch_layout(units, seed=5, epoch=0, version=0, window=3)
    rgs, _ = locate(layout, np.arange(120))
    for window in range(4):
        allowed = set(layout.window_row_groups(window).tolist())
        assert set(rgs[window * 30 : (window + 1) * 30].tolist()) == allowed


def test_unshuffled_order_is_storage_order() -> None:
    layout = epoch_layout(np.array([3, 2]), seed=9, epoch=4, version=1, window=2, shuffle=False)
    rgs, offsets = locate(layout, np.arange(5))
    assert rgs.tolist() == [0, 0, 0, 1, 1]
    assert offsets.tolist() == [0, 1, 2, 0, 1]


@settings(max_examples=200, deadline=None)
@given(total=st.integers(0, 500), world=st.integers(1, 6), batch=st.integers(1, 9), workers=st.integers(1, 4))
def test_drop_rule_serves_each_position_once_and_ranks_get_equal_lengths(
    total: int, world: int, batch: int, workers: int
) -> None:
    positions = served(total, 0, world, batch, workers=workers, tail=TailRule.DROP)
    step = world * batch
    assert len(positions) == len(set(positions.tolist()))
    assert set(positions.tolist()) == set(range(total - total % step))
    lengths = {
        rank_slice(total=total, start=0, world_size=world, rank=r, batch_size=batch).batches for r in range(world)
    }
    assert len(lengths) == 1


@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 500), world=st.integers(1, 6), batch=st.integers(1, 9), workers=st.integers(1, 4))
def test_pad_rule_serves_every_position_and_repeats_less_than_a_global_batch(
    total: int, world: int, batch: int, workers: int
) -> None:
    positions = served(total, 0, world, batch, workers=workers, tail=TailRule.PAD)
    assert set(positions.tolist()) == set(range(total))
    assert len(positions) - total < world * batch
    assert len(positions) % (world * batch) == 0


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(0, 400),
    worlds=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    batches=st.tuples(st.integers(1, 8), st.integers(1, 8)),
    workers=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    cut=st.floats(0, 1),
)
@example(total=240, worlds=(2, 3), batches=(4, 4), workers=(2, 2), cut=0.5)
@example(total=240, worlds=(4, 2), batches=(4, 4), workers=(2, 3), cut=0.3)
def test_resume_on_another_world_loses_and_repeats_nothing(
    total: int, worlds: tuple[int, int], batches: tuple[int, int], workers: tuple[int, int], cut: float
) -> None:
    first = rank_slice(total=total, start=0, world_size=worlds[0], rank=0, batch_size=batches[0])
    done = int(first.batches * cut)
    consumed = first.consumed_after(done)
    before = [
        rank_slice(total=total, start=0, world_size=worlds[0], rank=r, batch_size=batches[0]).positions(b)
        for r in range(worlds[0])
        for b in range(done)
    ]
    after = served(total, consumed, worlds[1], batches[1], workers=workers[1], tail=TailRule.DROP)
    everything = np.concatenate([*before, after]).tolist()
    assert len(everything) == len(set(everything))
    assert set(everything) == set(range(len(everything)))  # a prefix of the epoch's order
    assert total - len(everything) < worlds[1] * batches[1]  # only the drop tail is left out


def test_permutation_is_stable_across_calls_and_depends_on_the_key() -> None:
    assert np.array_equal(permutation(derive_key(1, 2), 100), permutation(derive_key(1, 2), 100))
    assert not np.array_equal(permutation(derive_key(1, 2), 100), permutation(derive_key(2, 1), 100))
    assert sorted(permutation(derive_key(3), 64).tolist()) == list(range(64))


def test_bad_rank_and_window_fail_with_the_fix() -> None:
    with pytest.raises(TierlakeError, match="rank 2 of world_size 2"):
        rank_slice(total=10, start=0, world_size=2, rank=2, batch_size=1)
    with pytest.raises(TierlakeError, match="window = 0"):
        epoch_layout(np.array([1]), seed=0, epoch=0, version=0, window=0)
    with pytest.raises(TierlakeError, match="start = 11"):
        rank_slice(total=10, start=11, world_size=1, rank=0, batch_size=1)


@pytest.mark.parametrize(
    ("total", "start", "tail"), [(103, 0, TailRule.PAD), (103, 24, TailRule.DROP), (0, 0, TailRule.PAD)]
)
def test_batch_positions_are_the_rows_of_positions(total: int, start: int, tail: TailRule) -> None:
    plan = rank_slice(total=total, start=start, world_size=3, rank=1, batch_size=4, tail=tail)
    block = plan.batch_positions(0, plan.batches)
    assert block.shape == (plan.batches, 4)
    for batch in range(plan.batches):
        assert block[batch].tolist() == plan.positions(batch).tolist()
