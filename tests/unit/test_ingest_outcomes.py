"""A batch's outcomes decided on the driver (``pipelines.ingest.outcomes.decide``) and the driver's index of the
duplicate check's history (``pipelines.ingest.id_index``): pure logic over Arrow tables and numpy, against a
pairwise statement of the duplicate rule. Spark's side (the facts' job, the history's probe, the appends that
filter by the outcomes) is met by the exactly-once oracle and the history's tests in tests/integration."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.ingest import id_index
from pipelines.ingest.id_index import IdIndex
from pipelines.ingest.outcomes import FLAG_RECORD, decide

SCHEMA = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("kafka_us", pa.int64()),
        ("event_id", pa.string()),
        ("valid", pa.bool_()),
        ("event_us", pa.int64()),
        ("flagged", pa.bool_()),
    ]
)


def facts(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows with defaults: topic ``t``, valid, not flagged, the event time 1,000 µs."""
    full = [
        {
            "topic": "t",
            "valid": True,
            "flagged": False,
            **row,
            "event_us": row.get("event_us", 1000) if row.get("valid", True) else None,
        }
        for row in rows
    ]
    return pa.Table.from_pylist(full, schema=SCHEMA)


def dropped_keys(table: pa.Table) -> set[tuple[str, int, int]]:
    return set(zip(*(table[name].to_pylist() for name in ("topic", "partition", "offset")), strict=True))


def test_a_batch_without_repeats_goes_to_silver_with_its_counts_high_mark_and_offsets() -> None:
    batch = facts(
        [
            {"partition": 0, "offset": 10, "kafka_us": 5, "event_id": "a", "event_us": 7_000, "flagged": True},
            {"partition": 0, "offset": 11, "kafka_us": 6, "event_id": "b", "event_us": 9_000},
            {"partition": 1, "offset": 3, "kafka_us": 4, "event_id": None, "valid": False},  # broke a rule
        ]
    )
    out = decide(batch, set())
    assert out.counts == {"silver": 2, "quarantine": 1, "dropped": 0, "flagged": 1}
    assert out.high == datetime(1970, 1, 1, 0, 0, 0, 9_000, tzinfo=UTC)
    assert out.offsets == {"t": {0: (10, 11), 1: (3, 3)}}
    assert out.dropped.num_rows == 0
    assert out.kept.to_pylist() == [  # what the duplicate check's history takes
        {"_seen_id": "a", "_seen_time": datetime(1970, 1, 1, 0, 0, 0, 7_000, tzinfo=UTC)},
        {"_seen_id": "b", "_seen_time": datetime(1970, 1, 1, 0, 0, 0, 9_000, tzinfo=UTC)},
    ]


def test_the_copy_kafka_received_first_is_kept_then_partition_then_offset() -> None:
    batch = facts(
        [
            {"partition": 2, "offset": 1, "kafka_us": 50, "event_id": "a"},
            {"partition": 1, "offset": 9, "kafka_us": 50, "event_id": "a"},  # same time, lower partition: first
            {"partition": 1, "offset": 8, "kafka_us": 60, "event_id": "a"},
            {"partition": 0, "offset": 4, "kafka_us": 70, "event_id": "b"},
            {"partition": 0, "offset": 3, "kafka_us": 70, "event_id": "b"},  # same time and partition: first
        ]
    )
    out = decide(batch, set())
    assert dropped_keys(out.dropped) == {("t", 2, 1), ("t", 1, 8), ("t", 0, 4)}
    assert out.counts == {"silver": 2, "quarantine": 0, "dropped": 3, "flagged": 0}


def test_a_late_copy_received_first_makes_a_later_valid_copy_a_duplicate_and_a_rule_breaker_does_not() -> None:
    batch = facts(
        [
            {"partition": 0, "offset": 1, "kafka_us": 10, "event_id": "a", "valid": False},  # late_event
            {"partition": 0, "offset": 2, "kafka_us": 20, "event_id": "a"},
            {"partition": 0, "offset": 3, "kafka_us": 5, "event_id": None, "valid": False},  # no typed record
            {"partition": 0, "offset": 4, "kafka_us": 30, "event_id": "b"},
        ]
    )
    out = decide(batch, set())
    assert dropped_keys(out.dropped) == {("t", 0, 2)}
    assert out.counts == {"silver": 1, "quarantine": 2, "dropped": 1, "flagged": 0}


def test_an_id_silver_holds_drops_every_valid_copy_of_it() -> None:
    batch = facts(
        [
            {"partition": 0, "offset": 1, "kafka_us": 10, "event_id": "old", "flagged": True},
            {"partition": 1, "offset": 1, "kafka_us": 11, "event_id": "old"},
            {"partition": 1, "offset": 2, "kafka_us": 12, "event_id": "new"},
        ]
    )
    out = decide(batch, {"old", "not in this batch"})
    assert dropped_keys(out.dropped) == {("t", 0, 1), ("t", 1, 1)}
    assert out.counts == {"silver": 1, "quarantine": 0, "dropped": 2, "flagged": 0}  # a dropped row is not flagged
    assert out.high == datetime(1970, 1, 1, 0, 0, 0, 1_000, tzinfo=UTC)


def test_the_flags_are_the_records_of_the_flagged_silver_rows_only() -> None:
    """The facts carry a flagged row's record (``batch_facts`` with a flag rule); the flags' append writes
    ``Outcomes.flags`` from the driver, so a flagged row dropped as a duplicate must not be in it."""
    rows: list[dict[str, Any]] = [
        {"partition": 0, "offset": 1, "kafka_us": 1, "event_id": "a", "flagged": True},
        {"partition": 0, "offset": 2, "kafka_us": 2, "event_id": "a", "flagged": True},  # a's second copy: dropped
        {"partition": 0, "offset": 3, "kafka_us": 3, "event_id": "b"},
        {"partition": 0, "offset": 4, "kafka_us": 4, "event_id": "c", "flagged": True},
        {"partition": 0, "offset": 5, "kafka_us": 5, "event_id": "old", "flagged": True},  # silver holds it
    ]
    batch = facts(rows)
    record = pa.struct([("event_id", pa.string()), ("temp_c", pa.float64())])
    records = [{"event_id": r["event_id"], "temp_c": 90.0 + r["offset"]} if r.get("flagged") else None for r in rows]
    batch = batch.append_column(pa.field(FLAG_RECORD, record), pa.array(records, record))
    out = decide(batch, {"old"})
    assert out.flags is not None
    assert out.flags.to_pylist() == [{"event_id": "a", "temp_c": 91.0}, {"event_id": "c", "temp_c": 94.0}]
    assert out.counts["flagged"] == out.flags.num_rows == 2
    assert decide(facts(rows), set()).flags is None  # no flag rule, no records


def test_a_batch_of_rule_breakers_only_has_no_high_mark() -> None:
    out = decide(facts([{"partition": 0, "offset": 1, "kafka_us": 1, "event_id": None, "valid": False}]), set())
    assert (out.high, out.counts["silver"], out.kept.num_rows) == (None, 0, 0)


row = st.fixed_dictionaries(
    {
        "partition": st.integers(0, 2),
        "kafka_us": st.integers(0, 4),
        "event_id": st.sampled_from(["a", "b", "c", "d"]),
        "kind": st.sampled_from(["valid", "valid", "late", "broken"]),
        "flagged": st.booleans(),
    }
)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(row, max_size=30), seen=st.sets(st.sampled_from(["a", "b", "c", "d", "e"])))
def test_decide_agrees_with_the_rule_stated_row_by_row(rows: list[dict[str, Any]], seen: set[str]) -> None:
    """A valid row is dropped iff silver holds its id, or another row with a typed record (valid or late) of the
    same id comes before it by (Kafka time, partition, offset)."""
    batch = []
    for offset, drawn in enumerate(rows):  # offsets unique, so every row has its own place in Kafka
        broken = drawn["kind"] == "broken"
        batch.append(
            {
                "partition": drawn["partition"],
                "offset": offset,
                "kafka_us": drawn["kafka_us"],
                "event_id": None if broken else drawn["event_id"],
                "valid": drawn["kind"] == "valid",
                "flagged": drawn["flagged"] and drawn["kind"] == "valid",
            }
        )
    record = pa.struct([("offset", pa.int64())])
    flagged = pa.array([{"offset": r["offset"]} if r["flagged"] else None for r in batch], record)
    out = decide(facts(batch).append_column(pa.field(FLAG_RECORD, record), flagged), seen)

    def place(r: dict[str, Any]) -> tuple[int, int, int]:
        return (r["kafka_us"], r["partition"], r["offset"])

    expected = {
        ("t", r["partition"], r["offset"])
        for r in batch
        if r["valid"]
        and (
            r["event_id"] in seen
            or any(q["event_id"] == r["event_id"] and place(q) < place(r) for q in batch if q["event_id"] is not None)
        )
    }
    assert dropped_keys(out.dropped) == expected
    silver = [r for r in batch if r["valid"] and ("t", r["partition"], r["offset"]) not in expected]
    assert out.counts == {
        "silver": len(silver),
        "quarantine": sum(not r["valid"] for r in batch),
        "dropped": len(expected),
        "flagged": sum(r["flagged"] for r in silver),
    }
    assert sum(out.counts[k] for k in ("silver", "quarantine", "dropped")) == len(batch)  # every row, once
    assert out.flags is not None
    assert out.flags["offset"].to_pylist() == [r["offset"] for r in silver if r["flagged"]]  # in the batch's order


@settings(max_examples=200, deadline=None)
@given(
    added=st.lists(st.lists(st.tuples(st.text(max_size=6), st.integers(0, 100)), max_size=20), max_size=6),
    start=st.integers(0, 100),
    asked=st.lists(st.text(max_size=6), max_size=20),
)
def test_the_index_never_misses_an_id_it_holds(
    added: list[list[tuple[str, int]]], start: int, asked: list[str]
) -> None:
    index = IdIndex()
    for chunk in added:
        index.add([i for i, _ in chunk], [t for _, t in chunk])
    every = {i for chunk in added for i, _ in chunk}
    assert set(index.maybe([*every, *asked])) >= every
    index.compact(start)
    inside = {i for chunk in added for i, t in chunk if t >= start}
    assert set(index.maybe([*every, *asked])) >= inside  # what the history keeps at that mark, the index keeps


def test_the_index_answers_no_for_ids_it_never_took_and_gives_up_past_its_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    index = IdIndex()
    assert index.maybe(["a"]) == []  # empty: nothing can be in the history
    index.add([f"id{i}" for i in range(1000)], list(range(1000)))
    assert index.maybe(["id7", "new", "id999", "other"]) == ["id7", "id999"]
    index.compact(500)
    assert index.maybe(["id7", "id700"]) == ["id700"]
    assert len(index) == 500
    monkeypatch.setattr(id_index, "LIMIT", 600)
    index.add([f"more{i}" for i in range(200)], [1000] * 200)
    assert index.full
    assert index.maybe(["anything", "else"]) == ["anything", "else"]  # every id is looked up again
