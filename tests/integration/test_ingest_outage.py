"""RGW killed (kill -9) under a running ingest driver and started again: the driver fences itself (the entity is
paused, nothing is committed on an unconfirmed lease), no thread dies, and once RGW is back the same driver
resumes: every record lands exactly once and reconcile balances against Kafka."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from infra import procs
from infra.stack import LocalStack
from pipelines.checks.reconcile import reconcile
from pipelines.synthetic.datasets import EV_SPACING_S, good_records, recent_start
from tests.integration.test_ingest import REPO, Oracle

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def _wait(what: str, done: Callable[[], bool], *, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def test_an_rgw_outage_pauses_ingest_and_it_resumes_with_nothing_lost_or_doubled(
    stack: LocalStack, spark: SparkSession
) -> None:
    oracle = Oracle(stack)
    env = {**os.environ, **oracle.env(), "TIERLAKE_MAINTENANCE__LEASE_TTL_S": "6"}  # fences 4 s into an outage

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "tierlake.cli", "--profile", "ci", *args]
        return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=600)

    def silver_rows() -> int:
        try:
            return len(oracle.table("silver"))
        except Exception:  # not there yet, or RGW down
            return 0

    driver_log = stack.settings.run_dir / "ingest" / "driver.log"
    log_start = driver_log.stat().st_size if driver_log.exists() else 0  # earlier tests' drivers wrote here too
    records = list(good_records("ev", 400, seed=51, start=recent_start(400, EV_SPACING_S)))
    oracle.produce(records[:200])
    started = cli("ingest", "start", "--entity", oracle.entity, "--trigger-s", "1")
    assert started.returncode == 0, started.stderr[-3000:]
    rgw = next(d for d in stack.ceph.daemons() if d.name == "ceph-client.rgw.gw")
    try:
        _wait("the first 200 records in silver", lambda: silver_rows() == 200)  # the kill is timed by a commit
        procs.kill9(rgw)
        oracle.produce(records[200:])  # Kafka is up: records keep arriving during the outage
        paused: dict[str, str] = {}

        def is_paused() -> bool:
            status = cli("ingest", "status", "--json")
            paused.update(json.loads(status.stdout).get("paused") or {})
            return oracle.entity in paused

        _wait("the driver to fence itself", is_paused, timeout_s=120)
        assert "unconfirmed" in paused[oracle.entity] or "could not start again" in paused[oracle.entity]
        stack.up()  # RGW back
        _wait("all 400 records in silver", lambda: silver_rows() == 400)
        status = cli("ingest", "status", "--json")
        state = json.loads(status.stdout)
        assert state["running"], status.stderr
        assert not state.get("paused"), state
        assert not state.get("failed"), state
        assert status.returncode == 0, status.stderr
    finally:
        if rgw.running_pid() is None:
            stack.up()
        stopped = cli("ingest", "stop")
        assert stopped.returncode == 0, stopped.stderr
    ids = Counter(row["event_id"] for row in oracle.table("silver"))
    assert set(ids) == {r.event_id for r in records}
    assert max(ids.values()) == 1
    # `tierlake ingest reconcile`'s library call, in the session's Spark (no JVM of its own to start).
    assert reconcile(spark, oracle.settings(), entity=oracle.entity)["balanced"]
    log = driver_log.read_bytes()[log_start:].decode(errors="replace")
    assert "paused" in log, "the driver said why it stopped committing"
    assert "Exception in thread lease-" not in log, "the lease's renewing thread never died"
    assert "StackOverflowError" not in log
