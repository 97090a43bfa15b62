"""The loader following a live table written by delta-rs in a local folder: appends while it iterates, an OPTIMIZE
in between, a schema change, a non-append commit, partition filters, and resume from a state taken mid-stream."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from loaders import DeltaLoader, OrderOptions, delta_dataset, token_dataset
from loaders.follow import FollowOptions
from tests.unit.loader_tables import token_rows, write_token_table
from tierlake.errors import NotFound, SchemaMismatch, TierlakeError

FAST = 0.05  # seconds between reads of the log


def append(path: Path, first: int, count: int) -> None:
    write_deltalake(str(path), token_rows(first, count), mode="append")


def ids_of(loader: DeltaLoader, *, batches: int | None = None) -> list[list[int]]:
    out = []
    for batch in loader:
        out.append(batch["id"].tolist())
        if batches is not None and len(out) == batches:
            break
    return out


def drain(loader: DeltaLoader, into: list[int]) -> None:
    for batch in loader:
        into.extend(batch["id"].tolist())


def flat(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "live"
    write_token_table(path, [60, 40])  # versions 0 and 1: the pinned snapshot holds ids 0..99
    return path


def test_appends_while_iterating_are_served_once_after_the_snapshot(table: Path) -> None:
    dataset = delta_dataset(table, version=1, columns=["id"], order=OrderOptions(seed=4))
    loader = DeltaLoader(dataset, batch_size=10, follow=FollowOptions(idle_timeout_s=3, poll_interval_s=FAST))

    def writer() -> None:
        for index in range(6):
            time.sleep(0.2)
            append(table, 100 + 30 * index, 30)

    thread = threading.Thread(target=writer)
    thread.start()
    served = flat(ids_of(loader))
    thread.join()
    assert sorted(served) == list(range(280))  # every row once: nothing lost, nothing twice
    assert set(served[:100]) == set(range(100))  # the pinned snapshot first
    assert served[100:] != sorted(served[100:])  # new data is shuffled within each version
    assert loader.state_dict()["follow"]["version"] == 8


def test_optimize_between_appends_serves_nothing_twice(table: Path) -> None:
    dataset = delta_dataset(table, version=1, columns=["id"])
    append(table, 100, 20)  # v2
    DeltaTable(str(table)).optimize.compact()  # v3: dataChange false, rewrites every row served so far
    append(table, 120, 20)  # v4
    loader = DeltaLoader(
        dataset, batch_size=10, follow=FollowOptions(max_versions=3, idle_timeout_s=5, poll_interval_s=FAST)
    )
    served = flat(ids_of(loader))
    assert sorted(served) == list(range(140))
    operations = {entry["version"]: entry["operation"] for entry in DeltaTable(str(table)).history()}
    assert operations[3] == "OPTIMIZE"  # v3 really was a compaction


def test_a_schema_change_stops_with_an_error_naming_the_version(table: Path) -> None:
    dataset = delta_dataset(table, version=1, columns=["id"])
    append(table, 100, 20)  # v2 is served
    wider = token_rows(120, 10).append_column("extra", pa.array(np.zeros(10), pa.float64()))
    write_deltalake(str(table), wider, mode="append", schema_mode="merge")  # v3
    loader = DeltaLoader(dataset, batch_size=10, follow=FollowOptions(idle_timeout_s=5, poll_interval_s=FAST))
    served: list[int] = []
    with pytest.raises(SchemaMismatch, match=r"version 3 of .* changes its schema \(extra: \(none\) -> double\)"):
        drain(loader, served)
    assert sorted(served) == list(range(120))  # the versions before the change were served


def test_a_delete_stops_with_an_error_naming_the_version(table: Path) -> None:
    dataset = delta_dataset(table, version=1, columns=["id"])
    DeltaTable(str(table)).delete("id < 5")  # v2
    loader = DeltaLoader(dataset, batch_size=10, follow=FollowOptions(idle_timeout_s=5, serve_snapshot=False))
    with pytest.raises(TierlakeError, match=r"version 2 of .* \(DELETE\) removes .* not append-only"):
        list(loader)


def test_resume_from_a_state_taken_mid_stream_serves_the_identical_sequence(table: Path) -> None:
    for index in range(5):
        append(table, 100 + 23 * index, 23)  # v2..v6, row counts that do not fill whole batches
    options = FollowOptions(max_versions=5, idle_timeout_s=5, window=2, poll_interval_s=FAST)

    def loader() -> DeltaLoader:
        dataset = delta_dataset(table, version=1, columns=["id"], order=OrderOptions(seed=9))
        return DeltaLoader(dataset, batch_size=8, follow=options)

    whole = ids_of(loader())
    for cut in (5, 13, 16, 20):  # in the snapshot, at its end, in the new data
        first = loader()
        head = ids_of(first, batches=cut)
        resumed = loader()
        resumed.load_state_dict(first.state_dict())
        assert head + ids_of(resumed) == whole, cut
    # The snapshot's 100 rows give 12 batches (its tail of 4 is dropped, as in any epoch); v2..v6 (23 rows, one
    # row group each) close two segments of window 2 (92 rows: 11 batches, 4 rows wait), v6 waits for a partner.
    assert len(flat(whole)) == 96 + 88


def test_iterating_again_continues_where_following_stopped(table: Path) -> None:
    dataset = delta_dataset(table, version=1, columns=["id"])
    loader = DeltaLoader(dataset, batch_size=10, follow=FollowOptions(idle_timeout_s=0.3, poll_interval_s=FAST))
    first = flat(ids_of(loader))
    append(table, 100, 30)
    second = flat(ids_of(loader))
    assert sorted(first) == list(range(100))
    assert sorted(second) == list(range(100, 130))


def test_a_stop_event_ends_following(table: Path) -> None:
    stop = threading.Event()
    dataset = delta_dataset(table, version=1, columns=["id"])
    loader = DeltaLoader(
        dataset, batch_size=10, follow=FollowOptions(idle_timeout_s=None, stop=stop, poll_interval_s=FAST)
    )
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    assert sorted(flat(ids_of(loader))) == list(range(100))  # returned once stop was set
    timer.join()


def test_partition_filters_apply_to_new_versions(tmp_path: Path) -> None:
    path = tmp_path / "parts"
    write_token_table(path, [30], partition=True)
    dataset = delta_dataset(path, columns=["id", "part"], partition_filters=[("part", "=", "1")])
    write_deltalake(str(path), token_rows(30, 30), mode="append", partition_by=["part"])
    loader = DeltaLoader(dataset, batch_size=1, follow=FollowOptions(max_versions=1, idle_timeout_s=5))
    batches = list(loader)
    assert sorted(int(b["id"]) for b in batches) == [i for i in range(60) if i % 3 == 1]
    assert {int(b["part"]) for b in batches} == {1}


def test_timestamps_are_served_as_int64_microseconds(tmp_path: Path) -> None:
    path = tmp_path / "times"
    stamps = pa.array([1_700_000_000_123_456, 1_700_000_001_000_000], pa.timestamp("us", tz="UTC"))
    write_deltalake(str(path), pa.table({"ts": stamps}))
    loader = DeltaLoader(delta_dataset(path, order=OrderOptions(shuffle=False)), batch_size=2)
    (batch,) = list(loader)
    assert batch["ts"].tolist() == [1_700_000_000_123_456, 1_700_000_001_000_000]


def test_a_state_of_another_window_or_without_follow_is_refused(table: Path) -> None:
    dataset = delta_dataset(table, version=1, columns=["id"])
    plain = DeltaLoader(dataset, batch_size=10).state_dict()
    following = DeltaLoader(dataset, batch_size=10, follow=FollowOptions(window=2))
    with pytest.raises(TierlakeError, match="has no follow cursor"):
        following.load_state_dict(plain)
    other: dict[str, Any] = DeltaLoader(dataset, batch_size=10, follow=FollowOptions(window=3)).state_dict()
    with pytest.raises(TierlakeError, match=r"window = 3 row groups.*Fix: use FollowOptions\(window=3\)"):
        following.load_state_dict(other)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"idle_timeout_s": -1}, "idle_timeout_s = -1 is invalid"),
        ({"max_versions": 0}, "max_versions = 0 is invalid"),
        ({"poll_interval_s": 0}, "poll_interval_s = 0 is invalid"),
        ({"window": 0}, "window = 0 row groups is invalid"),
    ],
)
def test_invalid_follow_options_name_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(TierlakeError, match=message):
        FollowOptions(**options)


def test_following_a_token_dataset_is_refused_when_the_loader_is_built(table: Path) -> None:
    tokens = token_dataset(table, seq_len=4, column="tokens")
    with pytest.raises(TierlakeError, match=r"packed token sequences\. Fix: follow a delta_dataset"):
        DeltaLoader(tokens, batch_size=2, follow=True)


def test_two_ranks_share_the_new_versions_without_overlap(table: Path) -> None:
    for index in range(3):
        append(table, 100 + 20 * index, 20)  # v2..v4: 60 new rows
    dataset = delta_dataset(table, version=1, columns=["id"], order=OrderOptions(seed=3))
    follow = FollowOptions(max_versions=3, idle_timeout_s=5, serve_snapshot=False)
    ranks = [DeltaLoader(dataset, batch_size=7, rank=r, world_size=2, follow=follow) for r in range(2)]
    served = [flat(ids_of(loader)) for loader in ranks]
    assert not set(served[0]) & set(served[1])
    assert len(served[0]) == len(served[1]) == 7 * (60 // 14)  # whole global steps of 14 only
    assert set(served[0]) | set(served[1]) <= set(range(100, 160))
    assert ranks[0].state_dict()["follow"] == ranks[1].state_dict()["follow"]


def test_a_cursor_whose_commit_was_cleaned_from_the_log_is_not_found(table: Path) -> None:
    dataset = delta_dataset(table, version=1, columns=["id"])
    append(table, 100, 10)  # v2
    append(table, 110, 10)  # v3
    (table / "_delta_log" / f"{2:020d}.json").unlink()  # what log retention does to old commits
    loader = DeltaLoader(dataset, batch_size=10, follow=FollowOptions(serve_snapshot=False, idle_timeout_s=5))
    with pytest.raises(NotFound, match=r"commit 2 of .* is gone from its log .*oldest JSON commit left is 3"):
        list(loader)
