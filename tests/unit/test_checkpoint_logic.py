"""Tiered checkpoints without services: the cadence and keep-last-K rules (hypothesis), the manifest, the commit
protocol of a folder tier, back-pressure and superseded promotions, and restore falling back past a damaged copy."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pipelines.lake.mirror import committed_checkpoint_keys
from tierlake.errors import CommitConflict, ConfigError, NotFound, TierlakeError
from training.checkpointer import TieredCheckpointer, min_gap
from training.example import fault_hook
from training.manifest import MANIFEST_NAME, CheckpointCorrupt, Manifest, ShardEntry, build_manifest
from training.policy import LastSave, StepPace, TierPolicy, is_due, stale_uncommitted, to_remove
from training.restore import load_latest
from training.tiers import FolderTier, commit_manifest


@st.composite
def valid_policy(draw: st.DrawFn) -> TierPolicy:
    every = draw(st.integers(0, 20))
    interval = draw(st.sampled_from([0.0, 0.5, 15.0]))
    if every == 0 and interval == 0:
        every = 1
    return TierPolicy(every_steps=every, interval_s=interval, keep_last=draw(st.integers(1, 5)))


@given(valid_policy(), st.integers(0, 1000), st.floats(0, 1e4), st.integers(0, 50), st.floats(0, 100))
def test_due_is_monotone_and_never_twice_for_one_step(
    policy: TierPolicy, last_step: int, last_at: float, more_steps: int, more_s: float
) -> None:
    last = LastSave(last_step, last_at)
    assert not is_due(policy, last_step, last_at + more_s, last)  # a step is never checkpointed twice
    step, now = last_step + more_steps, last_at + more_s
    if is_due(policy, step, now, last):
        assert is_due(policy, step + 1, now + 1, last)  # later and further is still due
    expected = (policy.every_steps > 0 and more_steps >= policy.every_steps) or (
        policy.interval_s > 0 and more_s >= policy.interval_s and more_steps > 0
    )
    assert is_due(policy, step, now, last) == expected
    assert is_due(policy, step, now, None)  # a tier that never took one is due at once


@given(st.sets(st.integers(0, 200), max_size=30), st.integers(1, 6), st.sets(st.integers(0, 200), max_size=5))
def test_keep_last_spares_the_newest_and_the_protected(committed: set[int], keep: int, protected: set[int]) -> None:
    removed = set(to_remove(committed, keep, protected))
    newest = set(sorted(committed, reverse=True)[:keep])
    assert removed <= committed
    assert not removed & (newest | protected)
    assert removed | newest | (protected & committed) == committed


@given(
    st.sets(st.integers(0, 100), max_size=20), st.one_of(st.none(), st.integers(0, 100)), st.sets(st.integers(0, 100))
)
def test_stale_uncommitted_only_below_the_newest_commit(
    uncommitted: set[int], newest: int | None, busy: set[int]
) -> None:
    stale = stale_uncommitted(uncommitted, newest, busy)
    assert all(newest is not None and step < newest and step not in busy for step in stale)


def test_policy_refuses_a_tier_that_is_never_written() -> None:
    with pytest.raises(ConfigError, match="both 0"):
        TierPolicy(every_steps=0, interval_s=0)


names = st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=20)


@given(
    st.lists(st.tuples(names, st.integers(0, 2**40), st.integers(0, 2**32 - 1)), max_size=5),
    st.integers(0, 10**9),
    st.dictionaries(names, st.integers(0, 10**6), max_size=3),
)
def test_manifest_round_trips(shards: list[tuple[str, int, int]], step: int, tables: dict[str, int]) -> None:
    manifest = build_manifest(
        run="r",
        step=step,
        shards=[ShardEntry(name=n, size=s, crc32c=c) for n, s, c in shards],
        loader_state={"epoch": 1, "samples_consumed": 32},
        tables=tables,
        code_version="tierlake 0.1.0",
    )
    assert Manifest.from_json(manifest.to_json(), "here") == manifest


def test_a_damaged_manifest_is_refused_with_where() -> None:
    with pytest.raises(CheckpointCorrupt, match=r"at/MANIFEST\.json: the manifest is not readable"):
        Manifest.from_json(b'{"format": "tierlake.checkpoint/1", "shards": [', "at/MANIFEST.json")


def test_folder_commit_is_exclusive_and_an_unfinished_step_is_not_committed(tmp_path: Path) -> None:
    tier = FolderTier("local", tmp_path)
    folder = tier.step_dir("run", 5)
    folder.mkdir(parents=True)
    (folder / "shard").write_bytes(b"x" * 10)
    assert tier.steps("run") == []
    assert tier.uncommitted("run") == [5]
    manifest = build_manifest(run="run", step=5, shards=[], loader_state=None, tables={}, code_version="")
    commit_manifest(folder, manifest)
    assert tier.steps("run") == [5]
    with pytest.raises(CommitConflict, match="already committed"):
        commit_manifest(folder, manifest)
    tier.remove("run", 5)
    assert tier.steps("run") == []
    assert not folder.exists()


def _model_state(seed: int) -> tuple[torch.nn.Linear, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(16, 16)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 16)).sum().backward()
    optimizer.step()
    return model, optimizer


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {"model": model.state_dict(), "optim": optimizer.state_dict()}


def _tiers(tmp_path: Path) -> list[FolderTier]:
    return [FolderTier("local", tmp_path / "local"), FolderTier("edge", tmp_path / "edge")]


def test_restore_is_bit_for_bit_and_falls_back_past_a_flipped_byte(tmp_path: Path) -> None:
    tiers = _tiers(tmp_path)
    every = [TierPolicy(every_steps=1), TierPolicy(every_steps=1)]
    checkpointer = TieredCheckpointer("r", tiers, every)
    model, optimizer = _model_state(1)
    checkpointer.maybe_save(7, _state(model, optimizer), loader_state={"samples_consumed": 7}, tables={"t": 3})
    checkpointer.close()
    assert [t.steps("r") for t in tiers] == [[7], [7]]
    other_model, other_optimizer = _model_state(2)
    target = _state(other_model, other_optimizer)
    restored = load_latest("r", tiers, target)
    assert (restored.tier, restored.step, restored.manifest.tables) == ("local", 7, {"t": 3})
    assert torch.equal(target["model"]["weight"], model.weight)
    assert torch.equal(target["optim"]["state"][0]["exp_avg_sq"], optimizer.state_dict()["state"][0]["exp_avg_sq"])
    shard = next(p for p in tiers[0].step_dir("r", 7).iterdir() if p.suffix == ".distcp")
    damaged = bytearray(shard.read_bytes())
    damaged[len(damaged) // 2] ^= 0x10
    shard.write_bytes(bytes(damaged))
    restored = load_latest("r", tiers, target)
    assert restored.tier == "edge"
    assert "CRC-32C" in restored.refused[0]
    assert "tier local" in restored.refused[0]
    (tiers[1].step_dir("r", 7) / MANIFEST_NAME).unlink()  # edge: no manifest, so not a checkpoint
    with pytest.raises(NotFound, match="CRC-32C"):
        load_latest("r", tiers, target)


def test_close_waits_for_the_last_write_to_be_handled_so_its_promotion_is_not_lost(tmp_path: Path) -> None:
    """A future wakes its waiters before its done-callbacks run: a slow callback (here the lineage hook) must not
    let close() find the promoters idle and stop them before the last step is offered to them."""
    tiers = _tiers(tmp_path)

    def slow_lineage(manifest: Manifest, where: str) -> None:
        if where.startswith(str(tiers[0].root)):
            time.sleep(0.5)

    checkpointer = TieredCheckpointer("r", tiers, [TierPolicy(every_steps=1)] * 2, on_commit=slow_lineage)
    model, optimizer = _model_state(1)
    checkpointer.maybe_save(4, _state(model, optimizer))
    checkpointer.close()
    assert tiers[1].steps("r") == [4]
    assert checkpointer.stats.promotions == {"edge": 1}


def test_a_promotion_never_publishes_a_damaged_copy(tmp_path: Path) -> None:
    """Promotions skip reading the source back first; the copy itself checks every shard against the manifest."""
    tiers = _tiers(tmp_path)
    checkpointer = TieredCheckpointer("r", tiers, [TierPolicy(every_steps=1), TierPolicy(every_steps=1)])
    model, optimizer = _model_state(1)
    checkpointer.maybe_save(3, _state(model, optimizer))
    checkpointer.close()
    tiers[1].remove("r", 3)
    shard = next(p for p in tiers[0].step_dir("r", 3).iterdir() if p.suffix == ".distcp")
    damaged = bytearray(shard.read_bytes())
    damaged[-1] ^= 0x01
    shard.write_bytes(bytes(damaged))
    assert not checkpointer.promote(3, 0, 1)
    assert checkpointer.stats.promotion_failures == {"edge": 1}
    assert "CRC-32C" in checkpointer.stats.errors[-1]
    assert tiers[1].steps("r") == []  # no manifest published on edge


def test_back_pressure_skips_a_save_while_one_is_written_and_newer_supersedes_a_pending_promotion(
    tmp_path: Path,
) -> None:
    tiers = _tiers(tmp_path)
    release_write, release_promotion = threading.Event(), threading.Event()
    promoting = threading.Event()

    def hook(point: str) -> None:
        if point == "write":
            release_write.wait(30)
        if point == "promotion":
            promoting.set()
            release_promotion.wait(30)

    checkpointer = TieredCheckpointer("r", tiers, [TierPolicy(every_steps=1), TierPolicy(every_steps=1)], fault=hook)
    model, optimizer = _model_state(1)
    assert checkpointer.maybe_save(1, _state(model, optimizer))
    assert not checkpointer.maybe_save(2, _state(model, optimizer))  # step 1 is still being written
    assert checkpointer.stats.skipped_busy == 1
    release_write.set()
    checkpointer.wait_written()  # the promotion of 1 now blocks in the hook
    assert promoting.wait(30)
    for step in (3, 4):  # 3 waits in the pending slot, 4 replaces it
        assert checkpointer.maybe_save(step, _state(model, optimizer))
        checkpointer.wait_written()
    assert checkpointer.stats.superseded == 1
    release_promotion.set()
    checkpointer.close()
    assert tiers[1].steps("r") == [1, 4]
    assert tiers[0].steps("r") == [1, 3, 4]


def test_fault_spec_is_checked() -> None:
    assert fault_hook("") is None
    with pytest.raises(TierlakeError, match="TIERLAKE_CHECKPOINT_FAULT = 'upload:1' is invalid"):
        fault_hook("upload:1")


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from(["__0_0.distcp", ".metadata", "MANIFEST.json", "sub/x"])),
        max_size=12,
        unique=True,
    ),
    st.lists(st.sampled_from(["step-1.pt", "notes.txt"]), max_size=2, unique=True),
)
def test_the_mirror_copies_committed_steps_only_manifest_last(files: list[tuple[int, str]], plain: list[str]) -> None:
    prefix = "training/checkpoints/"
    keys = [f"{prefix}run/{step:012d}/{name}" for step, name in files] + [prefix + name for name in plain]
    order = committed_checkpoint_keys(reversed(keys), prefix)
    committed = {step for step, name in files if name == MANIFEST_NAME}
    expected = {f"{prefix}run/{step:012d}/{name}" for step, name in files if step in committed}
    assert set(order) == expected | {prefix + name for name in plain}
    for step in committed:
        positions = [i for i, key in enumerate(order) if f"/{step:012d}/" in key]
        assert order[positions[-1]].endswith(MANIFEST_NAME)  # the manifest after every file of its step


def test_when_busy_wait_saves_every_due_step_after_the_write_before(tmp_path: Path) -> None:
    tiers = _tiers(tmp_path)[:1]
    release = threading.Event()

    def hold_the_write(point: str) -> None:
        if point == "write":
            release.wait(30)

    checkpointer = TieredCheckpointer(
        "r",
        tiers,
        [TierPolicy(every_steps=1)],
        fault=hold_the_write,
        when_busy="wait",
    )
    model, optimizer = _model_state(1)
    assert checkpointer.maybe_save(1, _state(model, optimizer))
    second = threading.Thread(target=checkpointer.maybe_save, args=(2, _state(model, optimizer)))
    second.start()  # blocks in maybe_save until the write of step 1 is done
    release.set()
    second.join(60)
    checkpointer.close()
    assert tiers[0].steps("r") == [1, 2]
    assert checkpointer.stats.skipped_busy == 0
    with pytest.raises(TierlakeError, match="when_busy = 'later' is invalid"):
        TieredCheckpointer("r", tiers, [TierPolicy(every_steps=1)], when_busy="later")


def _budgeted(tmp_path: Path, budget: float) -> tuple[FolderTier, list[float], TieredCheckpointer, Any, Any]:
    """One folder tier due every step under ``budget``, on a clock the test moves; step 1 saved and written."""
    tiers = _tiers(tmp_path)[:1]
    now = [0.0]
    checkpointer = TieredCheckpointer(
        "r", tiers, [TierPolicy(every_steps=1)], clock=lambda: now[0], overhead_budget=budget
    )
    model, optimizer = _model_state(1)
    assert checkpointer.maybe_save(1, _state(model, optimizer))
    checkpointer.wait_written()
    return tiers[0], now, checkpointer, model, optimizer


def test_the_overhead_budget_spaces_the_write_tier_by_the_measured_cost_of_the_last_checkpoint(tmp_path: Path) -> None:
    budget = 0.05
    tier, now, checkpointer, model, optimizer = _budgeted(tmp_path, budget)
    stats = checkpointer.stats
    assert stats.write_cpu_s_total > 0  # DCP's thread did the write: its CPU is counted
    assert stats.min_gap_s == min_gap(stats.stall_s_total, stats.write_cpu_s_total, budget, os.cpu_count() or 1)
    assert stats.min_gap_s > 0
    now[0] = stats.min_gap_s * 0.99  # due by the cadence (every step), not yet by the budget
    assert not checkpointer.maybe_save(2, _state(model, optimizer))
    assert stats.deferred_budget == 1
    now[0] = stats.min_gap_s
    assert checkpointer.maybe_save(3, _state(model, optimizer))
    checkpointer.close()
    assert tier.steps("r") == [1, 3]
    assert min_gap(0.03, 0.4, 0.05, 2) == pytest.approx(4.6)  # a 252 MB state on 2 cores: about 5 s apart
    with pytest.raises(TierlakeError, match=r"overhead_budget = 0.9 is invalid"):
        TieredCheckpointer("r", [tier], [TierPolicy(every_steps=1)], overhead_budget=0.9)


def test_the_step_pace_charges_background_work_with_the_steps_it_slowed_and_skips_pauses() -> None:
    pace = StepPace(smoothing=0.5, pause_factor=5.0)
    now = 0.0

    def step(took: float, *, busy: bool) -> None:
        nonlocal now
        now += took
        pace.observe(now, busy=busy)
        pace.returned(now, busy=busy)

    pace.returned(now, busy=False)
    step(1.0, busy=False)
    step(1.0, busy=False)
    assert pace.baseline == pytest.approx(1.0)
    assert pace.excess_s == 0.0
    step(1.5, busy=True)  # a write in the background: 0.5 s beyond the pace, not part of the baseline
    step(1.25, busy=True)
    assert pace.baseline == pytest.approx(1.0)
    assert pace.excess_s == pytest.approx(0.75)
    step(30.0, busy=True)  # a pause (the caller waited for the writes): neither a step nor a cost
    assert pace.excess_s == pytest.approx(0.75)
    step(1.1, busy=False)  # began while the write ran: its excess still counts
    assert pace.excess_s == pytest.approx(0.85)
    step(2.0, busy=False)  # a slower machine: the baseline follows
    assert pace.baseline == pytest.approx(1.5)
    pace.reset()
    assert pace.excess_s == 0.0


def test_the_budget_spends_the_steps_pace_when_it_costs_more_than_the_model(tmp_path: Path) -> None:
    budget = 0.1
    tier, now, checkpointer, model, optimizer = _budgeted(tmp_path, budget)
    model_gap = checkpointer.stats.min_gap_s
    checkpointer.pace.excess_s = 2.0  # the steps since step 1 took 2 s beyond their pace (other work on the cores)
    now[0] = model_gap * 2  # due by the cadence and by the model's cost ...
    assert not checkpointer.maybe_save(2, _state(model, optimizer))  # ... not by what the steps lost
    stats = checkpointer.stats
    assert stats.deferred_budget == 1
    assert stats.step_cost_s == pytest.approx(stats.stall_s_total + 2.0)
    assert stats.min_gap_s == pytest.approx(stats.step_cost_s / budget)
    now[0] = stats.min_gap_s
    assert checkpointer.maybe_save(3, _state(model, optimizer))
    checkpointer.close()
    assert tier.steps("r") == [1, 3]


def test_with_when_busy_wait_no_budget_applies(tmp_path: Path) -> None:
    tiers = _tiers(tmp_path)[:1]
    checkpointer = TieredCheckpointer(
        "r", tiers, [TierPolicy(every_steps=1)], clock=lambda: 0.0, when_busy="wait", overhead_budget=0.05
    )
    model, optimizer = _model_state(1)
    assert checkpointer.maybe_save(1, _state(model, optimizer))
    assert checkpointer.maybe_save(2, _state(model, optimizer))  # no time passed: saved anyway
    checkpointer.close()
    assert tiers[0].steps("r") == [1, 2]
