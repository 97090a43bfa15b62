"""Process entry points for the cache tests (importable by ``multiprocessing`` spawn children).

``CountingStore`` wraps the real store and appends one line per backend GET to a shared file with O_APPEND, so
the test counts GETs that reached the origin across every process.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from tierlake.config import S3Settings
from tierlake.config.cache import CacheOptions
from tiers.cache.core import EdgeCache
from tiers.store import Body, ObjectInfo, S3Store


class CountingStore(S3Store):
    def __init__(self, s3: S3Settings, *, log: Path, slow_s: float = 0.0, started: Path | None = None) -> None:
        super().__init__(s3)
        self.log, self.slow_s, self.started = log, slow_s, started

    def _count(self, line: str) -> None:
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{line} pid={os.getpid()}\n".encode())
        os.close(fd)

    def open(self, bucket: str, key: str, *, start: int = 0, end: int | None = None, etag: str | None = None) -> Body:
        self._count(f"GET {bucket}/{key} {start}-{end}")
        body = super().open(bucket, key, start=start, end=end, etag=etag)
        return _SlowBody(body, self.slow_s, self.started) if self.slow_s else body

    def open_info(self, bucket: str, key: str) -> tuple[ObjectInfo, Body]:
        self._count(f"GET {bucket}/{key} whole")
        info, body = super().open_info(bucket, key)
        return info, (_SlowBody(body, self.slow_s, self.started) if self.slow_s else body)

    def info(self, bucket: str, key: str) -> ObjectInfo:
        self._count(f"HEAD {bucket}/{key}")
        return super().info(bucket, key)


class _SlowBody:
    """Trickles the body (a filler slow enough to be killed mid-fill); touches ``started`` after the first chunk."""

    def __init__(self, body: Body, pause_s: float, started: Path | None) -> None:
        self._body, self._pause, self._started = body, pause_s, started

    def read(self, size: int = -1, /) -> bytes:
        chunk = self._body.read(min(size, 64 * 1024) if size > 0 else 64 * 1024)
        if chunk and self._started is not None and not self._started.exists():
            self._started.write_text("filling")
        time.sleep(self._pause)
        return chunk

    def close(self) -> None:
        self._body.close()


def read_object(  # noqa: PLR0917 - a multiprocessing target takes its arguments positionally
    s3: S3Settings,
    options: CacheOptions,
    info: ObjectInfo,
    log: Path,
    barrier: Any,
    results: Any,
    slow_s: float = 0.0,
    started: Path | None = None,
    known_version: bool = True,
) -> None:
    """One reader process: wait for the others, read the object through the cache, report its SHA-256.

    ``known_version``: pass ``info`` to the cache (as a Delta snapshot does), else let the cache find the version.
    """
    cache = EdgeCache(CountingStore(s3, log=log, slow_s=slow_s, started=started), options)
    if barrier is not None:
        barrier.wait(timeout=60)
    data = cache.cat(info.bucket, info.key, info=info if known_version else None)
    results.put(hashlib.sha256(data).hexdigest())


def spark_rows(table: str) -> list[dict[str, Any]]:
    """Read a Delta table with Spark (s3a) using the settings of this process's environment."""
    from pipelines.session import spark_session  # noqa: PLC0415
    from tierlake.config import load_settings  # noqa: PLC0415

    session = spark_session(load_settings(), app_name="tierlake-cache-site-test")
    try:
        return [row.asDict() for row in session.read.format("delta").load(table).orderBy("id").collect()]
    finally:
        session.stop()


if __name__ == "__main__":
    import json
    import sys

    sys.stdout.write("ROWS " + json.dumps(spark_rows(sys.argv[1])) + "\n")
