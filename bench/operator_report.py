"""Operator report benchmark: ``tierlake report``'s build time and page size, against Spark's reconcile.

How long the report takes to gather and draw the whole lake, and how big the page is, against the peer an operator
runs today for one of its verdicts, ``tierlake ingest reconcile`` in Spark:

- report_build_s: :func:`pipelines.observe.build_report` plus :func:`render_html`, in this process (median of the
  rounds), on the stack the profile names, as the demo left it;
- report_cli_s: the ``tierlake report`` command end to end (a new process: imports, settings, gathering, drawing);
- report_bytes: the page's size (one file, charts inline);
- peer spark_reconcile_s: ``pipelines.checks.reconcile`` of the same entities in a new Spark session (session start
  included, as ``tierlake ingest reconcile`` pays it), giving one of the report's many verdicts.

Usage: ``python bench/operator_report.py [--quick]`` with the stack up and ingested into (``make demo``, or any
profile through ``TIERLAKE_PROFILE``). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.observe import build_report, render_html
from tierlake.config import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
SINCE_S = 24 * 3600.0


def time_report(settings: Settings, rounds: int) -> tuple[list[float], int, dict[str, Any]]:
    """Seconds per round of gathering and drawing, the page's bytes and what the last page showed."""
    took, size, shown = [], 0, {}
    for _ in range(rounds):
        started = time.monotonic()
        report = build_report(settings, since_s=time.time() - SINCE_S)
        page = render_html(report)
        took.append(time.monotonic() - started)
        size = len(page.encode())
        shown = {
            "verdicts": len(report.verdicts),
            "level": report.level.name,
            "tables": sum(1 for t in report.tables if t.exists),
            "partitions": len(report.lag),
            "charts": page.count('class="chart"'),
        }
    return took, size, shown


def time_cli(profile: str | None) -> float:
    with tempfile.TemporaryDirectory() as folder:
        argv = [sys.executable, "-m", "tierlake.cli", "report", "--out", f"{folder}/report.html", "--json"]
        env = {**os.environ, **({"TIERLAKE_PROFILE": profile} if profile else {})}
        started = time.monotonic()
        subprocess.run(argv, cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
        return time.monotonic() - started


def time_spark_reconcile(settings: Settings) -> float:
    from pipelines.checks.reconcile import reconcile  # noqa: PLC0415
    from pipelines.session import spark_session  # noqa: PLC0415

    started = time.monotonic()
    spark = spark_session(settings, app_name="bench-operator-report")
    try:
        for entity in settings.entities:
            reconcile(spark, settings, entity=entity)
    finally:
        spark.stop()
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round of each (under 3 minutes on 2 cores)")
    parser.add_argument("--profile", help="config profile (default TIERLAKE_PROFILE or local)")
    args = parser.parse_args()
    settings = load_settings(args.profile)
    rounds = 1 if args.quick else 3
    load_before = os.getloadavg()[0]
    took, size, shown = time_report(settings, rounds)
    if not shown["tables"]:
        sys.stderr.write("no table in the lake: run `make demo` (or ingest into this profile's stack) first\n")
        raise SystemExit(2)
    cli_s = time_cli(args.profile)
    spark_s = time_spark_reconcile(settings)
    build_s = statistics.median(took)
    result = {
        "bench": "operator_report",
        "figures": {
            "report_build_s": round(build_s, 2),
            "report_cli_s": round(cli_s, 2),
            "report_bytes": size,
            "spark_reconcile_s": round(spark_s, 2),
        },
        "ratios": {"spark_reconcile_over_report_build": round(spark_s / build_s, 2) if build_s else None},
        "setup": {
            "quick": args.quick,
            "rounds": rounds,
            "since_s": SINCE_S,
            "shown": shown,
            "load_avg_1m_before": round(load_before, 2),
            "load_avg_1m_after": round(os.getloadavg()[0], 2),
        },
    }
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
