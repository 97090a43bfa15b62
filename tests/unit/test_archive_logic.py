"""Pure logic of the cold tier: the state machine, aggregates with their own index, the tee that writes two
copies from one read, cold-partition policy, restore paths, and the archive config section."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tierlake.config import ArchiveTable, load_settings
from tierlake.errors import ConfigError, StorageError, TapeError
from tiers.archive import aggregate
from tiers.archive.aggregate import Member
from tiers.archive.catalog import CATALOG_SCHEMA, Catalog, query
from tiers.archive.compliance import safe_destination
from tiers.archive.policy import DataFile, is_cold
from tiers.archive.state import FileState, InvalidTransition, advance
from tiers.archive.tee import Tee

REPO = Path(__file__).resolve().parents[2]


def test_state_machine_allows_only_the_documented_steps() -> None:
    state = FileState.STAGED
    for target in (FileState.WRITTEN, FileState.VERIFIED, FileState.PURGEABLE, FileState.PURGED, FileState.VERIFIED):
        state = advance(state, target)
    assert state is FileState.VERIFIED
    for current, target in (
        (FileState.STAGED, FileState.VERIFIED),
        (FileState.WRITTEN, FileState.PURGED),
        (FileState.VERIFIED, FileState.PURGED),
        (FileState.VERIFIED, FileState.STAGED),
    ):
        with pytest.raises(InvalidTransition, match=f"{current.value} -> {target.value}"):
            advance(current, target)


def test_aggregate_describes_itself(tmp_path: Path) -> None:
    members = []
    for n, size in enumerate((10, 70_000, 1)):
        path = tmp_path / f"m{n}"
        data = os.urandom(size)
        path.write_bytes(data)
        members.append(
            Member(source=path, size=size, fields={"path": path.name, "sha256": hashlib.sha256(data).hexdigest()})
        )
    head = aggregate.header(members, extra={"name": "x.agg"})
    chunks = list(aggregate.chunks(head, members, 4096))
    assert all(len(c) == 4096 for c in chunks[:-1])
    blob = b"".join(chunks)
    offset, parsed = aggregate.parse_header(blob)
    assert parsed["name"] == "x.agg"
    for member, listed in zip(members, parsed["members"], strict=True):
        start = offset + listed["offset"]
        assert blob[start : start + listed["size"]] == member.source.read_bytes()
    with pytest.raises(TapeError, match="not a tierlake aggregate"):
        aggregate.parse_header(b"garbage" * 4)


def test_tee_gives_each_copy_the_stream_and_one_hash() -> None:
    data = [os.urandom(1000) for _ in range(50)]
    tee = Tee(iter(data), 2, depth=2)
    got: dict[int, bytes] = {}

    def consume(copy: int) -> None:
        got[copy] = b"".join(tee.branch(copy))

    threads = [threading.Thread(target=consume, args=(c,)) for c in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert got[0] == got[1] == b"".join(data)
    assert tee.sha256() == hashlib.sha256(b"".join(data)).hexdigest()


def test_tee_stops_the_other_copy_when_one_fails() -> None:
    tee = Tee(iter([b"x" * 10] * 100), 2, depth=1)
    first = tee.branch(0)
    next(first)
    tee.cancel()
    with pytest.raises(TapeError, match="stopped"):
        list(tee.branch(1))
    with pytest.raises(TapeError, match="no SHA-256"):
        tee.sha256()


def test_tee_gives_no_hash_for_a_source_that_failed() -> None:
    def source() -> Iterator[bytes]:
        yield b"a" * 100
        raise OSError("disk gone")

    tee = Tee(source(), 1, depth=1)
    with pytest.raises(OSError, match="disk gone"):
        list(tee.branch(0))
    with pytest.raises(TapeError, match="no SHA-256"):
        tee.sha256()


def _files(day: str) -> list[DataFile]:
    return [
        DataFile(
            bucket="b",
            key=f"t/day={day}/f",
            path=f"day={day}/f",
            size=1,
            partition=f"day={day}",
            partition_values={"day": day},
            version_added=0,
        )
    ]


def test_cold_by_age_and_by_access(tmp_path: Path) -> None:
    policy = ArchiveTable(
        table="t", partition_column="day", key_column="k", cold_by="age", cold_after_days=30, retention_days=0
    )
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert is_cold(policy, _files("2026-04-01"), now=now)[0]
    assert not is_cold(policy, _files("2026-05-20"), now=now)[0]
    with pytest.raises(ConfigError, match="not a date"):
        is_cold(policy, _files("north"), now=now)
    wrong = ArchiveTable(
        table="t", partition_column="hour", key_column="k", cold_by="age", cold_after_days=1, retention_days=0
    )
    with pytest.raises(ConfigError, match="not a partition"):
        is_cold(wrong, _files("2026-04-01"), now=now)
    by_access = ArchiveTable(
        table="t", partition_column="day", key_column="k", cold_by="access", cold_after_days=1, retention_days=0
    )
    assert is_cold(by_access, _files("2026-05-31"), now=now, cache_index=tmp_path / "none.sqlite") == (
        True,
        "never read through the edge cache",
    )


def test_restore_destination_stays_under_its_root(tmp_path: Path) -> None:
    assert safe_destination(tmp_path, "lake", "a/b.parquet") == (tmp_path / "lake" / "a" / "b.parquet").resolve()
    for bucket, key in (("lake", "../x"), ("lake", "/etc/passwd"), ("..", "x"), ("lake", "a//b"), ("lake", "a/./b")):
        with pytest.raises(ConfigError, match="escapes"):
            safe_destination(tmp_path, bucket, key)


def test_archive_config_section_is_validated() -> None:
    settings = load_settings("ci", conf_dir=REPO / "conf", env={})
    assert settings.archive.sites == ("site-a", "site-b")
    assert settings.archive.block_size == 1048576
    bad = {
        "TIERLAKE_ARCHIVE__SITES": "[one]",
        "TIERLAKE_ARCHIVE__BLOCK_SIZE": "100",
        "TIERLAKE_ARCHIVE__BACKEND": "floppy",
        "TIERLAKE_ARCHIVE__TABLES": "{t: {cold_by: age}}",
    }
    for name, value in bad.items():
        with pytest.raises(ConfigError, match=name):
            load_settings("ci", conf_dir=REPO / "conf", env={name: value})
    tables = "{silver/ev: {partition_column: day, key_column: k, cold_by: age, cold_after_days: 9, retention_days: 1}}"
    loaded = load_settings("ci", conf_dir=REPO / "conf", env={"TIERLAKE_ARCHIVE__TABLES": tables})
    assert loaded.archive.tables["silver/ev"].cold_after_days == 9


def test_audit_events_stay_chained_when_another_writer_comes_between(tmp_path: Path) -> None:
    """A catalog object chains its next event to its own last one only while the log is where it left it: an
    event of another writer (another process's catalog object) in between is read and chained to."""
    ours = Catalog(str(tmp_path / "catalog"), str(tmp_path / "audit"))
    other = Catalog(str(tmp_path / "catalog"), str(tmp_path / "audit"))
    ours.record("recall", target="A00001")
    ours.record("recalled", target="A00001")  # chained to our own last event, the log not read
    other.record("restore", target="B00001")
    ours.record("recall", target="A00002")  # the log moved on: chained to the other writer's event
    events = ours.audit().sort_by("at").to_pylist()
    assert [e["action"] for e in events] == ["recall", "recalled", "restore", "recall"]
    assert [e["prev_hash"] for e in events[1:]] == [e["hash"] for e in events[:-1]]
    assert ours.audit_chain_ok()


def test_catalog_sql_reads_only_the_catalog_and_audit(tmp_path: Path) -> None:
    catalog = Catalog(str(tmp_path / "catalog"), str(tmp_path / "audit"))
    row: dict[str, object] = {f.name: None for f in CATALOG_SCHEMA}
    row |= {"file_id": "a", "table": "t", "path": "p", "key_min": "a", "key_max": "m", "copy": 1, "legal_hold": False}
    catalog.append([row, row | {"file_id": "b", "key_min": "n", "key_max": "z"}])
    catalog.update("file_id = 'a'", {"state": "'PURGED'"})  # delta-rs rewrites that file with string_view columns
    catalog.record("query", target="test")
    found = query(
        "SELECT file_id, state FROM catalog WHERE key_min <= 'c' AND 'c' <= key_max",
        catalog=catalog.dataset(),
        audit=catalog.audit_dataset(),
    )
    assert found.to_pylist() == [{"file_id": "a", "state": "PURGED"}]
    assert query("SELECT action FROM audit", catalog=catalog.dataset(), audit=catalog.audit_dataset()).num_rows == 1
    assert catalog.audit_chain_ok()
    for sql in ("SELECT * FROM read_csv('/etc/hostname')", f"COPY (SELECT 1) TO '{tmp_path / 'x.csv'}'"):
        with pytest.raises(StorageError, match="disabled by configuration"):
            query(sql, catalog=catalog.dataset(), audit=catalog.audit_dataset())
    assert not (tmp_path / "x.csv").exists()
