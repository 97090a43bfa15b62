"""The tiers and policies of the settings (``conf/`` section ``checkpoint``), built once at an entry point."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

from tierlake.config import Settings
from tiers.s3 import s3_client
from training.policy import TierPolicy
from training.tape import TapeTier
from training.tiers import CheckpointTier, FolderTier, RgwTier


def checkpoint_tiers(settings: Settings, *, with_rgw: bool = True) -> list[CheckpointTier]:
    """Nearest first: the node's SSD folder, the edge NVMe folder, Ceph RGW (the lake bucket)."""
    section = settings.checkpoint
    tiers: list[CheckpointTier] = [FolderTier("local", section.local_dir), FolderTier("edge", section.edge_dir)]
    if with_rgw:
        # unsigned payloads: put_step checks each shard's CRC-32C before its upload and every read checks it again,
        # so botocore's SHA-256 of every byte (plain HTTP) would only cost CPU that the train step needs
        client = s3_client(settings.s3, sign_payload=False)
        tiers.append(RgwTier(client, settings.s3.lake_bucket, section.prefix))
    return tiers


def mirror_tier(settings: Settings) -> RgwTier | None:
    """The second site's copy of the checkpoints (``mirror.checkpoint_prefixes`` covers ``checkpoint.prefix``):
    read-only for restores, written by the mirror alone (``pipelines.lake.mirror``); None when not mirrored."""
    from pipelines.lake.mirror import mirror_s3  # noqa: PLC0415 - only where the second site is read

    prefix = settings.checkpoint.prefix.strip("/") + "/"
    if not any(prefix.startswith(covered) for covered in settings.mirror.checkpoint_prefixes):
        return None
    second = mirror_s3(settings)
    return RgwTier(s3_client(second, attempts=2), second.lake_bucket, settings.checkpoint.prefix, name="mirror")


def tape_tier(settings: Settings, *, progress: bool = False) -> TapeTier:
    """The checkpoints on tape: the cold tier of ``archive:`` (its library, catalog and audit log), with the
    retention of ``checkpoint.tape``."""
    from tiers.archive.catalog import Catalog  # noqa: PLC0415 - delta-rs only where tape is read
    from tiers.archive.context import ArchiveContext  # noqa: PLC0415

    context = ArchiveContext(archive=settings.archive, s3=settings.s3, cache=settings.cache.options)
    catalog = Catalog(settings.archive.catalog_uri, settings.archive.audit_uri, s3=settings.s3)
    return TapeTier(
        context,
        catalog,
        bucket=settings.s3.lake_bucket,
        prefix=settings.checkpoint.prefix,
        retention_days=settings.checkpoint.tape.retention_days,
        progress=progress,
    )


def restore_tiers(settings: Settings, *, progress: bool = False) -> list[CheckpointTier]:
    """The tiers a restore reads, nearest first: :func:`checkpoint_tiers`, the second site when mirrored, then
    tape (the farthest: a mount per cartridge; read only when no nearer tier has a good copy of a step)."""
    tiers = checkpoint_tiers(settings)
    second = mirror_tier(settings)
    return [*tiers, *([second] if second is not None else []), tape_tier(settings, progress=progress)]


def tier_policies(settings: Settings) -> list[TierPolicy]:
    """One :class:`TierPolicy` per tier, in the order of :func:`checkpoint_tiers`."""
    return [
        TierPolicy(every_steps=c.every_steps, interval_s=c.interval_s, keep_last=c.keep_last)
        for c in settings.checkpoint.cadence
    ]


def code_version(root: Path) -> str:
    """``tierlake <version>`` plus the git commit of the checkout when there is one."""
    version = f"tierlake {metadata.version('tierlake')}"
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version} git {commit}"
