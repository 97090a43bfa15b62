"""The high-water mark from the Delta log's file statistics (pipelines.ingest.high_water), on real Delta tables
written by delta-rs in a temporary folder: no Spark, and no data file is opened on the paths the log answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from pipelines.ingest.high_water import HighWater, scan_log, to_millis

T0 = datetime(2026, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)


def _append(uri: Path, batches: list[int], times: list[datetime | None]) -> None:
    rows = pa.table(
        {
            "_batch_id": pa.array(batches, pa.int64()),
            "ts": pa.array(times, pa.timestamp("us", tz="UTC")),
            "event_date": pa.array([(t or T0).date() for t in times]),
        }
    )
    write_deltalake(str(uri), rows, mode="append", partition_by=["event_date"])


def _data_files(uri: Path) -> list[Path]:
    return list(uri.rglob("*.parquet"))


class _NoSpark(HighWater):
    """A HighWater whose exact reads are recorded instead of run (they need Spark)."""

    def __init__(self, uri: Path, answer: dict[int, datetime] | None = None) -> None:
        super().__init__(None, str(uri), "ts", storage_options={})  # type: ignore[arg-type]
        self.read: list[tuple[list[str], int | None]] = []
        self._answer = answer or {}

    def _read(self, paths: list[str], *, below: int | None) -> dict[int, datetime]:
        self.read.append((sorted(paths), below))
        return {b: h for b, h in self._answer.items() if below is None or b < below}


def test_no_table_no_history(tmp_path: Path) -> None:
    assert _NoSpark(tmp_path / "silver").before(5) is None


def test_the_mark_comes_from_the_log_without_opening_a_data_file(tmp_path: Path) -> None:
    uri = tmp_path / "silver"
    _append(uri, [0, 0], [T0, T0 + timedelta(seconds=5)])
    _append(uri, [1, 1], [T0 + timedelta(days=1), T0 + timedelta(days=1, seconds=9)])
    _append(uri, [2], [T0 - timedelta(days=3)])  # a late day: not the mark
    for path in _data_files(uri):
        path.unlink()  # purged from the object store: the log still names them
    mark = _NoSpark(uri)
    assert mark.before(3) == to_millis(T0 + timedelta(days=1, seconds=9))
    assert mark.before(3).microsecond == 123000  # type: ignore[union-attr]  # kept to the millisecond
    assert mark.read == []


def test_recorded_batches_raise_the_mark_to_the_millisecond(tmp_path: Path) -> None:
    uri = tmp_path / "silver"
    _append(uri, [0], [T0])
    mark = _NoSpark(uri)
    later = T0 + timedelta(minutes=1, microseconds=999)
    mark.record(1, later)
    assert mark.before(1) == to_millis(T0)
    assert mark.before(2) == later.replace(microsecond=124000)
    mark.record(2, None)  # a batch without silver rows changes nothing
    assert mark.before(3) == later.replace(microsecond=124000)


def test_a_replayed_batch_reads_only_the_files_that_mix_it_with_earlier_batches(tmp_path: Path) -> None:
    uri = tmp_path / "silver"
    _append(uri, [0], [T0])
    _append(uri, [1, 2], [T0 + timedelta(hours=1), T0 + timedelta(hours=2)])  # as OPTIMIZE leaves two batches
    _append(uri, [3], [T0 + timedelta(hours=3)])
    actions = pa.table(DeltaTable(str(uri)).get_add_actions(flatten=True)).to_pylist()
    [mixed] = [a["path"] for a in actions if a["min._batch_id"] == 1]
    mark = _NoSpark(uri, answer={1: to_millis(T0 + timedelta(hours=1))})
    assert mark.before(4) == to_millis(T0 + timedelta(hours=3))  # the usual case: the log alone
    assert mark.read == []
    assert mark.before(2) == to_millis(T0 + timedelta(hours=1))  # batch 2 replayed: its file holds batch 1 too
    assert mark.read == [([mixed], 2)]
    assert mark.before(1) == to_millis(T0)  # batch 1 replayed: batch 0's file alone is earlier
    assert mark.read == [([mixed], 2)]


def test_files_without_statistics_are_read_once(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"path": "a.parquet", "min._batch_id": 0, "max._batch_id": 0, "max.ts": T0, "num_records": 1},
        {"path": "b.parquet", "min._batch_id": None, "max._batch_id": None, "max.ts": None, "num_records": 2},
        {"path": "c.parquet", "min._batch_id": 1, "max._batch_id": 1, "max.ts": None, "num_records": 2},
        {"path": "d.parquet", "min._batch_id": 2, "max._batch_id": 2, "max.ts": None, "null_count.ts": 3},
        {"path": "e.parquet", "min._batch_id": 3, "max._batch_id": 3, "max.ts": None, "null_count.ts": 3,
         "num_records": 3},
    ]  # fmt: skip
    scan = scan_log(rows, "ts")
    assert [s.path for s in scan.spans] == ["a.parquet", "e.parquet"]  # e: every event time null, known
    assert scan.unknown == ["b.parquet", "c.parquet", "d.parquet"]
    assert scan.spans[1].high is None


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 1, 1, 0, 0, 0, 999999, tzinfo=UTC), datetime(2026, 1, 1, 0, 0, 0, 999000, tzinfo=UTC)),
        (datetime(2026, 1, 1, 1, 0, 0, 1500), datetime(2026, 1, 1, 1, 0, 0, 1000, tzinfo=UTC)),  # naive: UTC
    ],
)
def test_to_millis_truncates_in_utc(moment: datetime, expected: datetime) -> None:
    assert to_millis(moment) == expected
