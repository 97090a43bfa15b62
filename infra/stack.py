"""The local stack as one: ``up`` (idempotent), ``status``, ``down``. What ``tierlake stack ...`` calls.

Order: S3 credentials (a secret file made once), Ceph + RGW + buckets, Kafka + topics, then Spark: by default it
runs in the driver process (``local[2]``) and the stack only checks that its jar set is in place; with
``spark_cluster.workers`` (or ``--spark-workers N``) it also starts a standalone master and N workers
(``infra/spark.py``). Everything lives under ``settings.run_dir``; a lock file keeps two ``up`` calls from racing.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import string
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infra.ceph import CephCluster
from infra.jars import jar_paths
from infra.kafka import KafkaCluster
from infra.spark import SparkCluster
from tierlake.config import Settings, read_credentials_file
from tierlake.errors import DependencyMissing

logger = logging.getLogger(__name__)


class LocalStack:
    """Kafka (KRaft), Ceph RGW and Spark's jars for one settings profile."""

    def __init__(self, settings: Settings, *, kafka_nodes: int | None = None, spark_workers: int | None = None) -> None:
        self.settings = settings
        self.kafka_nodes = kafka_nodes or self._running_kafka_nodes() or settings.kafka.nodes
        self.kafka = KafkaCluster(settings, nodes=self.kafka_nodes)
        self.ceph = CephCluster(settings)
        self.spark_cluster = SparkCluster(settings, workers=spark_workers)

    def _running_kafka_nodes(self) -> int | None:
        meta = self.settings.run_dir / "kafka" / "cluster.json"
        if not meta.exists():
            return None
        nodes = json.loads(meta.read_text(encoding="utf-8"))["nodes"]
        return int(nodes)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        # Only its owner may enter: the services' data (RGW's users in the OSD files, the S3 key file) lives here.
        self.settings.run_dir.chmod(0o700)
        with (self.settings.run_dir / "stack.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def up(self) -> Settings:
        """Start whatever is not running and wait for health. Returns the settings with S3 credentials filled."""
        started = time.monotonic()
        with self._locked():
            settings = ensure_credentials(self.settings)
            if settings.ceph.managed:
                access_key, secret_key = settings.s3.require_credentials()
                self.ceph.up(access_key=access_key, secret_key=secret_key)
                created = self.ceph.create_buckets(
                    settings.s3.buckets, access_key=access_key, secret_key=secret_key, region=settings.s3.region
                )
                if created:
                    logger.info("created buckets %s", ", ".join(created))
            if settings.kafka.managed:
                self.kafka.up()
                created_topics = self.kafka.create_topics()
                if created_topics:
                    logger.info("created topics %s", ", ".join(created_topics))
            self._spark_jars()
            if spark_started := self.spark_cluster.up():
                logger.info("started %s (%s)", ", ".join(spark_started), self.spark_cluster.master_url)
        logger.info("stack up in %.1f s", time.monotonic() - started)
        return settings

    def down(self) -> list[str]:
        """Stop every process of ours, by pid. Data stays under run_dir (``rm -rf`` it to start over)."""
        with self._locked():
            stopped = self.spark_cluster.down()
            stopped += self.kafka.down() if self.settings.kafka.managed else []
            if self.settings.ceph.managed:
                stopped += self.ceph.down()
        return stopped

    def status(self) -> dict[str, Any]:
        services: list[dict[str, object]] = []
        if self.settings.kafka.managed:
            services += self.kafka.node_status()
        if self.settings.ceph.managed:
            services += self.ceph.status()
        services += self.spark_cluster.status()
        try:
            jars = len(self._spark_jars())
            spark_health = "ok"
        except DependencyMissing as exc:
            jars, spark_health = 0, str(exc)
        services.append(
            {
                "service": "spark",
                "pid": None,
                "port": None,
                "health": spark_health,
                "master": self.settings.spark.master,
                "jars": jars,
            }
        )
        return {
            "profile": self.settings.profile,
            "run_dir": str(self.settings.run_dir),
            "kafka_bootstrap": self.settings.kafka.bootstrap(self.kafka_nodes),
            "s3_endpoint": self.settings.s3.endpoint,
            "healthy": all(s["health"] == "ok" for s in services),
            "services": services,
        }

    def _spark_jars(self) -> list[Path]:
        return jar_paths(self.settings.spark.jars_dir)


def ensure_credentials(settings: Settings) -> Settings:
    """S3 keys from the settings (env) or the secret file; for a managed Ceph, create the file once."""
    if settings.s3.has_credentials():
        return settings
    path = settings.s3.credentials_file
    access_key, secret_key = read_credentials_file(path)
    if not (access_key and secret_key):
        if not settings.ceph.managed:
            settings.s3.require_credentials()  # raises with the fix
        alphabet = string.ascii_uppercase + string.digits
        access_key = "".join(secrets.choice(alphabet) for _ in range(20))
        secret_key = secrets.token_urlsafe(30)
        _write_private(path, f"access_key={access_key}\nsecret_key={secret_key}\n")
        logger.info("created S3 credentials in %s", path)
    return settings.with_credentials(access_key, secret_key)


def _write_private(path: Path, text: str) -> None:
    """Write a 0600 file atomically: temp file, fsync, rename, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
