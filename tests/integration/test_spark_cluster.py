"""Ingestion on a Spark standalone cluster of the stack (issue 23): the exactly-once oracle of test_ingest with a
worker, the master and the driver killed by kill -9 mid-stream.

Two workers of one core each (``infra/spark.py``). One streaming driver (``ingest serve``) runs on the cluster while
records arrive in parts: a worker is killed and the stream goes on with the other; restarted, it gets an executor of
the application again; the master is killed, the stream goes on, and a restarted master recovers the workers and the
application from its recovery folder; then the driver is killed mid-batch (stopped at a commit by the fault hook)
and a new one catches up. Every record lands once, reconciliation balances, each commit names its batch's offsets,
gold matches silver, VACUUM and OPTIMIZE run on the cluster, and no process of ours carries the S3 secret on its
command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from infra import procs
from infra.spark import SparkCluster
from infra.stack import LocalStack
from pipelines.ingest.ledger import PAUSE_AFTER_GATE_ENV
from pipelines.ingest.silver import silver_tables
from pipelines.synthetic.datasets import EV_SPACING_S, good_records, recent_start
from tests.e2e.cli import tierlake
from tests.integration.test_ingest import (
    REPO,
    Oracle,
    _phase_two,
    assert_every_record_landed_once,
    assert_gold_matches,
)
from tests.integration.test_ingest_pause import _state
from tiers.s3 import delta_storage_options

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

PART = 400  # records per part of the stream; five parts
WAIT_S = 600.0  # how long a step may take on a loaded 2-core machine before the test calls it stuck


@pytest.fixture(scope="module")
def cluster(stack: LocalStack) -> Iterator[SparkCluster]:
    """The cluster as a user starts it (`tierlake stack up --spark-workers 2` beside the running stack), seen by
    `stack status`; stopped by pid at the end (`stack down` would stop the whole stack of the session)."""
    up = tierlake(["stack", "up", "--spark-workers", "2"])
    assert up.returncode == 0, up.stderr[-3000:]
    spark_cluster = SparkCluster(stack.settings)
    try:
        status = tierlake(["stack", "status", "--json"])
        assert status.returncode == 0, status.stdout + status.stderr
        rows = {row["service"]: row for row in json.loads(status.stdout)["services"]}
        for name in ("spark-master", "spark-worker-1", "spark-worker-2"):
            assert rows[name]["health"] == "ok", rows.get(name)
            assert rows[name]["pid"], rows[name]
        assert len(spark_cluster.workers) == 2
        yield spark_cluster
    finally:
        spark_cluster.down()


class ClusterOracle(Oracle):
    """test_ingest's oracle whose drivers run on the cluster."""

    def __init__(self, stack: LocalStack, cluster: SparkCluster) -> None:
        super().__init__(stack)
        self.master_url = cluster.master_url

    def env(self) -> dict[str, str]:
        return {**super().env(), "TIERLAKE_SPARK__MASTER": self.master_url}

    def serve(self, pause_trigger: Path) -> subprocess.Popen[bytes]:
        """The streaming driver; it stops itself (SIGSTOP) at its next commit once ``pause_trigger`` exists."""
        argv = [sys.executable, "-m", "tierlake.cli", "ingest", "serve", "--entity", self.entity, "--trigger-s", "1"]
        return subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, **self.env(), PAUSE_AFTER_GATE_ENV: str(pause_trigger)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def landed(self) -> int:
        """Records in silver, quarantine and dropped together (each record lands in exactly one)."""
        tables = silver_tables(self.settings(), self.entity)
        total = 0
        for uri in (tables.silver, tables.quarantine, tables.dropped):
            try:
                table = DeltaTable(uri.replace("s3a://", "s3://", 1), storage_options=self.storage)
            except TableNotFoundError:  # before the table's first commit
                continue
            total += table.to_pyarrow_dataset().count_rows()
        return total

    @property
    def storage(self) -> dict[str, str]:
        return delta_storage_options(self.stack.settings.s3)


def _until(what: str, ready: Callable[[], bool], driver: subprocess.Popen[bytes], log: Path) -> None:
    """Wait for ``ready``; fail if the driver exits meanwhile (a stuck or dead stream, not a slow one)."""
    procs.wait_until(what, ready, timeout_s=WAIT_S, log=log, interval_s=1.0, alive=lambda: driver.poll() is None)


def _secret_on_a_command_line(secret: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if secret.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def test_exactly_once_through_worker_master_and_driver_kills(
    stack: LocalStack, cluster: SparkCluster, spark: SparkSession, tmp_path: Path
) -> None:
    oracle = ClusterOracle(stack, cluster)
    pause = tmp_path / "pause-at-next-commit"
    log = stack.settings.run_dir / "logs" / "spark.log"
    start = recent_start(6 * PART, EV_SPACING_S)
    oracle.produce(list(good_records("ev", PART, seed=3, start=start)))
    records = _phase_two(4 * PART, seed=4)
    parts = [records[i * PART : (i + 1) * PART] for i in range(4)]
    driver = oracle.serve(pause)
    try:
        _until("the first part landed", lambda: oracle.landed() == len(oracle.expect), driver, log)
        _until("executors on both workers", lambda: all(cluster.executors(w) for w in cluster.workers), driver, log)
        secret = stack.settings.s3.require_credentials()[1]
        assert _secret_on_a_command_line(secret) == []

        # A worker dies mid-stream (its executor with it): the stream goes on with the other worker.
        oracle.produce(parts[0])
        procs.kill9(cluster.worker(1).daemon)
        _until("part 1 landed on one worker", lambda: oracle.landed() == len(oracle.expect), driver, log)
        cluster.up()  # the worker comes back and registers; the master gives the application an executor there
        _until("an executor on the restarted worker", lambda: bool(cluster.executors(cluster.worker(1))), driver, log)

        # The master dies mid-stream: executors keep working; a restarted master recovers workers and application.
        oracle.produce(parts[1])
        procs.kill9(cluster.master)
        _until("part 2 landed without a master", lambda: oracle.landed() == len(oracle.expect), driver, log)
        cluster.up()
        _until("the master recovered its application", lambda: _recovered(cluster), driver, log)
        oracle.produce(parts[2])
        _until("part 3 landed", lambda: oracle.landed() == len(oracle.expect), driver, log)

        # The driver dies mid-batch: the fault hook stops it at its next commit (part 4's batch, its offsets taken
        # and nothing of it committed, or gold's), then it is killed; a new one on the cluster catches up.
        pause.touch()
        oracle.produce(parts[3])
        _until("the driver stopped at a commit", lambda: _state(driver.pid) == "T", driver, log)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    result = oracle.ingest()
    assert result is not None
    assert result.returncode == 0, result.stderr[-3000:]

    silver = assert_every_record_landed_once(oracle, spark)
    assert_gold_matches(oracle, silver)  # gold ran on the cluster too (`ingest run` ends with it)
    # Maintenance on the cluster: VACUUM's Spark job (a dry run: nothing is old enough) and OPTIMIZE (delta-rs).
    for action in ("vacuum", "optimize"):
        done = oracle.cli("table", action, f"silver/{oracle.entity}", "--json")
        assert done.returncode == 0, f"table {action} on the cluster: {done.stderr[-2000:]}"


def _recovered(cluster: SparkCluster) -> bool:
    state = cluster.master_state() or {}
    alive = [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]
    return state.get("status") == "ALIVE" and len(alive) == len(cluster.workers) and bool(state.get("activeapps"))
