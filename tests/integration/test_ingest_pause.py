"""A driver paused past its lease (SIGSTOP, as a long GC or a frozen VM would) after its lease check and before its
commit, a second driver taking over, then the first resumed (SIGCONT): the first commits nothing more. Meanwhile
OPTIMIZE compacts the silver table in a loop beside both drivers.

The pause is injected at the worst moment (``pipelines.ingest.ledger``'s fault point, after the lease check and
before Delta plans the commit). What stops the resumed driver's commit is either its lease thread (it finds the lease
taken over and ends the driver) or the storage-layer fence (the Spark log store's deadline check right before its
PUT, tested on its own in ``test_delta_commits``), whichever comes first. Every record lands exactly once and
reconcile balances.

Also: two drivers of one entity started at the same moment, twice: one writes, the other refuses naming the owner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from infra.stack import LocalStack
from pipelines.checks.reconcile import reconcile
from pipelines.ingest.ledger import PAUSE_AFTER_GATE_ENV
from pipelines.synthetic.datasets import EV_SPACING_S, good_records, recent_start
from tests.integration.test_ingest import REPO, Maintenance, Oracle

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from pipelines.synthetic.datasets import Record

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TTL_S = 6  # fences 4 s after its last renewal
ROUNDS = 3  # two drivers started at once, this many times


def _wait(what: str, done: Callable[[], bool], *, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _state(pid: int) -> str:
    """The process's state letter (T: stopped); "gone" once it has exited."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def _driver_envs(
    stack: LocalStack, oracle: Oracle, tmp_path: Path, trigger: Path
) -> tuple[dict[str, str], dict[str, str]]:
    """The first driver's environment (it pauses at the fault point once ``trigger`` exists) and the second's."""
    base = {**os.environ, **oracle.env(), "TIERLAKE_MAINTENANCE__LEASE_TTL_S": str(TTL_S)}
    first_env = {**base, PAUSE_AFTER_GATE_ENV: str(trigger)}
    # The second driver: its own run folder (pid, status, logs), the same Kafka, RGW, tables and checkpoints.
    second_env = {
        **base,
        "TIERLAKE_RUN_DIR": str(tmp_path / "second"),
        "TIERLAKE_S3__CREDENTIALS_FILE": str(stack.settings.s3.credentials_file),
    }
    return first_env, second_env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``tierlake`` (the ci profile) in ``env``, as a driver's own CLI would be run."""
    argv = [sys.executable, "-m", "tierlake.cli", "--profile", "ci", *args]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=600)


def _silver_ids(oracle: Oracle) -> Counter[str]:
    """How many times each event id is in the entity's silver table (none before its first batch)."""
    try:
        return Counter(row["event_id"] for row in oracle.table("silver"))
    except Exception:  # not there yet
        return Counter()


def _assert_landed_once_and_first_stopped(
    spark: SparkSession, oracle: Oracle, records: list[Record], first_log: Path
) -> None:
    """Every record is in silver exactly once, the first driver said why it ended, and reconcile balances."""
    ids = _silver_ids(oracle)
    assert set(ids) == {r.event_id for r in records}
    assert max(ids.values()) == 1, [k for k, n in ids.items() if n > 1][:5]
    log = first_log.read_text(errors="replace")
    assert "stopped for good: its lease was taken over" in log, "the first driver ended, saying why"
    # The library call behind `tierlake ingest reconcile`, in the session's Spark (the CLI's exit code and output
    # are the README test's and test_cli's): no JVM of its own to start.
    assert reconcile(spark, oracle.settings(), entity=oracle.entity)["balanced"]


def test_a_driver_resumed_after_another_took_over_commits_nothing_more(
    stack: LocalStack, spark: SparkSession, tmp_path: Path
) -> None:
    oracle = Oracle(stack)
    trigger = tmp_path / "pause-now"
    first_env, second_env = _driver_envs(stack, oracle, tmp_path, trigger)
    records = list(good_records("ev", 600, seed=57, start=recent_start(600, EV_SPACING_S)))
    oracle.produce(records[:200])
    started = _cli(first_env, "ingest", "start", "--entity", oracle.entity, "--trigger-s", "1")
    assert started.returncode == 0, started.stderr[-3000:]
    first = int((stack.settings.run_dir / "ingest" / "driver.pid").read_text().split()[0])
    first_log = stack.settings.run_dir / "ingest" / "driver.log"
    second_started = False
    with Maintenance(oracle) as beside:  # OPTIMIZE and log checkpoints beside both drivers
        try:
            _wait("the first 200 records in silver", lambda: sum(_silver_ids(oracle).values()) == 200)
            trigger.touch()  # the next commit pauses the first driver after its lease check
            oracle.produce(records[200:400])
            _wait("the first driver to stop itself at the fault point", lambda: _state(first) == "T")
            time.sleep(TTL_S + 1)  # its lease expires while it is stopped (nothing else can be waited on here)
            second = _cli(second_env, "ingest", "start", "--entity", oracle.entity, "--trigger-s", "1")
            second_started = second.returncode == 0
            assert second_started, second.stderr[-3000:]
            _wait("the second driver to land 400 records", lambda: sum(_silver_ids(oracle).values()) >= 400)
            os.killpg(first, signal.SIGCONT)  # the first resumes inside the commit it had started
            oracle.produce(records[400:])
            _wait("the second driver to land all 600 records", lambda: sum(_silver_ids(oracle).values()) >= 600)
            _wait(
                "the first driver to say it lost its lease",
                lambda: "taken over by another writer" in first_log.read_text(errors="replace"),
                timeout_s=60,
            )
            time.sleep(3)  # a commit the first driver would still make lands within its next trigger
        finally:
            if _state(first) == "T":
                os.killpg(first, signal.SIGCONT)
            assert _cli(first_env, "ingest", "stop").returncode == 0
            if second_started:
                assert _cli(second_env, "ingest", "stop").returncode == 0
    assert beside.done["optimize"], "OPTIMIZE ran beside the drivers"
    assert not beside.errors, beside.errors
    _assert_landed_once_and_first_stopped(spark, oracle, records, first_log)


def test_two_drivers_started_at_once_never_both_write(stack: LocalStack, spark: SparkSession, tmp_path: Path) -> None:
    """Three times, two `ingest run` of one entity start together: exactly one takes the lease and writes, the other
    refuses before its first commit, naming the owner. Afterwards every record is in silver once; reconcile balances."""
    oracle = Oracle(stack)
    base = {**os.environ, **oracle.env()}
    records = list(good_records("ev", 100 * ROUNDS, seed=58, start=recent_start(100 * ROUNDS, EV_SPACING_S)))
    argv = [sys.executable, "-m", "tierlake.cli", "--profile", "ci", "ingest", "run", "--entity", oracle.entity]
    for round_ in range(ROUNDS):
        oracle.produce(records[round_ * 100 : (round_ + 1) * 100])
        envs = [
            {
                **base,
                "TIERLAKE_RUN_DIR": str(tmp_path / f"r{round_}-{i}"),
                "TIERLAKE_S3__CREDENTIALS_FILE": str(stack.settings.s3.credentials_file),
            }
            for i in range(2)
        ]
        logs = [tmp_path / f"r{round_}-{i}.err" for i in range(2)]
        with logs[0].open("w") as err_0, logs[1].open("w") as err_1:
            drivers = [
                subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
                for env, err in zip(envs, (err_0, err_1), strict=True)
            ]
            codes = [d.wait(timeout=600) for d in drivers]
        outcomes = [(code, log.read_text()) for code, log in zip(codes, logs, strict=True)]
        winners = [err for code, err in outcomes if code == 0]
        losers = [err for code, err in outcomes if code != 0]
        assert len(winners) == 1, outcomes
        assert len(losers) == 1, outcomes
        assert "owned by writer" in losers[0] or "took the lease of" in losers[0], losers[0][-2000:]
    ids = Counter(row["event_id"] for row in oracle.table("silver"))
    assert set(ids) == {r.event_id for r in records}
    assert max(ids.values()) == 1
    assert reconcile(spark, oracle.settings(), entity=oracle.entity)["balanced"]
