"""`tierlake archive ...` as a user runs it, against Ceph RGW: a run killed with -9 while writing leaves
cartridges that recover to their last consistent index and no catalog row; a re-run completes; query, locate,
verify, hold and bad input behave as documented (one JSON document, one-line errors)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from infra import procs
from infra.stack import LocalStack
from tests.e2e.cli import tierlake
from tierlake.config import Settings, load_settings
from tiers.s3 import delta_storage_options
from tiers.tape.library import Library

REPO = Path(__file__).resolve().parents[2]
DAYS = ["2020-02-01", "2020-02-02"]


def _env(tmp_path: Path, table: str, **extra: str) -> dict[str, str]:
    rules = "partition_column: day, key_column: station_id, cold_by: age, cold_after_days: 30, retention_days: 0"
    policy = f"{{{table}: {{{rules}}}}}"
    return {
        **os.environ,
        "TIERLAKE_PROFILE": "ci",
        "TIERLAKE_ARCHIVE__LIBRARY_DIR": str(tmp_path / "tape"),
        "TIERLAKE_ARCHIVE__CATALOG_URI": str(tmp_path / "catalog"),
        "TIERLAKE_ARCHIVE__AUDIT_URI": str(tmp_path / "audit"),
        "TIERLAKE_ARCHIVE__STAGING_DIR": str(tmp_path / "staging"),
        "TIERLAKE_ARCHIVE__BLOCK_SIZE": "65536",
        "TIERLAKE_ARCHIVE__CARTRIDGES_PER_SITE": "2",
        "TIERLAKE_ARCHIVE__TABLES": policy,
        **extra,
    }


def _tierlake(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return tierlake(["archive", *args], env=env)


def _table(settings: Settings, table: str) -> None:
    uri = f"s3://{settings.s3.lake_bucket}/{table}"
    for day in DAYS:
        n = 4000
        data = pa.table(
            {
                "station_id": [f"st-{i % 50:03d}" for i in range(n)],
                "blob": [os.urandom(600).hex() for _ in range(n)],  # incompressible: about 5 MB per partition
                "day": [day] * n,
            }
        )
        write_deltalake(
            uri, data, mode="append", partition_by=["day"], storage_options=delta_storage_options(settings.s3)
        )


def test_kill_9_mid_archive_recovers_and_rerun_completes(settings: Settings, tmp_path: Path) -> None:
    table = f"tests/archive-cli/{uuid.uuid4().hex[:8]}/events"
    _table(settings, table)
    slow = _env(tmp_path, table, TIERLAKE_ARCHIVE__DRIVE_MB_S="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tierlake.cli", "archive", "run", "--table", table, "--json"],
        cwd=REPO,
        env=slow,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cartridge = tmp_path / "tape" / "site-a" / "cartridges" / "A00001"
    deadline = time.monotonic() + 240
    while not (cartridge / "1_12_R").exists():  # a few data records past generation 1's index construct
        assert proc.poll() is None, "the run ended before it was killed; make the table larger"
        assert time.monotonic() < deadline, "the run never started writing"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cartridge / "1_7_E").exists()  # the kill left the data partition without an end of data

    env = _env(tmp_path, table)
    rows = _tierlake(env, "query", "SELECT count(*) AS n FROM catalog", "--json")
    assert rows.returncode == 0, rows.stderr
    assert json.loads(rows.stdout)["rows"] == [{"n": 0}]  # no row claims data that was not verified

    archive = load_settings("ci", env=env).archive
    library = Library(archive)
    for barcode in ("A00001", "B00001"):
        with library.mount(barcode) as volume:  # mounting recovers to the last consistent index
            assert volume.generation() == 1
            assert volume.ls() == []

    rerun = _tierlake(env, "run", "--table", table, "--json")
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["all_verified"]
    assert report["partitions"] == [f"day={d}" for d in DAYS]
    verify = _tierlake(env, "verify", "--json")
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["bad"] == []

    located = _tierlake(env, "locate", "--table", table, "--key", "st-007", "--json")
    assert located.returncode == 0, located.stderr
    assert {loc["site"] for loc in json.loads(located.stdout)["locations"]} == {"site-a", "site-b"}
    text = _tierlake(env, "query", "SELECT cartridge, count(*) AS files FROM catalog GROUP BY 1 ORDER BY 1")
    assert "A00001" in text.stdout
    assert "B00001" in text.stdout

    held = _tierlake(env, "hold", "--table", table, "--reason", "audit 7")
    assert held.returncode == 0, held.stderr
    refused = _tierlake(env, "purge", "--table", table, "--execute")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert "legal hold" in refused.stderr
    retention = json.loads(_tierlake(env, "retention", "--json").stdout)
    assert {h["reason"] for h in retention["held"]} == {"audit 7"}


def test_bad_input_is_one_line(settings: Settings, tmp_path: Path) -> None:
    env = _env(tmp_path, "tests/none")
    for args, needle in (
        (("select", "--table", "tests/unknown"), "no cold-tier policy"),
        (("query", "SELEC nothing"), "query failed"),
        (("verify", "--cartridge", "Z99999"), "holds nothing"),
        (("restore", "--file", "x", "--to", "s3"), "nothing in the catalog"),
        (("hold", "--table", "t", "--reason", " "), "needs a reason"),
    ):
        result = _tierlake(env, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("tierlake: error: ")
        assert result.stderr.count("\n") == 1
        assert needle in result.stderr


def test_rgw_restarted_mid_archive_loses_and_doubles_nothing(stack: LocalStack, tmp_path: Path) -> None:
    """RGW killed (kill -9) once the run has begun staging, and started again: the run retries within its bounds
    or stops with a clear error; a re-run completes, verify is clean, and the catalog holds each file once."""
    table = f"tests/archive-rgw/{uuid.uuid4().hex[:8]}/events"
    _table(stack.settings, table)
    env = _env(tmp_path, table, TIERLAKE_ARCHIVE__DRIVE_MB_S="2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tierlake.cli", "archive", "run", "--table", table, "--json"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    rgw = next(d for d in stack.ceph.daemons() if d.name == "ceph-client.rgw.gw")
    staging = tmp_path / "staging"
    deadline = time.monotonic() + 240
    try:
        while not any(p.is_file() and p.name != "journal.json" for p in staging.rglob("*")):  # staging has begun
            assert proc.poll() is None, "the run ended before RGW was killed"
            assert time.monotonic() < deadline, "the run never started staging"
            time.sleep(0.05)
        procs.kill9(rgw)
        time.sleep(2)  # the outage itself: RGW is down for this long before it is started again
    finally:
        stack.up()
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:  # stopped: one clear line, then a re-run completes
        assert err.strip().splitlines()[-1].startswith("tierlake: error:"), err[-2000:]
        rerun = _tierlake(_env(tmp_path, table), "run", "--table", table, "--json")
        assert rerun.returncode == 0, rerun.stderr
        out = rerun.stdout
    assert json.loads(out)["all_verified"]
    verify = _tierlake(_env(tmp_path, table), "verify", "--json")
    assert verify.returncode == 0, verify.stderr
    assert json.loads(verify.stdout)["bad"] == []
    rows = _tierlake(
        _env(tmp_path, table),
        "query",
        "SELECT count(*) AS n, count(DISTINCT key || '/' || site) AS distinct_copies FROM catalog",
        "--json",
    )
    assert rows.returncode == 0, rows.stderr
    counted = json.loads(rows.stdout)["rows"][0]
    assert counted["n"] == counted["distinct_copies"] > 0, counted
