"""RGW killed (kill -9) and started again through infra/ in the middle of a cache fill and of a mirror copy: each
retries within its bound (or stops with a clear error), and afterwards `cache verify` and the mirror's compare are
clean. The kill is timed by a hook on an observable event (the fill's first bytes, the mirror's second copy)."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from infra import procs
from infra.stack import LocalStack
from pipelines.lake import maintenance, mirror
from tierlake.config import Settings
from tierlake.config.cache import CacheOptions
from tiers.cache.core import EdgeCache
from tiers.cache.index import EntryState
from tiers.cache.maintain import verify
from tiers.cache.retry import OriginUnavailable
from tiers.s3 import delta_storage_options, s3_client
from tiers.store import Body, S3Store

BUCKET = "tierlake-lake"


class _Restart:
    """Kill RGW once (kill -9 of its pid) and start it again through infra/ in a thread, like an operator."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.thread: threading.Thread | None = None
        self.errors: list[BaseException] = []

    def now(self) -> None:
        if self.thread is not None:
            return
        rgw = next(d for d in self.stack.ceph.daemons() if d.name == "ceph-client.rgw.gw")
        procs.kill9(rgw)
        self.thread = threading.Thread(target=self._up, name="rgw-restart")
        self.thread.start()

    def _up(self) -> None:
        try:
            self.stack.up()
        except BaseException as exc:  # handed to the test, which fails with it
            self.errors.append(exc)

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join(timeout=300)
        if self.errors:
            raise self.errors[0]


class _KillOnFirstRead:
    def __init__(self, body: Body, restart: _Restart) -> None:
        self.body, self.restart = body, restart

    def read(self, size: int = -1) -> bytes:
        chunk = self.body.read(size)
        self.restart.now()  # the fill has its first bytes: RGW dies under the rest
        return chunk

    def close(self) -> None:
        self.body.close()


class _KillingStore(S3Store):
    def __init__(self, settings: Settings, restart: _Restart) -> None:
        super().__init__(settings.s3)
        self.restart = restart

    def open(self, bucket: str, key: str, *, start: int = 0, end: int | None = None, etag: str | None = None) -> Body:
        body = super().open(bucket, key, start=start, end=end, etag=etag)
        return body if self.restart.thread is not None else _KillOnFirstRead(body, self.restart)


def test_rgw_restarted_during_a_cache_fill(stack: LocalStack, settings: Settings, tmp_path: Path) -> None:
    key = f"tests/restart/{uuid.uuid4()}/big.parquet"
    body = os.urandom(48 * 1024 * 1024)
    s3_client(settings.s3).put_object(Bucket=BUCKET, Key=key, Body=body)
    restart = _Restart(stack)
    store = _KillingStore(settings, restart)
    cache = EdgeCache(store, CacheOptions(directory=tmp_path / "cache", max_bytes=1 << 30, block_bytes=64 << 20))
    info = store.info(BUCKET, key)
    got, error = b"", ""
    try:
        got = cache.cat(BUCKET, key, info=info)
    except OriginUnavailable as exc:
        error = str(exc)
    finally:
        restart.join()
    assert got == body or "Fix: check that the object store answers" in error  # retried, or a clear stop
    assert restart.thread is not None, "the hook never fired: RGW was not restarted mid-fill"
    assert cache.index.entries(state=EntryState.FILLING) == []
    assert list((cache.root / "tmp").iterdir()) == []
    assert cache.cat(BUCKET, key, info=info) == body
    report = verify(cache, refetch=False)
    assert (report.corrupt, report.checked) == ([], 1)


def _append(settings: Settings, table: str, day: str, n: int) -> None:
    batch = pa.table({"day": [day] * n, "station_id": [f"st-{i}" for i in range(n)], "kwh": [i / 3 for i in range(n)]})
    uri, options = maintenance.rust_uri(settings, table), delta_storage_options(settings.s3)
    write_deltalake(uri, batch, mode="append", partition_by=["day"], storage_options=options)


def test_rgw_restarted_during_a_mirror_copy(
    stack: LocalStack, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = f"scratch/mirror_restart_{uuid.uuid4().hex[:8]}"
    for day in ("2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"):
        _append(settings, table, day, 50)
    restart, copies = _Restart(stack), []
    copy_once = mirror._copy_once

    def copy_with_hook(source: Any, target: Any, key: str) -> tuple[int, str]:
        copies.append(key)
        if len(copies) == 2:
            restart.now()  # one file copied, the rest to go
        return copy_once(source, target, key)

    monkeypatch.setattr(mirror, "_copy_once", copy_with_hook)
    report, error = None, ""
    try:
        report = mirror.mirror_table(settings, table)
    except OriginUnavailable as exc:
        error = str(exc)
    finally:
        restart.join()
    if report is None:
        assert "run the mirror again: it copies only what is still missing" in error
    else:
        assert (report.ok, report.mismatched, report.rows_source, report.rows_mirror) == (True, [], 200, 200)
    assert restart.thread is not None, "the hook never fired: RGW was not restarted mid-copy"
    monkeypatch.undo()
    again = mirror.mirror_table(settings, table)  # the compare, after the restart
    assert (again.ok, again.mismatched, again.checksums_verified, again.rows_mirror) == (True, [], 4, 200)
