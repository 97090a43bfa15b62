"""The ``spark_cluster`` section: a Spark standalone master and workers that ``tierlake stack up`` starts on loopback.

Only the local stack reads it (``infra/spark.py``); jobs find the cluster through ``spark.master`` like any other
(``spark://127.0.0.1:<master_port>`` in the ``cluster`` profile). Ports: the master listens on ``master_port`` and
serves its status page on ``master_port + 1``; worker N (1-based) on ``master_port + 10 * N`` and ``+ 1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tierlake.config.values import Values, port

MAX_WORKERS = 8


@dataclass(frozen=True, kw_only=True)
class SparkClusterSettings:
    workers: int  # 0: the stack starts no cluster (jobs run local[...] or on a cluster elsewhere)
    master_port: int
    worker_cores: int
    worker_memory: str  # what each worker offers its executors, e.g. 1g

    def __post_init__(self) -> None:
        if not 0 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"spark_cluster.workers = {self.workers}: must be 0..{MAX_WORKERS}")

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"

    @property
    def master_ui_port(self) -> int:
        return self.master_port + 1

    def worker_port(self, worker: int) -> int:
        """RPC port of worker ``worker`` (1-based); its status page is on the next port."""
        return self.master_port + 10 * worker


def build_spark_cluster(values: Values) -> SparkClusterSettings:
    master_port = values.get("spark_cluster.master_port", int, default=17077, check=port, fix="e.g. 17077")
    top = master_port + 10 * MAX_WORKERS + 1
    if top >= 32768:
        raise values.fail(
            "spark_cluster.master_port",
            master_port,
            f"worker ports reach {top}, inside Linux's ephemeral range (32768-60999)",
            f"use a port below {32768 - 10 * MAX_WORKERS - 1}",
        )
    return SparkClusterSettings(
        workers=values.get(
            "spark_cluster.workers",
            int,
            default=0,
            check=lambda n: None if 0 <= n <= MAX_WORKERS else f"must be 0..{MAX_WORKERS}",
            fix="e.g. 2; 0 starts no cluster",
        ),
        master_port=master_port,
        worker_cores=values.get(
            "spark_cluster.worker_cores",
            int,
            default=1,
            check=lambda n: None if n >= 1 else "must be at least 1",
            fix="e.g. 1 (two workers on 2 cores)",
        ),
        worker_memory=values.get(
            "spark_cluster.worker_memory",
            str,
            default="1g",
            check=lambda m: None if re.fullmatch(r"\d+[mg]", m) else "expected e.g. 512m or 2g",
            fix="e.g. 1g; an executor's spark.executor.memory (default 1g) must fit",
        ),
    )
