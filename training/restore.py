"""Restore from the nearest good tier: the newest committed step, from the nearest tier whose copy passes.

The candidates are every committed step on every tier. The newest step wins; among the tiers that hold it, the
nearest one whose checksums pass is read; a tier that fails is refused with its reason (logged and returned) and
the next one is tried, then the next older step. A step without a manifest is never a candidate. So after a crash
the restore lands on the newest committed checkpoint of the nearest intact tier, and never on a partial one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

from tierlake.errors import NotFound, StorageError
from training.manifest import Manifest
from training.storage import open_checkpoint
from training.tiers import CheckpointTier

logger = logging.getLogger(__name__)


class ResumableLoader(Protocol):
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True, kw_only=True)
class Restored:
    """What was restored and from where; ``refused`` says which copies were passed over and why."""

    run: str
    step: int
    tier: str
    where: str
    manifest: Manifest
    refused: tuple[str, ...] = field(default_factory=tuple)


def candidates(run: str, tiers: Sequence[CheckpointTier]) -> tuple[list[tuple[int, int]], list[str]]:
    """(step, tier index) pairs, newest step first, nearest tier first; and tiers that could not be listed."""
    found: list[tuple[int, int]] = []
    unreachable: list[str] = []
    for index, tier in enumerate(tiers):
        try:
            found.extend((step, index) for step in tier.steps(run))
        except (StorageError, OSError) as exc:
            unreachable.append(f"tier {tier.name}: cannot be listed ({exc})")
    found.sort(key=lambda item: (-item[0], item[1]))
    return found, unreachable


def load_latest(
    run: str,
    tiers: Sequence[CheckpointTier],
    state_dict: dict[str, Any],
    *,
    loader: ResumableLoader | None = None,
) -> Restored:
    """Load the newest good checkpoint of ``run`` into ``state_dict`` in place (``dcp.load``) and, when given,
    the loader's position; raises :class:`NotFound` naming every refusal when no copy passes."""
    found, refused = candidates(run, tiers)
    for step, index in found:
        tier = tiers[index]
        try:
            with open_checkpoint(tier, run, step) as (reader, manifest):
                dcp_load(state_dict, storage_reader=reader)
        except (StorageError, OSError) as exc:
            reason = f"step {step} on tier {tier.name}: {exc}"
            logger.warning("checkpoint refused: %s", reason, extra={"step": step, "tier": tier.name})
            refused.append(reason)
            continue
        if loader is not None and manifest.loader_state is not None:
            loader.load_state_dict(dict(manifest.loader_state))
        where = tier.where(run, step)
        logger.info("restored run %s step %d from tier %s (%s)", run, step, tier.name, where, extra={"tier": tier.name})
        return Restored(run=run, step=step, tier=tier.name, where=where, manifest=manifest, refused=tuple(refused))
    names = ", ".join(tier.name for tier in tiers)
    detail = "; ".join(refused) if refused else "no committed checkpoint on any tier"
    raise NotFound(
        f"no checkpoint of run {run!r} can be restored from tiers {names}: {detail}. "
        "Fix: check the run name (tierlake checkpoint list), or start the run from scratch"
    )
