"""Issue 19 item 11 (archive part, unit level): staging a data file for tape survives an object store that
restarts mid-download (bounded fresh downloads of the same version), stops with a clear error when it stays down
or the object is replaced, and never leaves a partial staged file."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tierlake.config import ArchiveTable
from tiers.archive.archiver import _stage
from tiers.archive.policy import DataFile
from tiers.cache.retry import OriginUnavailable, Retry
from tiers.store import Body, LocalStore, ObjectChanged, ObjectInfo

POLICY = ArchiveTable(
    table="silver.telemetry",
    partition_column="day",
    key_column="station",
    cold_by="age",
    cold_after_days=30,
    retention_days=3650,
)
FAST = Retry(attempts=3, first_s=0.0, max_s=0.0)


class _CutBody:
    """A body whose connection drops after ``keep`` bytes (what a kill -9 of RGW does to a GET in flight)."""

    def __init__(self, data: bytes, keep: int) -> None:
        self._data = io.BytesIO(data[:keep])

    def read(self, size: int = -1, /) -> bytes:
        piece = self._data.read(size)
        if not piece:
            raise ConnectionResetError("connection reset by peer")
        return piece

    def close(self) -> None:
        return None


class RestartingStore(LocalStore):
    """A local store whose first ``cuts`` GETs are cut short; ``etags`` records the If-Match of every GET."""

    def __init__(self, root: Path, *, cuts: int) -> None:
        super().__init__(root)
        self.cuts = cuts
        self.etags: list[str | None] = []

    def _maybe_cut(self, bucket: str, key: str, body: Body) -> Body:
        if self.cuts <= 0:
            return body
        self.cuts -= 1
        data = body.read()
        body.close()
        return _CutBody(data, len(data) // 2)

    def open_info(self, bucket: str, key: str) -> tuple[ObjectInfo, Body]:
        info, body = super().open_info(bucket, key)
        self.etags.append(None)
        return info, self._maybe_cut(bucket, key, body)

    def open(self, bucket: str, key: str, *, start: int = 0, end: int | None = None, etag: str | None = None) -> Body:
        self.etags.append(etag)
        return self._maybe_cut(bucket, key, super().open(bucket, key, start=start, end=end, etag=etag))


def _data_file(root: Path) -> tuple[DataFile, bytes]:
    path = root / "lake" / "silver" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"station": [f"s{n:03d}" for n in range(500)], "kwh": list(range(500))}), path)
    data = path.read_bytes()
    item = DataFile(
        bucket="lake",
        key="silver/part-0.parquet",
        path="part-0.parquet",
        size=len(data),
        partition="day=2026-01-01",
        partition_values={"day": "2026-01-01"},
        version_added=1,
    )
    return item, data


def test_a_download_cut_by_a_restart_is_fetched_again_of_the_same_version(tmp_path: Path) -> None:
    item, data = _data_file(tmp_path)
    store = RestartingStore(tmp_path, cuts=2)
    staged = _stage(store, item, tmp_path / "staging", POLICY, retry=FAST)
    assert Path(staged["source"]).read_bytes() == data
    assert (staged["size"], staged["row_count"], staged["key_min"], staged["key_max"]) == (
        len(data),
        500,
        "s000",
        "s499",
    )
    first_etag = store.info("lake", item.key).etag
    assert store.etags == [None, first_etag, first_etag]  # retries ask for the version first seen (If-Match)


def test_an_origin_that_stays_down_stops_the_run_with_a_clear_error_and_nothing_staged(tmp_path: Path) -> None:
    item, _ = _data_file(tmp_path)
    store = RestartingStore(tmp_path, cuts=10)
    with pytest.raises(OriginUnavailable, match=r"staging s3://lake/silver/part-0\.parquet .* failed 3 times.*Fix: "):
        _stage(store, item, tmp_path / "staging", POLICY, retry=FAST)
    assert list((tmp_path / "staging").iterdir()) == []


def test_an_object_replaced_between_two_tries_is_not_staged_as_a_mix(tmp_path: Path) -> None:
    item, data = _data_file(tmp_path)
    store = RestartingStore(tmp_path, cuts=1)
    original = store.open_info

    def replaced_after_first_answer(bucket: str, key: str) -> tuple[ObjectInfo, Body]:
        answer = original(bucket, key)
        (tmp_path / bucket / key).write_bytes(data + b"x")  # another version, another ETag
        return answer

    store.open_info = replaced_after_first_answer  # type: ignore[method-assign]
    with pytest.raises(ObjectChanged, match="replaced"):
        _stage(store, item, tmp_path / "staging", POLICY, retry=FAST)
    assert list((tmp_path / "staging").iterdir()) == []
