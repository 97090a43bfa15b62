"""Silver's Delta log checkpoints, written beside the ingest batches instead of inside one of their commits.

Delta writes a table's log checkpoint (its whole state as Parquet, read by every reader that builds a snapshot)
inside the commit whose version reaches the table's ``delta.checkpointInterval``: that commit's batch waits for a
Spark job over the whole state, about 2.6 s of a 2 s-trigger live batch on this machine, once every ten batches
at Delta's default interval, which put the checkpoint into every p99 of freshness. Silver is read by gold, the
loader and the lineage, so its checkpoints are kept as frequent as before (:data:`EVERY` versions); the commits no
longer wait for them. A silver table the ingest driver creates gets the long interval of the tables ingestion
only appends to (``APPEND_ONLY_CHECKPOINT_INTERVAL``, so Delta's own checkpoint inside a commit is rare), and after
each silver commit that reaches a multiple of :data:`EVERY`, :class:`LogCheckpoints` writes one in a thread of its
own. A checkpoint is not a commit (no version, no lease needed for the data: the log store still refuses a fenced
writer's ``_last_checkpoint``), and a failed or skipped one only leaves readers a longer log to replay.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from tierlake.errors import first_line

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

DELTA_DEFAULT_INTERVAL = 10
EVERY = DELTA_DEFAULT_INTERVAL
"""Versions between silver's log checkpoints (Delta's default interval)."""


_thread: ThreadPoolExecutor | None = None
_thread_lock = threading.Lock()


def _writer() -> ThreadPoolExecutor:
    """The driver's one thread for log checkpoints (every query's :class:`LogCheckpoints` shares it)."""
    global _thread  # noqa: PLW0603 - one per driver, as pipelines.session's writers
    with _thread_lock:
        if _thread is None:
            _thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tierlake-log-checkpoint")
        return _thread


class LogCheckpoints:
    """Log checkpoints of the tables a query commits to, one at a time, in the driver's background thread."""

    def __init__(self, spark: SparkSession, *, every: int = EVERY) -> None:
        self._spark = spark
        self._every = every
        self._running = threading.Lock()
        self.written = 0  # checkpoints written (for tests and the batch log)

    def after_commit(self, uri: str) -> None:
        """Called after a commit to ``uri``: start a checkpoint when its version is a multiple of ``every``; none
        while one runs (the next multiple comes)."""
        try:
            snapshot = self._delta_log(uri).unsafeVolatileSnapshot()
            version = int(snapshot.version())
            interval = snapshot.metadata().configuration().get("delta.checkpointInterval")
            inline = int(interval.get()) if interval.isDefined() else DELTA_DEFAULT_INTERVAL
        except Exception as exc:  # an internal API that moved: Delta's own interval still checkpoints
            logger.debug("no log checkpoint for %s: %s", uri, first_line(exc))
            return
        if inline <= self._every:  # a table made before this: Delta writes them inside its commits
            return
        if version <= 0 or version % self._every or not self._running.acquire(blocking=False):
            return
        pool = self._spark.sparkContext.getLocalProperty("spark.scheduler.pool")
        _writer().submit(self._checkpoint, uri, version, pool)

    def wait(self, timeout_s: float) -> bool:
        """Wait for a checkpoint being written; False if it still runs after ``timeout_s``."""
        if not self._running.acquire(timeout=timeout_s):
            return False
        self._running.release()
        return True

    def _checkpoint(self, uri: str, version: int, pool: str | None) -> None:
        try:
            if pool:
                self._spark.sparkContext.setLocalProperty("spark.scheduler.pool", pool)
            self._delta_log(uri).checkpoint()
            self.written += 1
            logger.info("log checkpoint of %s written at or after version %d", uri, version)
        except Exception as exc:  # readers replay a longer log; the next multiple tries again
            logger.warning("log checkpoint of %s at version %d not written: %s", uri, version, first_line(exc))
        finally:
            self._running.release()

    def _delta_log(self, uri: str) -> Any:
        jvm = self._spark.sparkContext._jvm
        assert jvm is not None
        return jvm.org.apache.spark.sql.delta.DeltaLog.forTable(self._spark._jsparkSession, uri)
