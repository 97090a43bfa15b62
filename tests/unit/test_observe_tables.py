"""The tables part of the operator's view on a local Delta table (delta-rs): the last OPTIMIZE is found past the
200 commits the report used to read, the search is bounded and says so, and what was read once is not read again."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from pipelines.observe.gather import LakeReport
from pipelines.observe.render import tables_html
from pipelines.observe.tables import (
    OperationScan,
    TableRow,
    commit_operation,
    log_versions,
    scan_operations,
)

OLD_HISTORY_SCAN = 200
APPENDS_AFTER_OPTIMIZE = OLD_HISTORY_SCAN + 5


@pytest.fixture(scope="module")
def optimized_then_busy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two appends, OPTIMIZE (version 2), then 205 appends: the OPTIMIZE is 205 commits back."""
    folder = tmp_path_factory.mktemp("busy")
    one = pa.table({"power_kw": [1.0]})
    write_deltalake(str(folder), one)
    table = DeltaTable(str(folder))
    write_deltalake(table, one, mode="append")
    table.optimize.compact()
    for _ in range(APPENDS_AFTER_OPTIMIZE):
        write_deltalake(table, one, mode="append")
    return folder


class LocalLog:
    """A local table's ``_delta_log``, read the way the report reads RGW's (by version), counting the reads."""

    def __init__(self, folder: Path) -> None:
        self.log = folder / "_delta_log"
        self.reads = 0

    def versions(self) -> list[int]:
        return log_versions([f"t/_delta_log/{p.name}" for p in self.log.iterdir()])

    def read(self, version: int) -> bytes:
        self.reads += 1
        return (self.log / f"{version:020d}.json").read_bytes()


def test_the_log_lists_commits_only(optimized_then_busy: Path) -> None:
    versions = LocalLog(optimized_then_busy).versions()
    assert versions == list(range(APPENDS_AFTER_OPTIMIZE + 3))  # delta-rs' checkpoint files are not commits
    assert log_versions(["t/_delta_log/_last_checkpoint", "t/_delta_log/00000000000000000010.checkpoint.parquet"]) == []


def test_an_optimize_past_the_old_limit_is_found(optimized_then_busy: Path) -> None:
    log = LocalLog(optimized_then_busy)
    versions = log.versions()
    optimize_op, optimize_at = commit_operation(log.read(2))
    assert optimize_op == "OPTIMIZE"
    found = scan_operations(versions, log.read)
    assert found.optimize_s == optimize_at
    assert found.scanned == len(versions)  # one batch of 512 reaches it
    history = DeltaTable(str(optimized_then_busy)).history(OLD_HISTORY_SCAN)
    assert "OPTIMIZE" not in {entry.get("operation") for entry in history}  # what the old scan missed


def test_the_scan_is_bounded_and_says_it_stopped_short(optimized_then_busy: Path) -> None:
    log = LocalLog(optimized_then_busy)
    found = scan_operations(log.versions(), log.read, limit=50)
    assert found == OperationScan(optimize_s=None, vacuum_s=None, scanned=50, complete=False)
    assert log.reads == 50
    row = TableRow(table="silver/ev", exists=True, scanned_commits=found.scanned, scanned_all=found.complete)
    page = tables_html(LakeReport(generated_s=100.0, since_s=0.0, tables=[row]))
    assert "<td>none in the last 50 commits</td>" in page
    assert "<td>none recorded</td>" in page  # no VACUUM lineage record: not "never"
    assert "at most 10,000 per table" in page


def test_commits_read_once_are_not_read_again(optimized_then_busy: Path) -> None:
    log = LocalLog(optimized_then_busy)
    seen: dict[int, tuple[str, float]] = {}
    first = scan_operations(log.versions(), log.read, seen=seen)
    reads = log.reads
    again = scan_operations(log.versions(), log.read, seen=seen)
    assert again == first
    assert log.reads == reads


def test_a_vacuum_commit_and_a_commit_without_info() -> None:
    info = {"commitInfo": {"operation": "VACUUM END", "timestamp": 5000}}
    assert commit_operation(json.dumps(info).encode() + b"\n") == ("VACUUM END", 5.0)
    assert commit_operation(b'{"add": {"path": "x"}}\n') == ("", 0.0)
    bodies = {0: b'{"commitInfo": {"operation": "WRITE", "timestamp": 1000}}', 1: json.dumps(info).encode()}
    found = scan_operations([0, 1], bodies.__getitem__)
    assert (found.optimize_s, found.vacuum_s, found.complete) == (None, 5.0, True)


def test_the_page_shows_checkpoint_age_and_vacuum_record_time() -> None:
    row = TableRow(
        table="silver/ev",
        exists=True,
        version=300,
        last_checkpoint=290,
        last_checkpoint_s=7100.0,
        last_vacuum_s=10.0,
        last_optimize_s=3600.0,
    )
    page = tables_html(LakeReport(generated_s=7200.0, since_s=0.0, tables=[row]))
    assert "<td>version 290, 1.7 min ago</td>" in page
    assert "<td>1.0 h ago</td>" in page  # OPTIMIZE
    assert "<td>2.0 h ago</td>" in page  # VACUUM, from its lineage record
