"""A Spark standalone cluster on loopback from the pip distribution: one master and N workers.

pyspark ships ``bin/spark-class`` but no ``start-master.sh``, so each daemon is ``spark-class
org.apache.spark.deploy.master.Master`` / ``...worker.Worker`` run in the foreground (``spark-class`` execs the
JVM, so the pid we keep is the JVM's). Layout under ``<run_dir>/spark-cluster``: ``master.conf`` (the master's
properties, also its marker), ``master.log``, ``recovery/`` (the master's FILESYSTEM recovery state: a master
restarted after a kill -9 knows its workers and running applications again), and per worker ``worker-N/worker.conf``,
``worker-N/worker.log`` and ``worker-N/work`` (executors' folders: their stdout/stderr and the fetched jars).

No secret reaches a worker: executors get the S3 keys from their driver's SparkConf over Spark's RPC, never
through a command line or a worker's environment (``pipelines.session``).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra import procs
from tierlake.config import Settings, SparkClusterSettings
from tierlake.errors import DependencyMissing, StackError
from tierlake.host import alive

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
_MASTER = "org.apache.spark.deploy.master.Master"
_WORKER = "org.apache.spark.deploy.worker.Worker"


@dataclass(frozen=True, kw_only=True)
class SparkWorker:
    number: int  # 1-based
    port: int
    ui_port: int
    home: Path
    daemon: procs.Daemon

    @property
    def work_dir(self) -> Path:
        return self.home / "work"


class SparkCluster:
    """The standalone master and workers of one settings profile; owns ``<run_dir>/spark-cluster``."""

    def __init__(self, settings: Settings, *, workers: int | None = None) -> None:
        self.cluster: SparkClusterSettings = settings.spark_cluster
        self.local_ip = settings.spark.local_ip or "127.0.0.1"
        self.home = settings.run_dir / "spark-cluster"
        self.master = procs.Daemon(
            name="spark-master",
            pid_file=self.home / "master.pid",
            log=self.home / "master.log",
            marker=str(self.home / "master.conf"),
        )
        self.size = self.cluster.workers if workers is None else workers
        if workers is None and (known := self._recorded_size()) is not None:
            self.size = known  # the running cluster's, e.g. from `stack up --spark-workers N`
        self.workers = [self._worker(n) for n in range(1, self.size + 1)]

    def _worker(self, number: int) -> SparkWorker:
        home = self.home / f"worker-{number}"
        port = self.cluster.worker_port(number)
        daemon = procs.Daemon(
            name=f"spark-worker-{number}",
            pid_file=self.home / f"worker-{number}.pid",
            log=home / "worker.log",
            marker=str(home / "worker.conf"),
        )
        return SparkWorker(number=number, port=port, ui_port=port + 1, home=home, daemon=daemon)

    def _recorded_size(self) -> int | None:
        meta = self.home / "cluster.json"
        if not meta.exists() or self.master.running_pid() is None:
            return None
        return int(json.loads(meta.read_text(encoding="utf-8"))["workers"])

    @property
    def master_url(self) -> str:
        return f"spark://{self.local_ip}:{self.cluster.master_port}"

    # ----------------------------------------------------------------------------------------------------
    # start

    def up(self) -> list[str]:
        """Start the master and every worker that is not running; wait until each worker is registered ALIVE."""
        if not self.size:
            return []
        started = []
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "cluster.json").write_text(json.dumps({"workers": self.size}), encoding="utf-8")
        if self.master.running_pid() is None:
            self._start_master()
            started.append(self.master.name)
        spawned = []
        for worker in self.workers:
            if worker.daemon.running_pid() is None:
                spawned.append(worker)
                self._start_worker(worker)
        for worker in spawned:
            pid = worker.daemon.pid()
            procs.wait_until(
                f"{worker.daemon.name} registered with {self.master_url}",
                functools.partial(self._registered, worker),
                timeout_s=START_TIMEOUT_S,
                log=worker.daemon.log,
                interval_s=0.5,
                alive=functools.partial(alive, pid) if pid else None,
            )
        return [*started, *(w.daemon.name for w in spawned)]

    def _start_master(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        recovery = self.home / "recovery"
        recovery.mkdir(exist_ok=True)
        _write_properties(
            self.home / "master.conf",
            {"spark.deploy.recoveryMode": "FILESYSTEM", "spark.deploy.recoveryDirectory": str(recovery)},
        )
        argv = [
            *self._spark_class(_MASTER),
            *("--host", self.local_ip, "--port", str(self.cluster.master_port)),
            *("--webui-port", str(self.cluster.master_ui_port)),
            *("--properties-file", str(self.home / "master.conf")),
        ]
        pid = procs.spawn(self.master, argv, env=self._env())
        procs.wait_until(
            f"spark-master on {self.local_ip}:{self.cluster.master_port}",
            lambda: self.master_state() is not None,
            timeout_s=START_TIMEOUT_S,
            log=self.master.log,
            alive=functools.partial(alive, pid),
        )

    def _start_worker(self, worker: SparkWorker) -> None:
        worker.work_dir.mkdir(parents=True, exist_ok=True)
        # Finished applications' folders (each holds a copy of the jar set) go after an hour.
        _write_properties(
            worker.home / "worker.conf",
            {"spark.worker.cleanup.enabled": "true", "spark.worker.cleanup.appDataTtl": "3600"},
        )
        argv = [
            *self._spark_class(_WORKER),
            *("--host", self.local_ip, "--port", str(worker.port), "--webui-port", str(worker.ui_port)),
            *("--cores", str(self.cluster.worker_cores), "--memory", self.cluster.worker_memory),
            *("--work-dir", str(worker.work_dir), "--properties-file", str(worker.home / "worker.conf")),
            self.master_url,
        ]
        procs.spawn(worker.daemon, argv, env=self._env())

    def _spark_class(self, main_class: str) -> list[str]:
        if shutil.which("java") is None:
            raise DependencyMissing("java is not on PATH. Fix: run `make setup` (installs OpenJDK 17)")
        script = spark_home() / "bin" / "spark-class"
        return [str(script), main_class]

    def _env(self) -> dict[str, str]:
        """The daemons' environment: Spark's home and loopback; never a key (none is needed: see the module)."""
        keep = ("PATH", "HOME", "LANG", "JAVA_HOME", "TMPDIR")
        env = {name: os.environ[name] for name in keep if name in os.environ}
        env |= {"SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": self.local_ip, "SPARK_NO_DAEMONIZE": "1"}
        return env

    # ----------------------------------------------------------------------------------------------------
    # health, stop, failure tests

    def master_state(self) -> dict[str, Any] | None:
        """The master's own JSON (workers, applications), or None when it does not answer."""
        return _json(f"http://{self.local_ip}:{self.cluster.master_ui_port}/json/")

    def _registered(self, worker: SparkWorker) -> bool:
        state = self.master_state() or {}
        return any(w.get("port") == worker.port and w.get("state") == "ALIVE" for w in state.get("workers", []))

    def executors(self, worker: SparkWorker) -> list[dict[str, Any]]:
        """The executors running on ``worker`` now (its own JSON), e.g. to see an application pick it up."""
        state = _json(f"http://{self.local_ip}:{worker.ui_port}/json/") or {}
        return list(state.get("executors", []))

    def status(self) -> list[dict[str, object]]:
        if not self.size and self.master.running_pid() is None:
            return []
        state = self.master_state()
        rows: list[dict[str, object]] = [
            {
                "service": self.master.name,
                "pid": self.master.running_pid(),
                "port": self.cluster.master_port,
                "ui_port": self.cluster.master_ui_port,
                "url": self.master_url,
                "health": "ok" if state is not None else "down",
                "applications": len(state.get("activeapps", [])) if state else 0,
                "log": str(self.master.log),
            }
        ]
        for worker in self.workers:
            pid = worker.daemon.running_pid()
            rows.append(
                {
                    "service": worker.daemon.name,
                    "pid": pid,
                    "port": worker.port,
                    "cores": self.cluster.worker_cores,
                    "memory": self.cluster.worker_memory,
                    "work_dir": str(worker.work_dir),
                    "health": "ok" if self._registered(worker) else ("starting" if pid else "down"),
                    "log": str(worker.daemon.log),
                }
            )
        return rows

    def _all_known_daemons(self) -> list[procs.Daemon]:
        from tierlake.config.spark_cluster import MAX_WORKERS  # noqa: PLC0415 - one constant

        return [*(self._worker(n).daemon for n in range(1, MAX_WORKERS + 1)), self.master]

    def down(self) -> list[str]:
        """Stop the workers (their executors end with them), then the master; by pid."""
        workers = procs.stop(self._all_known_daemons()[:-1], timeout_s=20)
        return workers + procs.stop([self.master], timeout_s=20)

    def worker(self, number: int) -> SparkWorker:
        return self.workers[number - 1]


def spark_home() -> Path:
    """pyspark's folder: the pip distribution is a whole Spark home (bin/, jars/)."""
    try:
        import pyspark  # noqa: PLC0415 - only the cluster needs it
    except ImportError as exc:
        raise DependencyMissing("pyspark is not installed. Fix: run `make setup` (infra/bootstrap.sh)") from exc
    home = Path(pyspark.__file__).parent
    if not (home / "bin" / "spark-class").is_file():
        raise StackError(f"{home}/bin/spark-class is missing. Fix: reinstall pyspark (`make setup`)")
    return home


def _write_properties(path: Path, properties: dict[str, str]) -> None:
    header = "# written by tierlake (infra/spark.py) on every start; edit conf/, not this file\n"
    path.write_text(header + "".join(f"{k} {v}\n" for k, v in properties.items()), encoding="utf-8")


def _json(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - a loopback http URL of ours
            document: dict[str, Any] = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return document
