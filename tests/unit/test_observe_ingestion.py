"""``--since`` is honoured: the report's series read a bounded number of commits, sampled across the whole window
rather than the newest few, on a local Delta table (delta-rs) whose commits span more than the limit."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from hypothesis import given
from hypothesis import strategies as st

from pipelines.observe.ingestion import rate_series, sample_commits, window_commits

COMMITS = 60
START = 1_800_000_000.0
STEP_S = 60.0  # one commit a minute: the log spans an hour


@pytest.fixture(scope="module")
def hour_of_commits(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[int, float, str]]:
    """60 appends of 10 records each, their commit files dated a minute apart (what RGW's object time would say),
    listed as the report lists RGW: (version, visible since, key)."""
    folder = tmp_path_factory.mktemp("hour")
    ten = pa.table({"power_kw": [float(n) for n in range(10)]})
    write_deltalake(str(folder), ten)
    table = DeltaTable(str(folder))
    for _ in range(COMMITS - 1):
        write_deltalake(table, ten, mode="append")
    listed = []
    for version in range(COMMITS):
        path = folder / "_delta_log" / f"{version:020d}.json"
        at_s = START + version * STEP_S
        os.utime(path, (at_s, at_s))
        listed.append((version, path.stat().st_mtime, str(path)))
    return listed


def read(key: str) -> bytes:
    return Path(key).read_bytes()


def test_a_window_longer_than_the_limit_is_sampled_end_to_end(hour_of_commits: list[tuple[int, float, str]]) -> None:
    since_s = START + 20 * STEP_S  # the last 40 commits
    found = window_commits(hour_of_commits, read, since_s=since_s, limit=8)
    assert found.in_window == 40
    assert len(found.read) == 8
    versions = [c.version for c in found.read]
    assert versions[-1] == COMMITS - 1  # the newest is always read
    assert versions[0] < 20 + 40 / 8  # the oldest read lies in the window's first eighth, not its last minutes
    gaps = [b - a for a, b in itertools.pairwise(versions)]
    assert max(gaps) <= 2 * 40 / 8
    assert all(sum(n or 0 for n in c.added.values()) == 10 for c in found.read)  # numRecords of the files added


def test_rates_use_each_sampled_commits_own_predecessor(hour_of_commits: list[tuple[int, float, str]]) -> None:
    found = window_commits(hour_of_commits, read, since_s=START, limit=6)
    rates = rate_series(found)
    assert found.read[0].version > 0  # the newest of the first bucket: its predecessor is in the log, unread
    assert len(rates) == len(found.read)
    assert all(records == 10 and seconds == pytest.approx(STEP_S) for _, records, seconds in rates)


def test_a_window_within_the_limit_reads_every_commit(hour_of_commits: list[tuple[int, float, str]]) -> None:
    found = window_commits(hour_of_commits, read, since_s=START + 50 * STEP_S, limit=120)
    assert [c.version for c in found.read] == list(range(50, COMMITS))
    assert found.in_window == 10
    assert window_commits(hour_of_commits, read, since_s=START + COMMITS * STEP_S, limit=120).read == []


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=300).map(sorted), st.integers(1, 50))
def test_a_sample_is_bounded_ordered_and_keeps_the_newest(times: list[float], limit: int) -> None:
    chosen = sample_commits(times, limit)
    assert 1 <= len(chosen) <= limit
    assert chosen == sorted(set(chosen))
    assert chosen[-1] == len(times) - 1
