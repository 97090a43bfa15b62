"""Typed settings, loaded once at the entry point and passed down; one module per section.

Precedence, highest first: explicit overrides (CLI flags) > ``TIERLAKE_*`` environment variables >
``conf/<profile>.yaml`` > ``conf/base.yaml``. Nested keys in the environment use a double underscore:
``TIERLAKE_KAFKA__NODES=3`` sets ``kafka.nodes``; ``TIERLAKE_RUN_DIR`` sets the top-level ``run_dir``.
Secrets (the S3 keys) come only from the environment or the secret file that ``tierlake stack up`` creates;
a conf file that holds one is refused.

Sections: :mod:`~tierlake.config.stack` (Kafka, Ceph, Spark), :mod:`~tierlake.config.s3`,
:mod:`~tierlake.config.cache`, :mod:`~tierlake.config.lake` (maintenance, mirror), :mod:`~tierlake.config.archive`,
:mod:`~tierlake.config.checkpoint` (training checkpoints);
entities (record schemas) in :mod:`tierlake.entities`. How a value is read and checked: :mod:`~tierlake.config.values`.
A tier or a loader takes its own section, not the whole :class:`Settings`. Library code never reads ``os.environ``:
the environment is an argument of :func:`load_settings`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tierlake.config.archive import ArchiveSettings, ArchiveTable, build_archive
from tierlake.config.cache import CacheSettings, build_cache
from tierlake.config.checkpoint import (
    CHECKPOINT_TIERS,
    CheckpointCadence,
    CheckpointSettings,
    CheckpointTape,
    build_checkpoint,
)
from tierlake.config.lake import (
    MIN_VACUUM_RETENTION_HOURS,
    OPTIMIZE_MODES,
    MaintenanceSettings,
    MirrorSettings,
    TableMaintenance,
    build_maintenance,
    build_mirror,
)
from tierlake.config.s3 import S3Settings, Secret, build_s3, read_credentials_file
from tierlake.config.spark_cluster import SparkClusterSettings, build_spark_cluster
from tierlake.config.stack import (
    CephSettings,
    KafkaSettings,
    SparkSettings,
    TopicSettings,
    build_ceph,
    build_kafka,
    build_spark,
)
from tierlake.config.values import SECRET_KEYS, Values, env_layer, flatten, read_yaml
from tierlake.entities import EntitySpec, build_entities
from tierlake.errors import ConfigError

__all__ = [
    "CHECKPOINT_TIERS",
    "MIN_VACUUM_RETENTION_HOURS",
    "OPTIMIZE_MODES",
    "PROFILES",
    "ArchiveSettings",
    "ArchiveTable",
    "CacheSettings",
    "CephSettings",
    "CheckpointCadence",
    "CheckpointSettings",
    "CheckpointTape",
    "KafkaSettings",
    "MaintenanceSettings",
    "MirrorSettings",
    "S3Settings",
    "Secret",
    "Settings",
    "SparkClusterSettings",
    "SparkSettings",
    "TableMaintenance",
    "TopicSettings",
    "find_conf_dir",
    "load_settings",
    "masked",
    "read_credentials_file",
]

PROFILES = ("local", "ci", "prod", "cluster")


@dataclass(frozen=True, kw_only=True)
class Settings:
    profile: str
    root: Path
    run_dir: Path
    kafka: KafkaSettings
    ceph: CephSettings
    s3: S3Settings
    spark: SparkSettings
    spark_cluster: SparkClusterSettings
    cache: CacheSettings
    archive: ArchiveSettings
    maintenance: MaintenanceSettings
    mirror: MirrorSettings
    checkpoint: CheckpointSettings
    entities: Mapping[str, EntitySpec]
    sources: tuple[str, ...]

    def with_credentials(self, access_key: str, secret_key: str) -> Settings:
        s3 = replace(self.s3, access_key=Secret(access_key), secret_key=Secret(secret_key))
        return replace(self, s3=s3)


# ---------------------------------------------------------------------------------------------------------
# Loading


def find_conf_dir(start: Path) -> Path:
    """The nearest ``conf/`` holding ``base.yaml`` at or above ``start``."""
    for folder in (start, *start.parents):
        if (folder / "conf" / "base.yaml").is_file():
            return folder / "conf"
    raise ConfigError(
        f"no conf/base.yaml found at or above {start}. Fix: run tierlake inside its checkout, "
        "or set TIERLAKE_CONF_DIR to the folder holding base.yaml"
    )


def load_settings(
    profile: str | None = None,
    *,
    conf_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Resolve the settings once. ``env`` defaults to ``os.environ`` only here, at the process edge."""
    env = dict(os.environ) if env is None else env
    conf_dir = conf_dir or (Path(env["TIERLAKE_CONF_DIR"]) if "TIERLAKE_CONF_DIR" in env else None)
    conf_dir = (conf_dir or find_conf_dir(Path.cwd())).resolve()
    if profile is not None and not profile.strip():
        raise ConfigError(f"--profile {profile!r} is empty. Fix: give one of {PROFILES}, or leave the flag out (local)")
    profile = profile or env.get("TIERLAKE_PROFILE") or "local"
    if profile not in PROFILES:
        raise ConfigError(
            f"profile {profile!r} is unknown (from --profile or TIERLAKE_PROFILE). Fix: use one of {PROFILES}"
        )
    flat: dict[str, tuple[Any, str]] = {}
    sources = []
    for name in ("base", profile):
        path = conf_dir / f"{name}.yaml"
        layer = flatten(read_yaml(path), str(path))
        if leaked := sorted(SECRET_KEYS & set(layer)):
            raise ConfigError(
                f"{path}: {', '.join(leaked)} must not be in a conf file (conf/ is in git). "
                "Fix: delete it there and set TIERLAKE_S3__ACCESS_KEY / TIERLAKE_S3__SECRET_KEY"
            )
        flat.update(layer)
        sources.append(str(path))
    flat.update(env_layer(env))
    for key, value in (overrides or {}).items():
        flat[key] = (value, "command line")
    values = Values(flat)
    settings = _build(values, profile=profile, root=conf_dir.parent, sources=tuple(sources))
    if unknown := values.unused():
        where = ", ".join(f"{key} ({values.source(key)})" for key in unknown)
        raise ConfigError(f"unknown config keys: {where}. Fix: remove them or correct the spelling")
    return settings


def _build(values: Values, *, profile: str, root: Path, sources: tuple[str, ...]) -> Settings:
    run_dir = root / values.get("run_dir", str, fix="a folder for the local stack's data, logs and pids")
    ceph = build_ceph(values)
    s3 = build_s3(values, root)
    if ceph.managed and s3.endpoint != f"http://127.0.0.1:{ceph.rgw_port}":
        raise values.fail(
            "s3.endpoint",
            s3.endpoint,
            "the managed local Ceph serves RGW on loopback",
            f"set s3.endpoint to http://127.0.0.1:{ceph.rgw_port} or ceph.managed to false",
        )
    kafka = build_kafka(values)
    raw_entities = values.get("entities", dict, default={}, fix="a mapping of entity name -> schema")
    entities = build_entities(raw_entities, values.source("entities"), {t.name for t in kafka.topics})
    return Settings(
        profile=profile,
        root=root,
        run_dir=run_dir,
        kafka=kafka,
        ceph=ceph,
        s3=s3,
        spark=build_spark(values, root),
        spark_cluster=build_spark_cluster(values),
        cache=build_cache(values, root, run_dir),
        archive=build_archive(values, root, run_dir),
        maintenance=build_maintenance(values, root, run_dir),
        mirror=build_mirror(values, root, s3),
        checkpoint=build_checkpoint(values, root, run_dir),
        entities=entities,
        sources=sources,
    )


def masked(settings: Settings) -> dict[str, Any]:
    """The resolved settings as plain data, secrets masked: what ``tierlake config show`` prints."""

    def plain(value: Any) -> Any:
        if isinstance(value, Secret):
            return str(value)
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if hasattr(value, "__dataclass_fields__"):
            return {name: plain(getattr(value, name)) for name in value.__dataclass_fields__}
        return value

    result: dict[str, Any] = plain(settings)
    return result
