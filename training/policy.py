"""When a tier takes a checkpoint and how many it keeps: pure functions of (policy, step, time, last save).

The seed's cadence is 500 ms to the node's SSD, 15 s to the edge NVMe and 5 minutes to Ceph; ``conf/`` scales it
per profile. A tier is due when either its step count or its interval has passed since its last checkpoint
(0 turns a rule off); a tier that never took one is due at once, so a short run still lands on every tier.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tierlake.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class TierPolicy:
    """``every_steps`` and ``interval_s`` (0: off; at least one on), ``keep_last`` committed steps kept."""

    every_steps: int = 0
    interval_s: float = 0.0
    keep_last: int = 3

    def __post_init__(self) -> None:
        if self.every_steps < 0 or self.interval_s < 0:
            raise ConfigError(
                f"every_steps = {self.every_steps}, interval_s = {self.interval_s}: negative. Fix: use 0 (off) or more"
            )
        if self.every_steps == 0 and self.interval_s == 0:
            raise ConfigError("every_steps and interval_s are both 0: the tier would never be written. Fix: set one")
        if self.keep_last < 1:
            raise ConfigError(f"keep_last = {self.keep_last} is invalid. Fix: keep 1 or more checkpoints")


@dataclass(frozen=True)
class LastSave:
    """The step and the clock reading of a tier's last checkpoint."""

    step: int
    at: float


def is_due(policy: TierPolicy, step: int, now: float, last: LastSave | None) -> bool:
    """Whether ``step`` at ``now`` should be checkpointed to a tier whose last checkpoint was ``last``."""
    if last is None:
        return True
    if step <= last.step:
        return False
    by_steps = policy.every_steps > 0 and step - last.step >= policy.every_steps
    by_time = policy.interval_s > 0 and now - last.at >= policy.interval_s
    return by_steps or by_time


def to_remove(committed: Iterable[int], keep_last: int, protected: Iterable[int] = ()) -> list[int]:
    """Committed steps beyond the newest ``keep_last``, minus ``protected`` ones (a promotion still reads them)."""
    ordered = sorted(set(committed), reverse=True)
    keep = set(ordered[:keep_last]) | set(protected)
    return sorted(step for step in ordered if step not in keep)


def stale_uncommitted(uncommitted: Iterable[int], newest_committed: int | None, in_flight: Iterable[int]) -> list[int]:
    """Unfinished steps older than the newest committed one and not being written: leftovers of a crash."""
    if newest_committed is None:
        return []
    busy = set(in_flight)
    return sorted(step for step in uncommitted if step < newest_committed and step not in busy)


def to_archive(committed: Iterable[int], on_tape: Iterable[int], older_than: int) -> list[int]:
    """Committed steps (of RGW) older than the newest ``older_than`` that tape does not hold yet, oldest first;
    none when ``older_than`` is 0 (the tape policy is off). ``checkpoint.tape.older_than`` in conf/."""
    if older_than < 0:
        raise ConfigError(
            f"older_than = {older_than} is negative. Fix: use 0 (off) or the number of steps kept off tape"
        )
    if older_than == 0:
        return []
    archived = set(on_tape)
    return sorted(step for step in sorted(set(committed), reverse=True)[older_than:] if step not in archived)


class StepPace:
    """What checkpoints cost the train step, measured on the step itself.

    The trainer calls :meth:`observe` as each step ends and :meth:`returned` when it goes back to training (the
    checkpointer does both in ``maybe_save``, so the snapshot's stall is not part of a step). A step taken with
    no checkpoint work in the background moves ``baseline`` (a moving average of the step's seconds); a step taken
    while a write or a promotion ran adds what it took beyond the baseline to ``excess_s`` (signed: noise cancels
    out), until :meth:`reset` at the next checkpoint. A step that took over ``pause_factor`` times the baseline is
    a pause (an evaluation, the caller draining the writes), not a step, and counts for neither.

    This is what the overhead budget spends: on a machine whose cores are shared with other work, a background
    write takes more from the trainer than its CPU seconds over the cores, and only the step's own pace shows it.
    """

    def __init__(self, *, smoothing: float = 0.1, pause_factor: float = 20.0) -> None:
        self.smoothing = smoothing
        self.pause_factor = pause_factor
        self.baseline: float | None = None
        self.excess_s = 0.0
        self._since: float | None = None
        self._busy_since = False

    def observe(self, now: float, *, busy: bool) -> None:
        """A step ended at ``now``; ``busy``: checkpoint work runs in the background now."""
        if self._since is None:
            return
        took = now - self._since
        if took <= 0 or (self.baseline and took > self.pause_factor * self.baseline):
            return
        if busy or self._busy_since:
            if self.baseline is not None:
                self.excess_s += took - self.baseline
        elif self.baseline is None:
            self.baseline = took
        else:
            self.baseline += self.smoothing * (took - self.baseline)

    def returned(self, now: float, *, busy: bool) -> None:
        """The next step starts at ``now``; ``busy`` as in :meth:`observe`."""
        self._since, self._busy_since = now, busy

    def reset(self) -> None:
        """A checkpoint started: the excess from here on is its cost."""
        self.excess_s = 0.0
