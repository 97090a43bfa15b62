"""``tierlake lineage trace <run>[@<step>]``: a checkpoint -> the table versions it read -> the Kafka offsets."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from tierlake.commands import ExitCode, Subparsers
from tierlake.config import Settings
from tierlake.errors import ConfigError


def _target(text: str) -> tuple[str, int | None]:
    run, _, step = text.partition("@")
    if step and not step.isdigit():
        raise ConfigError(f"checkpoint {text!r}: the step after @ must be a number. Fix: e.g. myrun@1200 or myrun")
    return run, int(step) if step else None


def _trace(args: argparse.Namespace, settings: Settings) -> int:
    from tiers.s3 import delta_storage_options  # noqa: PLC0415
    from training.lineage import trace  # noqa: PLC0415
    from training.operations import find_manifest  # noqa: PLC0415
    from training.setup import checkpoint_tiers  # noqa: PLC0415

    run, step = _target(args.checkpoint)
    tier, manifest = find_manifest(checkpoint_tiers(settings), run, step)
    tables = trace(manifest, delta_storage_options(settings.s3))
    where = tier.where(run, manifest.step)
    if args.json:
        body = {
            "checkpoint": {"run": run, "step": manifest.step, "tier": tier.name, "where": where},
            "loader_state": manifest.loader_state,
            "code_version": manifest.code_version,
            "tables": [asdict(table) for table in tables],
        }
        sys.stdout.write(json.dumps(body) + "\n")
        return ExitCode.OK
    lines = [f"checkpoint {run}@{manifest.step} ({tier.name}: {where}), code {manifest.code_version or '?'}"]
    if manifest.loader_state:
        state = manifest.loader_state
        lines.append(f"  loader: epoch {state.get('epoch')}, samples consumed {state.get('samples_consumed')}")
    for table in tables:
        lines.append(f"  -> {table.uri} @ version {table.version} ({table.ingest_commits} ingest commits)")
        for topic, partitions in sorted(table.offsets.items()):
            for partition, (first, last) in sorted(partitions.items(), key=lambda item: int(item[0])):
                lines.append(f"     -> kafka {topic} partition {partition}: offsets {first}..{last}")
    if not tables:
        lines.append("  (the manifest names no table)")
    sys.stdout.write("\n".join(lines) + "\n")
    return ExitCode.OK


def register(sub: Subparsers) -> None:
    parser = sub.add_parser("lineage", help="lineage: what a checkpoint was trained on")
    actions = parser.add_subparsers(dest="action", required=True)
    trace = actions.add_parser("trace", help="checkpoint -> table versions -> Kafka offset ranges")
    trace.add_argument("checkpoint", help="<run>@<step>, or <run> for its newest committed checkpoint")
    trace.add_argument("--json", action="store_true", help="one JSON document")
    trace.set_defaults(handler=_trace)
