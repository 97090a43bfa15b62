"""Training checkpoints per tier for the operator's view: how many committed steps each tier holds and the newest.

``pipelines`` may not import ``training`` (the layers in pyproject.toml), so the CLI lists the checkpoints
(``training.operations.list_checkpoints`` over ``training.setup.restore_tiers``, as ``tierlake checkpoint list``
does) and passes the listings in as :class:`TrainingCheckpoints`; this module only sums them up, per tier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class CheckpointListing(Protocol):
    """One run on one tier, as ``training.operations.TierListing`` has it."""

    @property
    def tier(self) -> str: ...

    @property
    def run(self) -> str: ...

    @property
    def committed(self) -> tuple[int, ...]: ...

    @property
    def uncommitted(self) -> tuple[int, ...]: ...


@dataclass(frozen=True, kw_only=True)
class TrainingCheckpoints:
    """What the CLI listed: every tier it asked (nearest first), the listings of those it could list, and why the
    others could not be (tier -> error)."""

    tiers: Sequence[str]
    listings: Sequence[CheckpointListing]
    unreadable: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class CheckpointTierRow:
    """One tier: committed checkpoints (steps, over every run), unfinished ones, and the newest committed step."""

    tier: str
    error: str = ""  # the tier could not be listed (then the figures are unknown, not 0)
    runs: int = 0
    checkpoints: int = 0
    unfinished: int = 0
    newest_step: int | None = None
    newest_run: str | None = None


def checkpoint_rows(found: TrainingCheckpoints) -> list[CheckpointTierRow]:
    """One row per tier asked, in its order. The newest step is the highest committed step of any run on the tier
    (steps of different runs are counted apart, so it names its run)."""
    rows = []
    for tier in found.tiers:
        if tier in found.unreadable:
            rows.append(CheckpointTierRow(tier=tier, error=found.unreadable[tier]))
            continue
        mine = [listing for listing in found.listings if listing.tier == tier]
        newest = max(((step, item.run) for item in mine for step in item.committed), default=None)
        rows.append(
            CheckpointTierRow(
                tier=tier,
                runs=len({item.run for item in mine}),
                checkpoints=sum(len(item.committed) for item in mine),
                unfinished=sum(len(item.uncommitted) for item in mine),
                newest_step=None if newest is None else newest[0],
                newest_run=None if newest is None else newest[1],
            )
        )
    return rows
