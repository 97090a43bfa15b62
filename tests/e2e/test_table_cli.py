"""`tierlake table ...` end to end: the CLI as a user runs it, against the real stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.lake_tables import small_table
from tierlake.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tierlake.cli", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def _table(settings: Settings, appends: int) -> str:
    return small_table(settings, "cli", appends=appends, rows=10)


def test_vacuum_under_seven_days_is_refused_with_the_fix(settings: Settings) -> None:
    table = _table(settings, appends=1)
    done = _cli("table", "vacuum", table, "--retention-hours", "24")
    assert done.returncode == 2
    assert done.stderr.startswith("tierlake: error: VACUUM retention of 24 hours is under the 168-hour (7-day) minimum")
    assert "--allow-short-retention" in done.stderr
    assert "Traceback" not in done.stderr


def test_optimize_history_stats_and_mirror(settings: Settings, tmp_path: Path) -> None:
    table = _table(settings, appends=4)
    optimized = _cli("table", "optimize", table, "--json")
    assert optimized.returncode == 0, optimized.stderr
    (report,) = json.loads(optimized.stdout)
    assert (report["files_before"], report["files_after"], report["rows_after"]) == (4, 1, 40)

    history = _cli("table", "history", f"s3://{settings.s3.lake_bucket}/{table}", "--limit", "2", "--json")
    assert [e["operation"] for e in json.loads(history.stdout)] == ["OPTIMIZE", "WRITE"]

    metrics = tmp_path / "tables.prom"
    stats = _cli("table", "stats", table, "--metrics-file", str(metrics))
    assert stats.returncode == 0, stats.stderr
    assert f"{table}: version 4, 1 files" in stats.stdout
    assert f'tierlake_table_rows{{table="{table}"}} 40.0' in metrics.read_text()

    mirrored = _cli("table", "mirror", table)
    assert mirrored.returncode == 0, mirrored.stderr
    assert f"{table} version 4: 1 of 1 data files" in mirrored.stdout
    assert "rows 40 = 40; verified" in mirrored.stdout


def test_bad_input_names_the_value_and_the_fix(settings: Settings) -> None:
    missing = _cli("table", "history", "scratch/never_written")
    assert missing.returncode == 2
    assert "no Delta table at s3://tierlake-lake/scratch/never_written" in missing.stderr
    both = _cli("table", "optimize", "silver/ev", "--all")
    assert both.returncode == 2
    assert "give table paths or --all, not both" in both.stderr
    elsewhere = _cli("table", "vacuum", "s3://some-bucket/t")
    assert "not the lake bucket" in elsewhere.stderr
