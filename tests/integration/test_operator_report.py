"""``tierlake report`` on a real stack with three problems injected, opened in headless Chromium.

The lake: EV records ingested by a real ingest query, then more records produced while no driver runs (a driver
stopped behind its topic); a table of 500 small files; a table archived to two virtual tape sites whose first copy
is then damaged and verified (a cartridge whose verify failed). The report, built by the CLI, must show the matching
ERR and WARN verdicts with their fixes, stay balanced where nothing is wrong, and load in Chromium without a console
error or a request leaving the page, every chart drawn. The page and its screenshot are kept under the
repository's ``test-artifacts/`` (ignored by git).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from pipelines.ingest.stream import run_ingest_until_caught_up
from pipelines.synthetic.produce import produce_events
from tests.integration.browser import open_in_chromium
from tests.lake_tables import scratch_archive
from tierlake.config import ArchiveTable, Settings
from tiers.archive import compliance
from tiers.archive.archiver import run
from tiers.archive.catalog import Catalog
from tiers.archive.context import ArchiveContext
from tiers.s3 import delta_storage_options
from tiers.tape.library import Library

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

REPO = Path(__file__).resolve().parents[2]
GRACE_S = 5.0
EXPECTED_CHARTS = {
    "freshness", "records_per_second", "quarantine_by_rule", "kafka_lag", "table_files", "cache_counters", "tape_sites",
}  # fmt: skip


def read_through_the_cache(settings: Settings, table: str) -> None:
    """One object read twice through the node's edge cache (a fill, then a hit), so the cache section has counters."""
    from tiers.cache import cache_from_settings  # noqa: PLC0415

    cache = cache_from_settings(settings.cache.options, settings.s3)
    for _ in range(2):
        cache.cat(settings.s3.lake_bucket, f"{table}/_delta_log/00000000000000000000.json")


def small_files_table(settings: Settings) -> str:
    """A table of 500 files of one row each, in one commit (one partition per row)."""
    table = f"scratch/report_small_{uuid.uuid4().hex[:8]}"
    rows = pa.table({"part": list(range(500)), "power_kw": [float(n) for n in range(500)]})
    uri = f"s3://{settings.s3.lake_bucket}/{table}"
    write_deltalake(uri, rows, partition_by=["part"], mode="append", storage_options=delta_storage_options(settings.s3))
    return table


def damaged_archive(settings: Settings, folder: Path) -> tuple[Settings, str]:
    """A small table archived to two sites; one byte of its first copy flipped, then verified (which fails)."""
    table = f"tests/report/{uuid.uuid4().hex[:8]}/cold"
    policy = ArchiveTable(
        table=table,
        partition_column="day",
        key_column="station_id",
        cold_by="age",
        cold_after_days=30,
        retention_days=0,
    )
    archive = scratch_archive(settings.archive, folder, {table: policy})
    cold = dataclasses.replace(settings, archive=archive)
    context = ArchiveContext(archive=archive, s3=settings.s3, cache=settings.cache.options)
    day = {
        "station_id": [f"st-{n % 7}" for n in range(300)],
        "kwh": [n * 0.5 for n in range(300)],
        "day": ["2020-01-01"] * 300,
    }
    uri = f"s3://{settings.s3.lake_bucket}/{table}"
    write_deltalake(
        uri, pa.table(day), partition_by=["day"], mode="append", storage_options=delta_storage_options(settings.s3)
    )
    catalog = Catalog(archive.catalog_uri, archive.audit_uri, s3=settings.s3)
    assert run(context, catalog, table, ["day=2020-01-01"], progress=False).all_verified
    row = next(r for r in catalog.rows().to_pylist() if r["copy"] == 1)
    record = Library(archive).cartridge_dir(row["cartridge"]) / f"1_{row['start_block']}_R"
    data = bytearray(record.read_bytes())
    data[row["byte_offset"] + 10] ^= 0xFF
    record.write_bytes(bytes(data))
    assert compliance.verify(context, catalog, None, progress=False)["bad"], "the damaged copy must fail its verify"
    return cold, str(row["cartridge"])


def cli_env(cold: Settings) -> dict[str, str]:
    """The test stack's settings, with the archive of this test."""
    return {
        **os.environ,
        "TIERLAKE_PROFILE": "ci",
        "TIERLAKE_ARCHIVE__LIBRARY_DIR": str(cold.archive.library_dir),
        "TIERLAKE_ARCHIVE__CATALOG_URI": cold.archive.catalog_uri,
        "TIERLAKE_ARCHIVE__AUDIT_URI": cold.archive.audit_uri,
    }


def scrape_metrics_serve(cold: Settings, extra_table: str, *, since: str) -> str:
    """Start ``tierlake metrics serve`` on a free loopback port, scrape /metrics once, stop it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "tierlake.cli", "metrics", "serve", "--port", str(port)),
            *("--since", since, "--lag-grace-s", str(GRACE_S), "--table", extra_table),
        ],
        cwd=REPO,
        env=cli_env(cold),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=120) as response:
                    return str(response.read().decode())
            except (ConnectionError, urllib.error.URLError):
                assert server.poll() is None, f"metrics serve exited: {server.stderr.read() if server.stderr else ''}"
                assert time.monotonic() < deadline, "metrics serve did not answer within 120 s"
                time.sleep(1)
    finally:
        server.terminate()
        server.wait(timeout=30)


def report_cli(cold: Settings, out: Path, extra_table: str, *, since: str) -> dict[str, Any]:
    env = cli_env(cold)
    argv = ["report", "--out", str(out), "--since", since, "--lag-grace-s", str(GRACE_S), "--table", extra_table]
    result = subprocess.run(
        [sys.executable, "-m", "tierlake.cli", *argv, "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return summary


def problem(summary: dict[str, Any], subject: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [p for p in summary["problems"] if p["subject"] == subject]
    assert found, f"no WARN/ERR on {subject!r} in {json.dumps(summary['problems'], indent=1)}"
    return found[0]


def check_in_chromium(out: Path, tmp_path: Path, settings: Settings) -> None:
    """The page in headless Chromium: no console error, nothing loaded but itself, every expected chart present with
    data drawn (not only axes); the page and its screenshot kept under the repository's ``test-artifacts/``."""
    shot = tmp_path / "report.png"
    visit = open_in_chromium(out, screenshot=shot, profile=tmp_path / "chromium")
    assert visit.console_errors == []
    assert visit.requests == [out.resolve().as_uri()], "the page must load nothing but itself"
    drawn = {chart["name"]: chart["drawn"] for chart in visit.charts if chart["width"] > 100}
    missing = EXPECTED_CHARTS - {name for name, n in drawn.items() if n > 0}
    assert not missing, f"charts absent or with no data drawn: {sorted(missing)}; all: {visit.charts}"
    assert len(drawn) == len(visit.charts), f"a chart narrower than 100 px: {visit.charts}"
    assert all(n > 0 for n in drawn.values()), f"a chart with no data drawn: {visit.charts}"
    assert shot.stat().st_size > 10_000
    kept = Path(__file__).resolve().parents[2] / "test-artifacts"  # ignored by git; outlives the run folder's resets
    kept.mkdir(exist_ok=True)
    for artifact in (shot, out):
        shutil.copy2(artifact, kept / artifact.name)
    print(f"report and screenshot: {kept}")


@pytest.mark.slow
def test_report_of_a_lake_with_injected_problems_in_chromium(
    settings: Settings, spark: SparkSession, tmp_path: Path
) -> None:
    # The window starts with this test: commits of earlier tests to the same checkpoint would widen the span of the
    # lag window, and a stall is judged against that span (as Burrow does).
    started = time.time()
    produce_events(settings, dataset="ev", events=300, bad_fraction=0.05, progress=False, seed=24)
    counts = run_ingest_until_caught_up(spark, settings, entity="ev")
    assert counts["bronze"] >= 300
    # a second bronze commit in the window, so records per second has a step to draw
    produce_events(settings, dataset="ev", events=100, bad_fraction=0.05, progress=False, seed=26)
    assert run_ingest_until_caught_up(spark, settings, entity="ev")["bronze"] >= 100
    stopped_at = time.time()
    produce_events(settings, dataset="ev", events=200, progress=False, seed=25)  # no driver runs now
    produced_at = time.time()
    small = small_files_table(settings)
    read_through_the_cache(settings, small)
    cold, cartridge = damaged_archive(settings, tmp_path)
    # A stall is judged against the span of the window's commits (at most stopped_at - started): the records left
    # waiting must be older than that, and than twice the grace.
    time.sleep(max(0.0, produced_at + max(2 * GRACE_S, stopped_at - started) + 1 - time.time()))

    out = tmp_path / "report.html"
    since = datetime.fromtimestamp(started - 1, UTC).isoformat()
    summary = report_cli(cold, out, small, since=since)

    stalled = [p for p in summary["problems"] if p["subject"].startswith("ev.telemetry/")]
    assert stalled, summary["problems"]
    assert all(p["level"] == "ERR" and p["value"].startswith("STALLED") for p in stalled)
    assert sum(int(p["value"].split("lag ")[1].split()[0]) for p in stalled) == 200
    assert all("`tierlake ingest start`" in p["fix"] for p in stalled)
    files = problem(summary, small)
    assert files["level"] == "WARN"
    assert "500 of 500 files are small" in files["value"]
    assert f"`tierlake table optimize {small}`" in files["fix"]
    tape = problem(summary, f"cartridge {cartridge}")
    assert tape["level"] == "ERR"
    assert f"`tierlake archive verify --cartridge {cartridge}`" in tape["fix"]
    assert not [p for p in summary["problems"] if p["subject"].startswith("reconcile ev.telemetry")]
    assert summary["bytes"] < 2_000_000

    page = out.read_text()
    for text in ("STALLED", "500 of 500 files are small", f"cartridge {cartridge}", "<th>newest committed step</th>"):
        assert text in page
    check_in_chromium(out, tmp_path, settings)

    metrics = scrape_metrics_serve(cold, small, since=since)
    assert re.search(r'tierlake_kafka_lag_state\{partition="\d",state="STALLED",topic="ev.telemetry"\} 1.0', metrics)
    assert f'tierlake_table_small_files{{table="{small}"}} 500.0' in metrics
    assert f'tierlake_archive_verify_bad_files{{cartridge="{cartridge}"}} 1.0' in metrics
    assert f'tierlake_table_max_files_per_partition{{table="{small}"}} 1.0' in metrics  # table stats' names, folded in
    assert re.search(r'tierlake_training_checkpoints\{tier="local"\} \d+\.0', metrics)
