"""What an operator does with checkpoints (``tierlake checkpoint ...``): list, verify, restore to a folder, promote
one step to a tier, and keep-last-K (dry run by default)."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tierlake.errors import NotFound, StorageError, TierlakeError
from training.manifest import Manifest
from training.policy import TierPolicy, to_archive, to_remove
from training.tiers import CheckpointTier, FolderTier, Progress

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TierListing:
    tier: str
    run: str
    committed: tuple[int, ...]
    uncommitted: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class Verdict:
    tier: str
    step: int
    ok: bool
    reason: str = ""


@dataclass
class GcPlan:
    """Steps keep-last-K removes per tier; ``applied`` when they were removed."""

    remove: dict[str, list[int]] = field(default_factory=dict)
    applied: bool = False


def tier_named(tiers: Sequence[CheckpointTier], name: str) -> CheckpointTier:
    for tier in tiers:
        if tier.name == name:
            return tier
    raise TierlakeError(f"tier {name!r} is unknown. Fix: use one of {[t.name for t in tiers]}")


def list_checkpoints(tiers: Sequence[CheckpointTier], run: str | None = None) -> list[TierListing]:
    """Committed and unfinished steps of ``run`` (or of every run) on each tier."""
    listings = []
    for tier in tiers:
        try:
            listings += [
                TierListing(
                    tier=tier.name,
                    run=name,
                    committed=tuple(tier.steps(name)),
                    uncommitted=tuple(tier.uncommitted(name)),
                )
                for name in ([run] if run else tier.runs())
            ]
        except (StorageError, OSError) as exc:
            logger.warning("tier %s cannot be listed, left out: %s", tier.name, exc, extra={"tier": tier.name})
    return listings


def find_manifest(tiers: Sequence[CheckpointTier], run: str, step: int | None) -> tuple[CheckpointTier, Manifest]:
    """The manifest of ``step`` (None: the newest committed step) from the nearest tier that has it; a tier that
    cannot be listed (its endpoint gone) is passed over, logged, and named if no tier has the step."""
    steps: dict[str, list[int]] = {}
    unreachable = []
    for tier in tiers:
        try:
            steps[tier.name] = tier.steps(run)
        except (StorageError, OSError) as exc:
            logger.warning("tier %s cannot be listed, passed over: %s", tier.name, exc, extra={"tier": tier.name})
            unreachable.append(f"{tier.name} ({exc})")
            steps[tier.name] = []
    wanted = step if step is not None else max((s for found in steps.values() for s in found), default=None)
    for tier in tiers:
        if wanted is not None and wanted in steps[tier.name]:
            return tier, tier.manifest(run, wanted)
    raise NotFound(
        f"run {run!r} has no committed step {wanted if wanted is not None else ''} on tiers "
        f"{[t.name for t in tiers]}{'; unreachable: ' + '; '.join(unreachable) if unreachable else ''}. "
        f"Fix: see `tierlake checkpoint list --run {run}`"
    )


def verify_run(tiers: Sequence[CheckpointTier], run: str, step: int | None = None) -> list[Verdict]:
    """Check every committed copy (or those of ``step``) against its manifest."""
    verdicts = []
    for tier in tiers:
        try:
            steps = tier.steps(run)
        except (StorageError, OSError) as exc:  # an endpoint gone: a bad verdict, not the end of the check
            verdicts.append(Verdict(tier=tier.name, step=-1 if step is None else step, ok=False, reason=str(exc)))
            continue
        for found in steps:
            if step is not None and found != step:
                continue
            try:
                tier.verify(run, found)
            except (StorageError, OSError) as exc:
                verdicts.append(Verdict(tier=tier.name, step=found, ok=False, reason=str(exc)))
            else:
                verdicts.append(Verdict(tier=tier.name, step=found, ok=True))
    return verdicts


def copy_step(
    tiers: Sequence[CheckpointTier],
    run: str,
    step: int,
    target: CheckpointTier,
    *,
    progress: Progress | None = None,
) -> tuple[str, list[str]]:
    """Copy committed ``step`` to ``target`` from the nearest other tier whose copy passes.

    Returns the source tier and the copies refused on the way."""
    refused: list[str] = []
    for tier in tiers:
        if tier is target:
            continue
        try:
            if step not in tier.steps(run):
                continue
            with tier.local_copy(run, step) as (folder, manifest):
                target.put_step(folder, manifest, progress=progress)
        except (StorageError, OSError) as exc:
            refused.append(f"{tier.name}: {exc}")
            continue
        return tier.name, refused
    raise NotFound(
        f"step {step} of run {run!r} has no good copy to promote to {target.name}: {'; '.join(refused) or 'none'}. "
        f"Fix: see `tierlake checkpoint verify {run}`"
    )


def restore_to(
    tiers: Sequence[CheckpointTier], run: str, dest: Path, step: int | None = None, *, progress: Progress | None = None
) -> tuple[str, int]:
    """Copy the newest good checkpoint (or ``step``) into folder ``dest``, a DCP checkpoint ``dcp.load`` reads."""
    if dest.exists() and any(dest.iterdir()):
        raise TierlakeError(f"--to {dest} is not empty. Fix: give an empty or new folder")
    _, manifest = find_manifest(tiers, run, step)
    source, _ = copy_step(tiers, run, manifest.step, _PlainFolder(dest), progress=progress)
    return source, manifest.step


class _PlainFolder(FolderTier):
    """A folder tier whose step folder is ``dest`` itself (``restore --to``)."""

    def __init__(self, dest: Path) -> None:
        super().__init__("restore", dest)
        self.dest = dest

    def step_dir(self, run: str, step: int) -> Path:
        return self.dest

    def steps(self, run: str) -> list[int]:
        return []


def plan_gc(
    tiers: Sequence[CheckpointTier],
    policies: Sequence[TierPolicy],
    run: str,
    *,
    protected: Mapping[str, Collection[int]] | None = None,
) -> GcPlan:
    """Keep-last-K per tier; ``protected[tier]``: steps that tier keeps anyway (RGW steps still to go to tape)."""
    plan = GcPlan()
    for tier, policy in zip(tiers, policies, strict=True):
        doomed = to_remove(tier.steps(run), policy.keep_last, (protected or {}).get(tier.name, ()))
        if doomed:
            plan.remove[tier.name] = doomed
    return plan


def apply_gc(tiers: Sequence[CheckpointTier], plan: GcPlan, run: str) -> GcPlan:
    for tier in tiers:
        for step in plan.remove.get(tier.name, []):
            tier.remove(run, step)
    plan.applied = True
    return plan


@dataclass(frozen=True, kw_only=True)
class ArchivePlan:
    """The tape policy's choice for one run: RGW steps older than the newest ``older_than`` not on tape yet."""

    run: str
    older_than: int
    steps: tuple[int, ...]
    on_tape: tuple[int, ...]


def plan_archive(source: CheckpointTier, tape: CheckpointTier, run: str, older_than: int) -> ArchivePlan:
    """Which committed steps of ``source`` (RGW) go to ``tape`` (:func:`training.policy.to_archive`)."""
    on_tape = tape.steps(run)
    steps = to_archive(source.steps(run), on_tape, older_than)
    return ArchivePlan(run=run, older_than=older_than, steps=tuple(steps), on_tape=tuple(on_tape))


def archive_steps(
    tiers: Sequence[CheckpointTier], tape: CheckpointTier, plan: ArchivePlan, *, progress: Progress | None = None
) -> list[tuple[int, str]]:
    """Archive each planned step to ``tape`` from the nearest tier whose copy passes; (step, source tier) each."""
    done = []
    for step in plan.steps:
        source, refused = copy_step(tiers, plan.run, step, tape, progress=progress)
        for reason in refused:
            logger.warning("archiving step %d: copy refused: %s", step, reason, extra={"step": step})
        done.append((step, source))
    return done
