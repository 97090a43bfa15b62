"""Asynchronous tiered checkpoints with bounded memory: the train step waits only for the snapshot.

Flow of one checkpoint::

    maybe_save(step)  --snapshot (device -> host copy, the only wait)-->  write to the write tier (DCP thread)
        --commit (manifest last)-->  promotion to each lower tier that is due (one worker thread per tier)

Bounds and back-pressure: one write in flight; a save that comes due while the last is still being written is
skipped (counted in ``stats.skipped_busy`` and logged), so at most one host copy of the state exists. Each lower
tier has one promotion in flight and one pending slot: a newer checkpoint replaces a pending one that has not
started (``stats.superseded``), so a slow tier gets the newest state, not a backlog. A checkpoint being promoted is
never removed by keep-last-K.

A failing write tier (disk full, folder gone) is logged with the reason and the fix, counted, and left: the next
tier becomes the write tier, and training goes on.

Overhead budget (``overhead_budget``, conf ``checkpoint.overhead_budget``): a checkpoint costs the trainer its
snapshot (the stall) and the background work's CPU (DCP's write, the promotions), which on a machine of few cores
competes with the train step. The cost of the last checkpoint is measured two ways, and the larger counts: the
model, ``stall + write CPU / cores``, and the train step's own pace (``policy.StepPace``: the stall plus the
seconds the steps taken while its write and promotions ran took beyond the steps taken with nothing in the
background; ``stats.step_cost_s``), which also sees the cores taken by other work on the machine. The write tier's
next checkpoint is not due before ``cost / budget`` seconds have passed since the last one started
(``stats.deferred_budget``, ``stats.min_gap_s``): the cadence of ``conf/`` is the most often, never more often
than the budget allows. So a big state on a small CPU checkpoints less often, and a GPU node with many cores keeps
the seed's cadence. With ``when_busy="wait"`` (every due step saved) no budget applies.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict_saver import async_save

from tierlake.errors import CommitConflict, TierlakeError
from training.manifest import Manifest
from training.policy import LastSave, StepPace, TierPolicy, is_due, stale_uncommitted, to_remove
from training.storage import HostSnapshot, TierWriter, yield_cpu
from training.tiers import CheckpointTier, FaultHook, FolderTier, check_run

logger = logging.getLogger(__name__)
WHEN_BUSY = ("skip", "wait")
MAX_BUDGET = 0.5  # a save due while the last is still being written: skip it, or wait for the write


@dataclass
class CheckpointStats:
    """Counters a trainer can log or export: what was saved, skipped, superseded, failed, and the stalls."""

    saves_started: int = 0
    saves_committed: int = 0
    save_failures: int = 0
    skipped_busy: int = 0
    waited_busy_s: float = 0.0
    superseded: int = 0
    promotions: dict[str, int] = field(default_factory=dict)
    promotion_failures: dict[str, int] = field(default_factory=dict)
    removed: int = 0
    stall_s_total: float = 0.0
    stall_s_max: float = 0.0
    deferred_budget: int = 0  # due by the cadence, not yet by the overhead budget
    min_gap_s: float = 0.0  # the write tier's spacing the budget asks for after the last write (0: none)
    step_cost_s: float = 0.0  # the last checkpoint's cost on the train step's pace (stall + steps' excess)
    step_s_baseline: float = 0.0  # the train step's seconds with no checkpoint work in the background
    write_cpu_s_total: float = 0.0  # CPU seconds of the writes on DCP's thread
    errors: list[str] = field(default_factory=list)


class _Promoter:
    """One lower tier's worker: one promotion in flight, one pending slot that a newer step replaces."""

    def __init__(self, owner: TieredCheckpointer, index: int) -> None:
        self.owner = owner
        self.index = index
        self.tier = owner.tiers[index]
        self.pending: tuple[int, int] | None = None  # (step, source tier index)
        self.active: tuple[int, int] | None = None
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name=f"tierlake-promote-{self.tier.name}", daemon=True)
        self.thread.start()

    def offer(self, step: int, source: int) -> None:
        with self.cond:
            if self.pending is not None:
                self.owner.stats.superseded += 1
                logger.warning(
                    "tier %s is behind: step %d replaces pending step %d (promotion superseded)",
                    self.tier.name,
                    step,
                    self.pending[0],
                    extra={"tier": self.tier.name, "step": step},
                )
            self.pending = (step, source)
            self.cond.notify_all()

    def protected(self) -> set[tuple[int, int]]:
        with self.cond:
            return {item for item in (self.pending, self.active) if item is not None}

    def idle(self) -> bool:
        with self.cond:
            return self.pending is None and self.active is None

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.thread.join()

    def _loop(self) -> None:
        yield_cpu()  # promotions give way to the train step
        while True:
            with self.cond:
                while self.pending is None and not self.closed:
                    self.cond.wait()
                if self.pending is None:
                    return
                self.active, self.pending = self.pending, None
            try:
                self.owner.promote(self.active[0], self.active[1], self.index)
            finally:
                with self.cond:
                    self.active = None
                    self.cond.notify_all()


class TieredCheckpointer:
    """Checkpoints of one run over ``tiers`` (nearest first), each with its :class:`TierPolicy`.

    ``when_busy``: a save that comes due while the last one is still being written is skipped (``skip``, the
    default: the step never waits for a write) or waits for that write (``wait``: every due step is saved, and the
    step waits when the disk is slower than the cadence; ``stats.waited_busy_s``).

    Call :meth:`maybe_save` after every step; it returns at once unless a checkpoint is due, then after the
    snapshot. :meth:`close` waits for the write and the promotions in flight.
    """

    def __init__(
        self,
        run: str,
        tiers: Sequence[CheckpointTier],
        policies: Sequence[TierPolicy],
        *,
        code_version: str = "",
        fault: FaultHook | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_commit: Callable[[Manifest, str], None] | None = None,
        when_busy: str = "skip",
        overhead_budget: float = 0.0,
    ) -> None:
        if not tiers or len(tiers) != len(policies):
            raise TierlakeError(
                f"{len(tiers)} tiers and {len(policies)} policies: need one policy per tier and at least one tier. "
                "Fix: pass matching lists (conf/ checkpoint.tiers)"
            )
        self.run = check_run(run)
        self.tiers = list(tiers)
        self.policies = list(policies)
        self.code_version = code_version
        self.fault = fault
        self.clock = clock
        self.on_commit = on_commit
        if when_busy not in WHEN_BUSY:
            raise TierlakeError(f"when_busy = {when_busy!r} is invalid. Fix: use one of {WHEN_BUSY}")
        self.when_busy = when_busy
        if not 0 <= overhead_budget <= MAX_BUDGET:
            raise TierlakeError(
                f"overhead_budget = {overhead_budget} is invalid. Fix: a share of the step time in [0, {MAX_BUDGET}] "
                "such as 0.05, or 0 for the cadence alone"
            )
        self.overhead_budget = overhead_budget if when_busy == "skip" else 0.0
        self._gap_from: float | None = None  # when the last write started (the clock's reading)
        self.pace = StepPace()
        self._model_cost = 0.0  # the last write's stall + CPU / cores
        self._last_stall = 0.0
        self.stats = CheckpointStats()
        self.failed: set[int] = set()
        self._last: list[LastSave | None] = [None] * len(tiers)
        self._lock = threading.Lock()
        self._writing: Future[Any] | None = None
        self._writing_step: tuple[int, int] | None = None
        # set once the write's completion is handled (promotions scheduled, lineage told): a future is done, and its
        # waiters wake, before its done-callbacks run, so "written" means this event, not the future
        self._handled = threading.Event()
        self._handled.set()
        self._snapshot = HostSnapshot(fault=fault)
        self._promoters = {i: _Promoter(self, i) for i in range(1, len(tiers))}

    @property
    def write_tier(self) -> int:
        """The nearest tier that has not failed."""
        for index in range(len(self.tiers)):
            if index not in self.failed:
                return index
        raise TierlakeError(
            f"every checkpoint tier of run {self.run!r} failed: {'; '.join(self.stats.errors[-3:])}. "
            "Fix: free space or repair the tiers named, then restart the trainer"
        )

    def maybe_save(
        self,
        step: int,
        state_dict: dict[str, Any],
        *,
        loader_state: Mapping[str, Any] | None = None,
        tables: Mapping[str, int] | None = None,
    ) -> bool:
        """Start a checkpoint of ``state_dict`` at ``step`` if the write tier is due; True if one started."""
        now = self.clock()
        self.pace.observe(now, busy=self.busy())
        try:
            return self._maybe_save(step, state_dict, now, loader_state=loader_state, tables=tables)
        finally:
            self.pace.returned(self.clock(), busy=self.busy())

    def busy(self) -> bool:
        """Whether a write or a promotion is in flight or pending."""
        with self._lock:
            writing = not self._handled.is_set()
        return writing or not all(promoter.idle() for promoter in self._promoters.values())

    def _maybe_save(
        self,
        step: int,
        state_dict: dict[str, Any],
        now: float,
        *,
        loader_state: Mapping[str, Any] | None,
        tables: Mapping[str, int] | None,
    ) -> bool:
        index = self.write_tier
        if not is_due(self.policies[index], step, now, self._last[index]):
            return False
        if self.overhead_budget and self._gap_from is not None and now - self._gap_from < self._spacing():
            self.stats.deferred_budget += 1
            return False
        with self._lock:
            busy = not self._handled.is_set()
        if busy and self.when_busy == "wait":
            waited = time.perf_counter()
            self.wait_written()
            self.stats.waited_busy_s += time.perf_counter() - waited
            index = self.write_tier  # the write just finished may have failed its tier
        elif busy:
            self.stats.skipped_busy += 1
            logger.info(
                "checkpoint of step %d skipped: step %s is still being written to %s (back-pressure)",
                step,
                self._writing_step[0] if self._writing_step else "?",
                self.tiers[index].name,
                extra={"step": step, "tier": self.tiers[index].name},
            )
            return False
        self._start(index, step, state_dict, loader_state=loader_state, tables=tables, now=now)
        return True

    def _start(
        self,
        index: int,
        step: int,
        state_dict: dict[str, Any],
        *,
        loader_state: Mapping[str, Any] | None,
        tables: Mapping[str, int] | None,
        now: float,
    ) -> None:
        tier = self.tiers[index]
        writer = TierWriter(
            tier,
            self.run,
            step,
            loader_state=loader_state,
            tables=tables,
            code_version=self.code_version,
            fault=self.fault,
            background=True,
        )
        self._last[index] = LastSave(step, now)
        self.stats.saves_started += 1
        started = time.perf_counter()
        future = async_save(state_dict, storage_writer=writer, async_stager=self._snapshot)
        stall = time.perf_counter() - started
        self._gap_from, self._last_stall = now, stall
        self.pace.reset()
        self.stats.stall_s_total += stall
        self.stats.stall_s_max = max(self.stats.stall_s_max, stall)
        if not isinstance(future, Future):  # AsyncSaveResponse (a staging future and an upload future)
            future = future.upload_completion
        with self._lock:
            self._writing, self._writing_step = future, (step, index)
            handled = self._handled = threading.Event()
        needed = state_bytes(state_dict)
        future.add_done_callback(
            lambda done: self._handle(done, index, step, needed, writer=writer, handled=handled, stall=stall)
        )

    def _handle(
        self,
        future: Future[Any],
        index: int,
        step: int,
        needed: int,
        *,
        writer: TierWriter,
        handled: threading.Event,
        stall: float,
    ) -> None:
        try:
            self._budget(stall, writer.cpu_s)
            self._written(future, index, step, needed, writer)
        finally:
            handled.set()

    def _budget(self, stall: float, cpu_s: float) -> None:
        """The write tier's spacing after a write that cost ``stall`` on the train thread and ``cpu_s`` in DCP's."""
        self.stats.write_cpu_s_total += cpu_s
        if self.overhead_budget:
            self.stats.min_gap_s = min_gap(stall, cpu_s, self.overhead_budget, os.cpu_count() or 1)
            self._model_cost = self.stats.min_gap_s * self.overhead_budget

    def _spacing(self) -> float:
        """Seconds the budget wants between the last checkpoint's start and the next: the larger of its two costs
        (the model's, and the train step's pace since it started) over the budget."""
        self.stats.step_cost_s = self._last_stall + max(0.0, self.pace.excess_s)
        self.stats.step_s_baseline = self.pace.baseline or 0.0
        if self.stats.step_cost_s > self._model_cost:
            self.stats.min_gap_s = self.stats.step_cost_s / self.overhead_budget
        return self.stats.min_gap_s

    def _written(self, future: Future[Any], index: int, step: int, needed: int, writer: TierWriter) -> None:
        tier = self.tiers[index]
        error = future.exception()
        if error is None:
            self.stats.saves_committed += 1
            if writer.manifest is not None:
                self._committed(writer.manifest, tier.where(self.run, step))
            self._schedule_promotions(index, step)
            self._collect(index)
            return
        self.stats.save_failures += 1
        if isinstance(error, CommitConflict):
            message = str(error)
        else:
            self.failed.add(index)
            message = (
                f"writing step {step} of run {self.run!r} to tier {tier.name} ({tier.where(self.run, step)}) failed: "
                f"{_space_note(tier, needed)}{error}. Fix: free space or repair that tier; checkpoints go to the "
                f"next tier ({self._next_name(index)}) meanwhile"
            )
            if isinstance(tier, FolderTier):
                tier.remove(self.run, step)
        self.stats.errors.append(message)
        logger.error(message, extra={"step": step, "tier": tier.name})

    def _committed(self, manifest: Manifest, where: str) -> None:
        """Tell ``on_commit`` (the lineage log); its failure is logged, never the checkpoint's."""
        if self.on_commit is None:
            return
        try:
            self.on_commit(manifest, where)
        except (OSError, ValueError, TierlakeError) as exc:
            logger.warning("lineage of step %d at %s not recorded: %s", manifest.step, where, exc)

    def _next_name(self, index: int) -> str:
        later = [tier.name for i, tier in enumerate(self.tiers) if i > index and i not in self.failed]
        return later[0] if later else "none left"

    def _schedule_promotions(self, source: int, step: int) -> None:
        now = self.clock()
        for index in range(source + 1, len(self.tiers)):
            if index in self.failed or not is_due(self.policies[index], step, now, self._last[index]):
                continue
            self._last[index] = LastSave(step, now)
            self._promoters[index].offer(step, source)

    def promote(self, step: int, source: int, target: int) -> bool:
        """Copy committed ``step`` from tier ``source`` to tier ``target`` (the promoter threads call this)."""
        src, dst = self.tiers[source], self.tiers[target]
        try:
            # put_step checks each shard against the manifest as it copies it: no read-back of the source first
            with src.local_copy(self.run, step, verify=False) as (folder, manifest):
                dst.put_step(folder, manifest, fault=self.fault)
        except (TierlakeError, OSError) as exc:
            self.stats.promotion_failures[dst.name] = self.stats.promotion_failures.get(dst.name, 0) + 1
            message = f"promoting step {step} of run {self.run!r} from {src.name} to {dst.name} failed: {exc}"
            self.stats.errors.append(message)
            logger.error(message, extra={"step": step, "tier": dst.name})
            return False
        self.stats.promotions[dst.name] = self.stats.promotions.get(dst.name, 0) + 1
        self._committed(manifest, dst.where(self.run, step))
        logger.info("promoted step %d of run %s to %s", step, self.run, dst.name, extra={"tier": dst.name})
        self._collect(target)
        return True

    def _collect(self, index: int) -> None:
        """Keep-last-K on tier ``index``, sparing steps a promotion still reads; drop leftovers of crashes."""
        tier = self.tiers[index]
        protected = {step for p in self._promoters.values() for step, src in p.protected() if src == index}
        with self._lock:
            if self._writing_step is not None and self._writing is not None and not self._writing.done():
                protected.add(self._writing_step[0])
        try:
            committed = tier.steps(self.run)
            doomed = to_remove(committed, self.policies[index].keep_last, protected)
            doomed += stale_uncommitted(tier.uncommitted(self.run), max(committed, default=None), protected)
            for step in doomed:
                tier.remove(self.run, step)
                self.stats.removed += 1
        except (TierlakeError, OSError) as exc:
            logger.warning("keep-last-K on tier %s failed: %s", tier.name, exc, extra={"tier": tier.name})

    def wait_written(self, timeout_s: float = 600.0) -> None:
        """Block until the write in flight, if any, is done (committed or failed) and handled (its promotions
        scheduled); the promotions go on."""
        with self._lock:
            handled = self._handled
        if not handled.wait(timeout_s):
            raise TierlakeError(
                f"the checkpoint write of run {self.run!r} still running after {timeout_s} s. Fix: check the write "
                "tier's disk (a hung mount?) or pass a longer timeout_s"
            )

    def wait(self, timeout_s: float = 600.0) -> None:
        """Block until the write and every promotion in flight or pending are done."""
        deadline = time.monotonic() + timeout_s
        self.wait_written(timeout_s)
        for promoter in self._promoters.values():
            with promoter.cond:
                while not (promoter.pending is None and promoter.active is None):
                    if not promoter.cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                        raise TierlakeError(f"promotion to {promoter.tier.name} still running after {timeout_s} s")

    def close(self, timeout_s: float = 600.0) -> None:
        self.wait(timeout_s)
        for promoter in self._promoters.values():
            promoter.close()
        self._snapshot.close()


def state_bytes(state: object) -> int:
    """Bytes of the tensors in a (nested) state dict: about what a checkpoint of it takes on disk."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, Mapping):
        return sum(state_bytes(value) for value in state.values())
    if isinstance(state, list | tuple):
        return sum(state_bytes(value) for value in state)
    return 0


def min_gap(stall_s: float, cpu_s: float, budget: float, cores: int) -> float:
    """Seconds between two checkpoints so that one costing ``stall_s`` on the train thread and ``cpu_s`` in the
    background (a share ``1 / cores`` of it taken from the trainer) is ``budget`` of the time."""
    return (stall_s + cpu_s / max(cores, 1)) / budget


def _space_note(tier: CheckpointTier, needed: int) -> str:
    """'No space left on device ...' when the tier's disk cannot hold the checkpoint: torch's own message for a
    short write (``PytorchStreamWriter failed writing file``) does not say so."""
    if not isinstance(tier, FolderTier):
        return ""
    try:
        usage = shutil.disk_usage(tier.root)
    except OSError:
        return ""
    if usage.free >= needed:
        return ""
    return (
        f"No space left on device: {usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB at "
        f"{tier.root}, the checkpoint needs about {needed / 2**20:.1f} MiB; torch said: "
    )
