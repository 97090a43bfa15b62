"""Settings of training checkpoints (training/): the tier folders, the RGW prefix, and each tier's cadence.

The cadence follows the seed (500 ms to the node's SSD, 15 s to the edge NVMe, 5 min to Ceph); a tier is due when
``every_steps`` steps or ``interval_s`` seconds have passed since its last checkpoint (0 turns a rule off).
``overhead_budget`` spaces the nearest tier's checkpoints further when they cost more than that share of the
trainer's time (``training.checkpointer``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tierlake.config.s3 import Secret
from tierlake.config.values import Values, positive
from tierlake.errors import ConfigError

CHECKPOINT_TIERS = ("local", "edge", "rgw")


@dataclass(frozen=True, kw_only=True)
class CheckpointCadence:
    """One tier's rule: every ``every_steps`` steps or ``interval_s`` seconds, keeping the newest ``keep_last``."""

    tier: str
    every_steps: int
    interval_s: float
    keep_last: int


@dataclass(frozen=True, kw_only=True)
class CheckpointTape:
    """Checkpoints on tape (the cold tier): committed RGW steps older than the newest ``older_than`` are archived
    by ``tierlake checkpoint archive`` (0: off); each tape copy is retained ``retention_days``."""

    older_than: int = 0
    retention_days: int = 30


@dataclass(frozen=True, kw_only=True)
class CheckpointSettings:
    """Where checkpoints go (nearest first: ``local_dir``, ``edge_dir``, ``s3://<lake>/<prefix>``) and when."""

    local_dir: Path
    edge_dir: Path
    prefix: str
    lineage_dir: Path
    cadence: tuple[CheckpointCadence, ...]
    lineage_url: str = ""  # an OpenLineage HTTP endpoint's base URL (Marquez: http://host:5000); empty: files only
    overhead_budget: float = 0.0  # share of the trainer's time checkpoints may cost (measured); 0: cadence alone
    tape: CheckpointTape = CheckpointTape(older_than=0)
    # where the lineage endpoint's API key is (never the key itself: conf/ is in git): an environment variable's
    # name, or a secrets file (its content, stripped); both empty: no Authorization header
    lineage_api_key_env: str = ""
    lineage_api_key_file: Path | None = None


def _cadence(values: Values, tier: str) -> CheckpointCadence:
    fix = f"checkpoint.{tier}: {{every_steps: 0 or more, interval_s: seconds (0: off), keep_last: 1 or more}}"
    every = values.get(
        f"checkpoint.{tier}.every_steps", int, fix=fix, check=lambda n: None if n >= 0 else "must be 0 or more"
    )
    interval = values.number(f"checkpoint.{tier}.interval_s", fix=fix, minimum=0)
    if every == 0 and interval == 0:
        raise values.fail(
            f"checkpoint.{tier}.interval_s", interval, "with every_steps 0 the tier is never written", fix
        )
    keep = values.get(f"checkpoint.{tier}.keep_last", int, check=positive, fix=fix)
    return CheckpointCadence(tier=tier, every_steps=every, interval_s=interval, keep_last=keep)


def _tape(values: Values) -> CheckpointTape:
    fix = "checkpoint.tape: {older_than: 0 (off) or the RGW steps kept off tape, retention_days: 0 or more}"
    older = values.get("checkpoint.tape.older_than", int, default=0, fix=fix, check=_not_negative)
    days = values.get("checkpoint.tape.retention_days", int, default=30, fix=fix, check=_not_negative)
    return CheckpointTape(older_than=older, retention_days=days)


def _lineage_key_source(values: Values, root: Path) -> tuple[str, Path | None]:
    env = values.get(
        "checkpoint.lineage_api_key_env",
        str,
        default="",
        fix="the NAME of an environment variable that holds the key (e.g. TIERLAKE_LINEAGE_API_KEY), or empty",
        check=lambda n: None if not n or n.replace("_", "").isalnum() else "must be an environment variable's name",
    )
    file = values.get(
        "checkpoint.lineage_api_key_file", str, default="", fix="a secrets file that holds only the key, or empty"
    )
    if env and file:
        raise values.fail(
            "checkpoint.lineage_api_key_file",
            file,
            "checkpoint.lineage_api_key_env is set too",
            "name the key's environment variable or its file, not both",
        )
    return env, (root / file) if file else None


def lineage_api_key(section: CheckpointSettings, env: Mapping[str, str]) -> tuple[Secret, str]:
    """The lineage endpoint's API key and the setting it came from (for messages); an empty key and "" when no
    setting names one. Called at the process edge with ``os.environ``. Raises ConfigError, without the key, when
    the named variable or file is missing or empty."""
    if section.lineage_api_key_env:
        setting = f"checkpoint.lineage_api_key_env = {section.lineage_api_key_env}"
        key = env.get(section.lineage_api_key_env, "").strip()
        where = f"the environment variable {section.lineage_api_key_env} is not set or empty"
    elif section.lineage_api_key_file is not None:
        setting = f"checkpoint.lineage_api_key_file = {section.lineage_api_key_file}"
        try:
            key = section.lineage_api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{setting}: the file cannot be read ({type(exc).__name__}). Fix: create it with the lineage "
                "endpoint's API key as its only content (mode 600), or clear the setting"
            ) from exc
        where = "the file is empty"
    else:
        return Secret(""), ""
    if not key:
        raise ConfigError(f"{setting}: {where}. Fix: put the lineage endpoint's API key there, or clear the setting")
    return Secret(key), setting


def _not_negative(number: int) -> str | None:
    return None if number >= 0 else "must be 0 or more"


def build_checkpoint(values: Values, root: Path, run_dir: Path) -> CheckpointSettings:
    local = values.get("checkpoint.local_dir", str, default="", fix="the node's SSD folder; empty: <run_dir>")
    edge = values.get("checkpoint.edge_dir", str, default="", fix="the edge NVMe folder; empty: <run_dir>")
    lineage = values.get("checkpoint.lineage_dir", str, default="", fix="a folder; empty: <run_dir>/lineage")
    url = values.get(
        "checkpoint.lineage_url",
        str,
        default="",
        fix="an http(s) URL such as http://marquez:5000, or empty for the file transport alone",
        check=lambda u: None if not u or u.startswith(("http://", "https://")) else "must start with http(s)://",
    )
    prefix = values.get(
        "checkpoint.prefix",
        str,
        fix="a key prefix in the lake bucket, e.g. training/checkpoints",
        check=lambda p: None if p.strip("/") and not p.startswith("/") else "must be a relative, non-empty prefix",
    )
    key_env, key_file = _lineage_key_source(values, root)
    return CheckpointSettings(
        local_dir=(root / local) if local else run_dir / "checkpoints" / "local",
        edge_dir=(root / edge) if edge else run_dir / "checkpoints" / "edge",
        prefix=prefix.strip("/"),
        lineage_dir=(root / lineage) if lineage else run_dir / "lineage",
        cadence=tuple(_cadence(values, tier) for tier in CHECKPOINT_TIERS),
        lineage_url=url.rstrip("/"),
        overhead_budget=values.number(
            "checkpoint.overhead_budget",
            fix="a share of the train step's time such as 0.05 (5%), or 0 for the cadence alone",
            minimum=0,
            maximum=0.5,
        ),
        tape=_tape(values),
        lineage_api_key_env=key_env,
        lineage_api_key_file=key_file,
    )
