"""``tierlake report``: the whole lake on one offline HTML page (pipelines/observe), verdicts first, each WARN or ERR
with the value that triggered it and the command that fixes it."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from tierlake.commands import ExitCode, Subparsers, positive_float
from tierlake.config import Settings
from tierlake.errors import TierlakeError

if TYPE_CHECKING:
    from pipelines.observe.checkpoints import TrainingCheckpoints
    from pipelines.observe.dag_runs import MaintenanceRuns
    from training.operations import TierListing

_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$")


def duration_s(text: str) -> float:
    """argparse type for ``--since``: ``90s``, ``30m``, ``24h``, ``7d`` or ``2w``, or a moment in ISO 8601 with its
    zone (``2026-05-01T12:00:00Z``), as seconds before now (above 0)."""
    found = _DURATION.match(text)
    if found is not None:
        seconds = float(found.group(1)) * _UNITS[found.group(2)]
    else:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a duration or a moment with its zone. Fix: e.g. 30m, 24h, 7d or 2026-05-01T12:00:00Z"
            )
        seconds = time.time() - moment.timestamp()
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is no time before now. Fix: a window above 0, e.g. 24h")
    return seconds


def driver_running(settings: Settings) -> bool:
    """Whether this host's background ingest driver (``tierlake ingest start``) runs."""
    from tierlake.commands.ingest import _driver  # noqa: PLC0415 - the driver's pid file, as `ingest status` reads it

    daemon, _ = _driver(settings)
    return daemon.running_pid() is not None


def training_checkpoints(settings: Settings) -> TrainingCheckpoints:
    """The training checkpoints on every tier a restore reads (``tierlake checkpoint list``'s listing), for the report:
    ``pipelines`` may not import ``training``, so the CLI lists them and passes them in. ``list_checkpoints`` leaves
    out (and only logs) a tier it cannot list, so each tier is probed first and the error kept for its verdict."""
    from pipelines.observe.checkpoints import TrainingCheckpoints  # noqa: PLC0415
    from training.operations import list_checkpoints  # noqa: PLC0415
    from training.setup import restore_tiers  # noqa: PLC0415

    tiers = restore_tiers(settings)
    listings: list[TierListing] = []
    unreadable: dict[str, str] = {}
    for tier in tiers:
        try:
            tier.runs()
        except (TierlakeError, OSError) as exc:  # StorageError of a store, TapeError of the tape library
            unreadable[tier.name] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            continue
        listings += list_checkpoints([tier])
    return TrainingCheckpoints(tiers=[t.name for t in tiers], listings=listings, unreadable=unreadable)


def last_vacuums(settings: Settings) -> dict[str, float]:
    """Table path -> time of its newest VACUUM lineage record (``training.lineage_vacuum``: the one record of a
    VACUUM on this stack, which leaves no commit). One listing of ``_lineage/vacuum/``, then one read per table: the
    newest record's ``eventTime`` (when the VACUUM finished)."""
    from pipelines.observe.ingestion import client_for  # noqa: PLC0415
    from training.lineage_vacuum import VACUUM_PREFIX  # noqa: PLC0415

    client, bucket = client_for(settings), settings.s3.lake_bucket
    newest: dict[str, tuple[float, str]] = {}  # table -> (written, key)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{VACUUM_PREFIX}/"):
        for item in page.get("Contents", []):
            key = str(item.get("Key", ""))
            table = key[len(VACUUM_PREFIX) + 1 :].rpartition("/")[0]
            written = item["LastModified"].timestamp()
            if key.endswith(".json") and table and written >= newest.get(table, (0.0, ""))[0]:
                newest[table] = (written, key)
    found = {}
    for table, (_, key) in newest.items():
        event = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        found[table] = datetime.fromisoformat(str(event["eventTime"])).timestamp()
    return found


def maintenance_runs() -> MaintenanceRuns:
    """The maintenance DAG's last runs from this host's Airflow (its environment says where its DB is), or why not."""
    from pipelines.observe.dag_runs import MaintenanceRuns, airflow_db, dag_runs  # noqa: PLC0415

    found = airflow_db(os.environ, Path.home())
    return dag_runs(found) if isinstance(found, Path) else MaintenanceRuns(note=found)


def _report(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.observe import build_report, render_html  # noqa: PLC0415 - matplotlib, delta-rs, duckdb

    started = time.monotonic()
    report = build_report(
        settings,
        since_s=time.time() - args.since,
        grace_s=args.lag_grace_s,
        driver_running=driver_running(settings),
        extra_tables=args.table or [],
        training=partial(training_checkpoints, settings),
        vacuums=partial(last_vacuums, settings),
        maintenance=maintenance_runs,
    )
    page = render_html(report)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    problems = [v for v in report.verdicts if v.level]
    counts = {level: sum(1 for v in report.verdicts if v.level.name == level) for level in ("ERR", "WARN", "OK")}
    if args.json:
        summary = {
            "report": str(out.resolve()),
            "bytes": len(page.encode()),
            "seconds": round(time.monotonic() - started, 2),
            "level": report.level.name,
            "counts": counts,
            "problems": [
                {"level": v.level.name, "subject": v.subject, "value": v.value, "fix": v.fix} for v in problems
            ],
        }
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        for verdict in sorted(problems, key=lambda v: -v.level):
            sys.stdout.write(verdict.line() + "\n")
        tally = ", ".join(f"{n} {level}" for level, n in counts.items())
        sys.stdout.write(f"report: {out.resolve()} ({tally}; {time.monotonic() - started:.1f} s)\n")
    return ExitCode.DEGRADED if args.strict and report.level.name == "ERR" else ExitCode.OK


def register(sub: Subparsers) -> None:
    report = sub.add_parser("report", help="the lake at a glance: one offline HTML page with charts and verdicts")
    report.add_argument("--out", type=Path, default=Path("report.html"), help="where to write it (default report.html)")
    report.add_argument(
        "--since",
        type=duration_s,
        default=duration_s("24h"),
        help="the window: 24h, 30m, 7d, or since a moment (2026-05-01T12:00:00Z)",
    )
    report.add_argument(
        "--lag-grace-s",
        type=positive_float,
        default=60.0,
        help="records may wait at least this long before a partition whose offset does not move is STALLED",
    )
    report.add_argument("--table", action="append", help="a table to show besides those of conf/ (repeatable)")
    report.add_argument("--strict", action="store_true", help="exit 7 (degraded) when any verdict is ERR")
    report.add_argument("--json", action="store_true", help="a JSON summary on stdout instead of lines")
    report.set_defaults(handler=_report)
