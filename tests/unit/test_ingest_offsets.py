"""The Kafka offsets of a batch from the query's checkpoint files (pure parsing; the files' real shape is met by
the ingest integration tests, whose lineage checks compare the commits' offsets with bronze's rows)."""

from __future__ import annotations

import json

import pytest

from pipelines.ingest.offsets import differences, first_batch, parse_positions, ranges_between

METADATA = json.dumps({"batchWatermarkMs": 0, "batchTimestampMs": 1765000000000, "conf": {}})


def test_an_offset_log_file_gives_each_partitions_next_offset() -> None:
    text = f'v1\n{METADATA}\n{{"ev.t":{{"2":40,"1":121,"0":250}}}}'
    assert parse_positions(text) == {"ev.t": {0: 250, 1: 121, 2: 40}}


def test_the_sources_initial_offsets_file_starts_with_a_nul_byte() -> None:
    assert parse_positions('\x00v1\n{"ev.t":{"0":0,"1":7}}') == {"ev.t": {0: 0, 1: 7}}


@pytest.mark.parametrize(
    "text",
    ["", "{}", f"v1\n{METADATA}\n" + '{"a":{"0":1}}\n{"b":{"0":1}}', f"v1\n{METADATA}\n[1, 2]", "v1\nnot json"],
)
def test_anything_else_is_refused_so_the_batch_counts_its_rows_instead(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - json's own errors are ValueErrors too
        parse_positions(text)


def test_a_batch_reads_from_the_last_batchs_end_to_its_own_end_minus_one() -> None:
    start = {"ev.t": {0: 100, 1: 7, 2: 40}}
    end = {"ev.t": {0: 250, 1: 7, 2: 41, 3: 5}}  # partition 1 did not move; 3 is new
    assert ranges_between(start, end) == {"ev.t": {0: (100, 249), 2: (40, 40), 3: (0, 4)}}


def test_differences_name_each_partition_where_the_log_and_the_rows_disagree() -> None:
    logged = {"ev.t": {0: (100, 249), 1: (7, 9)}}
    seen = {"ev.t": {0: (100, 249), 1: (7, 8), 2: (0, 0)}}
    assert differences(logged, logged) == []
    assert differences(logged, seen) == ["ev.t-1: log (7, 9), rows (7, 8)", "ev.t-2: log None, rows (0, 0)"]


def test_first_batch_is_the_unfinished_one_or_the_next() -> None:
    assert first_batch([], []) == 0  # a new checkpoint
    assert first_batch([0, 1, 2], [0, 1, 2]) == 3  # every planned batch committed
    assert first_batch([0, 1, 2], [0, 1]) == 2  # batch 2 planned, not committed: replayed first
    assert first_batch([5, 6, 7], [6]) == 7  # old entries purged by Spark's retention: the highest decide
