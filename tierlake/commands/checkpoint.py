"""``tierlake checkpoint list|show|verify|restore|promote|archive|gc``: training checkpoints over the tiers
(training/)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from tqdm import tqdm

from tierlake.commands import ExitCode, Subparsers, non_negative_int
from tierlake.config import Settings

if TYPE_CHECKING:
    from training.tiers import CheckpointTier


def _tiers(settings: Settings, *, second_site: bool = True) -> list[CheckpointTier]:
    """The checkpoint tiers, then the second site's copy where the mirror keeps one (read only: nothing here writes
    it but ``promote --to mirror``; gc leaves it to the mirror)."""
    from training.setup import checkpoint_tiers, restore_tiers  # noqa: PLC0415 - torch only for this command

    return restore_tiers(settings) if second_site else checkpoint_tiers(settings)


def _bar(args: argparse.Namespace, total: int | None) -> tqdm[NoReturn]:
    """A progress bar on stderr for copies (none with --json)."""
    return tqdm(total=total, unit="B", unit_scale=True, desc="copying", disable=args.json, file=sys.stderr)


def _write(args: argparse.Namespace, data: object, text: str) -> None:
    sys.stdout.write((json.dumps(data) if args.json else text) + "\n")


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from training.operations import list_checkpoints  # noqa: PLC0415

    listings = list_checkpoints(_tiers(settings), args.run)
    lines = [
        f"{item.tier:6} {item.run}: committed {list(item.committed)}"
        + (f", unfinished {list(item.uncommitted)}" if item.uncommitted else "")
        for item in listings
    ]
    _write(args, [asdict(item) for item in listings], "\n".join(lines) or "no checkpoints")
    return ExitCode.OK if listings else ExitCode.NOT_RUNNING


def _show(args: argparse.Namespace, settings: Settings) -> int:
    from training.operations import find_manifest  # noqa: PLC0415

    tier, manifest = find_manifest(_tiers(settings), args.run, args.step)
    body = json.loads(manifest.to_json()) | {"tier": tier.name, "where": tier.where(args.run, manifest.step)}
    sys.stdout.write(json.dumps(body, indent=None if args.json else 1) + "\n")
    return ExitCode.OK


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    from training.operations import verify_run  # noqa: PLC0415

    verdicts = verify_run(_tiers(settings), args.run, args.step)
    text = (
        "\n".join(f"{v.tier:6} step {v.step}: {'ok' if v.ok else 'BAD: ' + v.reason}" for v in verdicts)
        or f"run {args.run!r} has no committed checkpoint"
    )
    _write(args, [asdict(v) for v in verdicts], text)
    if not verdicts:
        return ExitCode.NOT_RUNNING
    return ExitCode.OK if all(v.ok for v in verdicts) else ExitCode.INCOMPLETE


def _restore(args: argparse.Namespace, settings: Settings) -> int:
    from training.operations import find_manifest, restore_to  # noqa: PLC0415

    tiers = _tiers(settings)
    with _bar(args, find_manifest(tiers, args.run, args.step)[1].total_bytes) as bar:
        source, step = restore_to(tiers, args.run, args.to, args.step, progress=bar.update)
    _write(
        args,
        {"run": args.run, "step": step, "from": source, "to": str(args.to)},
        f"restored step {step} of run {args.run} from tier {source} to {args.to} (dcp.load reads it with "
        "torch.distributed.checkpoint.FileSystemReader)",
    )
    return ExitCode.OK


def _promote(args: argparse.Namespace, settings: Settings) -> int:
    from training.operations import copy_step, find_manifest, tier_named  # noqa: PLC0415

    tiers = _tiers(settings)
    target = tier_named(tiers, args.to)
    if args.step in target.steps(args.run):
        _write(
            args,
            {"run": args.run, "step": args.step, "from": None, "to": target.name, "refused": []},
            f"step {args.step} of run {args.run} is already committed on {target.name}: nothing to copy",
        )
        return ExitCode.OK
    total = find_manifest(tiers, args.run, args.step)[1].total_bytes  # NotFound, with the fix, if no tier has it
    with _bar(args, total) as bar:
        source, refused = copy_step(tiers, args.run, args.step, target, progress=bar.update)
    _write(
        args,
        {"run": args.run, "step": args.step, "from": source, "to": target.name, "refused": refused},
        f"promoted step {args.step} of run {args.run} from {source} to {target.name}"
        + "".join(f"\n  refused: {reason}" for reason in refused),
    )
    return ExitCode.OK


def _archive(args: argparse.Namespace, settings: Settings) -> int:
    from training.operations import archive_steps, plan_archive, tier_named  # noqa: PLC0415

    tiers = _tiers(settings)
    rgw, tape = tier_named(tiers, "rgw"), tier_named(tiers, "tape")
    older_than = settings.checkpoint.tape.older_than if args.older_than is None else args.older_than
    if older_than == 0:
        text = "the tape policy is off (checkpoint.tape.older_than: 0; --older-than N for once): nothing to archive"
        _write(args, {"older_than": 0, "runs": []}, text)
        return ExitCode.OK
    runs, lines = [], []
    for run in [args.run] if args.run else rgw.runs():
        plan = plan_archive(rgw, tape, run, older_than)
        done: list[tuple[int, str]] = []
        if not args.dry_run and plan.steps:
            with _bar(args, None) as bar:  # bytes copied; the manifests are not read first
                done = archive_steps(tiers, tape, plan, progress=bar.update)
        runs.append({"run": run, "steps": list(plan.steps), "on_tape": list(plan.on_tape)})
        runs[-1]["archived"] = [{"step": step, "from": source} for step, source in done]
        if not plan.steps:
            lines.append(f"run {run}: nothing to archive (on tape: {list(plan.on_tape)})")
        elif args.dry_run:
            lines.append(f"run {run}: would archive steps {list(plan.steps)} to tape (dry run)")
        else:
            lines += [f"run {run}: archived step {step} to tape from {source}" for step, source in done]
    _write(args, {"older_than": older_than, "runs": runs}, "\n".join(lines) or "no checkpoints on rgw")
    return ExitCode.OK


def _gc(args: argparse.Namespace, settings: Settings) -> int:
    from training.operations import apply_gc, plan_archive, plan_gc, tier_named  # noqa: PLC0415
    from training.setup import tape_tier, tier_policies  # noqa: PLC0415

    tiers = _tiers(settings, second_site=False)
    protected: dict[str, tuple[int, ...]] = {}
    if settings.checkpoint.tape.older_than:  # no RGW step the tape policy wants goes before it is on tape
        rgw = tier_named(tiers, "rgw")
        protected[rgw.name] = plan_archive(
            rgw, tape_tier(settings), args.run, settings.checkpoint.tape.older_than
        ).steps
    plan = plan_gc(tiers, tier_policies(settings), args.run, protected=protected)
    if args.apply:
        apply_gc(tiers, plan, args.run)
    verb = "removed" if plan.applied else "would remove (dry run; --apply removes)"
    lines = [f"{tier:6} {verb}: steps {steps}" for tier, steps in plan.remove.items()] or ["nothing to remove"]
    _write(args, asdict(plan), "\n".join(lines))
    return ExitCode.OK


def register(sub: Subparsers) -> None:
    parser = sub.add_parser(
        "checkpoint", help="training checkpoints: list, show, verify, restore, promote, archive, gc"
    )
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="committed and unfinished steps per tier")
    listing.add_argument("--run", help="one run (default: every run)")
    listing.set_defaults(handler=_list)
    show = actions.add_parser("show", help="a step's manifest (default: the newest committed step)")
    show.add_argument("run")
    show.add_argument("step", nargs="?", type=non_negative_int)
    show.set_defaults(handler=_show)
    verify = actions.add_parser("verify", help="check every committed copy against its manifest (sizes, CRC-32C)")
    verify.add_argument("run")
    verify.add_argument("--step", type=non_negative_int)
    verify.set_defaults(handler=_verify)
    restore = actions.add_parser("restore", help="copy the newest good checkpoint into a folder")
    restore.add_argument("run")
    restore.add_argument("--to", type=Path, required=True, help="an empty or new folder")
    restore.add_argument("--step", type=non_negative_int, help="this step instead of the newest")
    restore.set_defaults(handler=_restore)
    promote = actions.add_parser("promote", help="copy one committed step to a tier (local, edge, rgw, tape)")
    promote.add_argument("run")
    promote.add_argument("step", type=non_negative_int)
    promote.add_argument("--to", required=True, help="the target tier: local, edge, rgw or tape")
    promote.set_defaults(handler=_promote)
    archive = actions.add_parser(
        "archive", help="the tape policy: RGW steps older than the newest checkpoint.tape.older_than go to tape"
    )
    archive.add_argument("run", nargs="?", help="one run (default: every run on RGW)")
    archive.add_argument("--older-than", type=non_negative_int, help="this many newest steps stay off tape (once)")
    archive.add_argument("--dry-run", action="store_true", help="only say which steps would go")
    archive.set_defaults(handler=_archive)
    gc = actions.add_parser("gc", help="keep-last-K per tier (conf/ checkpoint.<tier>.keep_last); dry run by default")
    gc.add_argument("run")
    gc.add_argument("--apply", action="store_true", help="remove; without it, only say what would go")
    gc.set_defaults(handler=_gc)
    for each in (listing, show, verify, restore, promote, archive, gc):
        each.add_argument("--json", action="store_true", help="one JSON document")
