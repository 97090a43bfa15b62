"""The strict record reader (pipelines/ingest/records.py): the adversarial records found by outside testing as named
cases, and properties over arbitrary bytes and arbitrary JSON-shaped records (hypothesis)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.ingest import records
from pipelines.ingest.records import RULES, Verdict, judge_record
from pipelines.ingest.rules import judgement_columns
from tierlake.config import load_settings
from tierlake.entities import EntitySpec, FieldSpec

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
EV = load_settings("local", env={}).entities["ev"]
GOOD = {
    "event_id": "e1",
    "station_id": "st-1",
    "connector": 2,
    "ts": "2026-12-06T11:59:00Z",
    "power_kw": 50,
    "status": "charging",
}


def _judge(value: bytes | None, key: bytes | None = b"st-1", entity: EntitySpec = EV) -> Verdict:
    return judge_record(value, key, entity, ingest_time=NOW)


def _text(**changes: Any) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def _replace(old: str, new: str) -> bytes:
    return json.dumps(GOOD).replace(old, new, 1).encode()


ADVERSARIAL = {
    # name: (value, rule)
    "epoch_millis_number": (_text(ts=1796512953333), "wrong_type"),
    "year_10000": (_text(ts="10000-01-01T00:00:00Z"), "wrong_type"),
    "year_0": (_text(ts="0000-01-01T00:00:00Z"), "wrong_type"),
    "duplicate_key_last_would_win": (_replace('"power_kw": 50', '"power_kw": 10, "power_kw": 900'), "duplicate_key"),
    "integer_timestamp_overflow": (_text(ts=162847858479220875), "wrong_type"),
    "number_for_string": (_text(event_id=12), "wrong_type"),
    "object_for_string": (_text(station_id={"a": 1}), "wrong_type"),
    "boolean_for_string": (_text(status=True), "wrong_type"),
    "array_for_string": (_text(status=["charging"]), "wrong_type"),
    "lone_surrogate": (_replace('"e1"', '"e1-\\ud800"'), "invalid_unicode"),
    "single_quotes": (b"{'event_id': 'x1', 'station_id': 'st-1'}", "malformed_json"),
    "trailing_garbage": (_text() + b" garbage", "malformed_json"),
    "two_objects": (_text() + _text(event_id="e2"), "malformed_json"),
    "nan": (_replace("50", "NaN"), "malformed_json"),
    "infinity": (_replace("50", "-Infinity"), "malformed_json"),
    "byte_order_mark": (b"\xef\xbb\xbf" + _text(), "malformed_json"),
    "array_not_object": (b"[1, 2]", "malformed_json"),
    "bare_string": (b'"x"', "malformed_json"),
    "huge_number": (_replace("50", "9" * 1500), "number_out_of_range"),
    "float_overflow": (_replace("50", "1e400"), "number_out_of_range"),
    "deep_nesting": (b'{"x": ' + b"[" * 1944 + b"]" * 1944 + b"}", "too_deep"),
    "deep_nesting_33": (b'{"x": ' + b"[" * 33 + b"]" * 33 + b"}", "too_deep"),
    "int_beyond_int32": (_text(connector=2**31), "number_out_of_range"),
    "fraction_for_int": (_text(connector=2.0), "wrong_type"),
    "string_for_int": (_text(connector="2"), "wrong_type"),
    "integer_not_exact_as_double": (_text(power_kw=2**53 + 1), "number_out_of_range"),
    "timestamp_without_zone": (_text(ts="2026-12-06T11:59:00"), "wrong_type"),
    "timestamp_nanoseconds": (_text(ts="2026-12-06T11:59:00.123456789Z"), "wrong_type"),
    "timestamp_date_only": (_text(ts="2026-12-06"), "wrong_type"),
    "timestamp_february_30": (_text(ts="2026-02-30T00:00:00Z"), "wrong_type"),
    "empty_event_id": (_text(event_id=""), "missing_required"),
    "blank_status": (_text(status="   "), "missing_required"),
    "control_character_in_id": (_text(event_id="e\x01"), "control_character"),
    "newline_in_station": (_text(station_id="st\n1"), "control_character"),
    "overlong_utf8": (_replace('"e1"', '"e1') + b"\xc0\xaf", "invalid_utf8"),
    "encoded_surrogate_bytes": (_text() + b"\xed\xa0\x80", "invalid_utf8"),
    "empty": (b"", "empty_payload"),
    "future": (_text(ts="2036-12-06T11:59:00Z"), "future_timestamp"),
    "ancient": (_text(ts="1999-12-31T23:59:59Z"), "ancient_timestamp"),
    "out_of_range": (_text(power_kw=1000.5), "out_of_range"),
    "too_long": (_text(status="x" * 17), "too_long"),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_records_get_their_named_rule(name: str) -> None:
    value, rule = ADVERSARIAL[name]
    verdict = _judge(value)
    assert (verdict.rule, verdict.record) == (rule, None), verdict.error
    assert verdict.error


def test_a_valid_record_keeps_exact_values_and_its_extra_fields() -> None:
    verdict = _judge(_text(ts="2026-12-06T13:59:00.5+02:00", fw={"v": [1, 2]}, note="ok", gone=None))
    assert verdict.rule is None, verdict.error
    assert verdict.record is not None
    assert verdict.record["ts"] == datetime(2026, 12, 6, 11, 59, 0, 500000, tzinfo=UTC)
    assert verdict.record["power_kw"] == 50.0
    assert isinstance(verdict.record["power_kw"], float)
    assert verdict.record["voltage_v"] is None
    assert verdict.extra == {"fw": '{"v":[1,2]}', "note": "ok", "gone": None}


def test_whitespace_around_the_object_is_json() -> None:
    assert _judge(b" \n" + _text() + b"\r\n\t ").rule is None


def test_epoch_formats_only_where_declared() -> None:
    declared = EntitySpec(
        **{
            **EV.__dict__,
            "fields": tuple(
                FieldSpec(name=f.name, type=f.type, required=f.required, formats=("iso8601", "epoch_ms"))
                if f.name == "ts"
                else f
                for f in EV.fields
            ),
        }
    )
    millis = int((NOW - timedelta(minutes=1)).timestamp() * 1000)
    verdict = _judge(_text(ts=millis), entity=declared)
    assert verdict.record is not None, verdict.error
    assert verdict.record["ts"] == NOW - timedelta(minutes=1)
    overflow = _judge(_text(ts=162847858479220875), entity=declared)
    assert overflow.rule == "number_out_of_range", overflow.error
    assert _judge(_text(ts=millis / 1000), entity=declared).rule == "wrong_type"


def test_rules_are_ranked_in_their_order() -> None:
    """A record breaking two rules is named by the earlier one (syntax before duplicates, types before ranges)."""
    assert _judge(b'{"a": 1, "a": 2} x').rule == "malformed_json"
    assert _judge(_replace('"power_kw": 50', '"power_kw": 1e400, "power_kw": 1')).rule == "duplicate_key"
    assert _judge(_text(connector="2", power_kw=5000)).rule == "wrong_type"
    assert _judge(_text(power_kw=5000), key=None).rule == "null_key"
    assert RULES.index("wrong_type") < RULES.index("out_of_range")


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)
FIELD_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "event_id": JSON_VALUES,
        "station_id": JSON_VALUES,
        "connector": JSON_VALUES,
        "ts": JSON_VALUES | st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
        "power_kw": JSON_VALUES,
        "status": JSON_VALUES,
        "temp_c": JSON_VALUES,
    },
)


def _check_verdict(verdict: Verdict) -> None:
    assert (verdict.rule is None) == (verdict.record is not None)
    if verdict.rule is not None:
        assert verdict.rule in RULES
        assert verdict.error
    judgement_columns([verdict], EV)  # every verdict fits the Arrow (and so the Spark) types


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(value=st.binary(max_size=600), key=st.none() | st.binary(max_size=8))
def test_arbitrary_bytes_never_raise(value: bytes, key: bytes | None) -> None:
    _check_verdict(_judge(value, key))


@settings(max_examples=400, deadline=None)
@given(fields=FIELD_VALUES, extra=st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=3))
def test_silver_values_are_exactly_what_a_strict_parser_reads(fields: dict[str, Any], extra: dict[str, Any]) -> None:
    record = {**extra, **fields}
    text = json.dumps(record)
    verdict = _judge(text.encode())
    _check_verdict(verdict)
    if verdict.record is None:
        return
    reference = json.loads(text)  # no duplicate keys here: json.dumps of a dict
    for field in EV.fields:
        raw, got = reference.get(field.name), verdict.record[field.name]
        if field.type == "string":
            assert got == raw
            assert isinstance(got, str) or (raw is None and not field.required)
        elif field.type == "timestamp":
            assert got == datetime.fromisoformat(raw).astimezone(UTC)
        elif raw is None:
            assert got is None
        else:
            assert not isinstance(raw, bool | str)
            assert got == raw
            assert type(got) is (int if field.type in ("int", "long") else float)


@settings(max_examples=200, deadline=None)
@given(
    event_id=st.text(min_size=1, max_size=64).filter(lambda s: s.strip() and not any(ord(c) < 32 for c in s)),
    power=st.floats(min_value=0, max_value=1000),
    connector=st.integers(min_value=1, max_value=16),
    when=st.datetimes(min_value=datetime(2000, 1, 2), max_value=datetime(2026, 12, 6, 12)),
)
def test_valid_records_pass_unchanged(event_id: str, power: float, connector: int, when: datetime) -> None:
    if any("\x7f" <= c <= "\x9f" for c in event_id):
        return
    stamp = when.replace(tzinfo=UTC)
    verdict = _judge(_text(event_id=event_id, power_kw=power, connector=connector, ts=stamp.isoformat()))
    assert verdict.record is not None, verdict.error
    assert verdict.record["event_id"] == event_id
    assert verdict.record["power_kw"] == power
    assert verdict.record["ts"] == stamp


def test_judgement_columns_are_spark_shaped() -> None:
    columns = judgement_columns([_judge(_text()), _judge(b"")], EV)
    assert columns["_rec"].type.num_fields == len(EV.fields)
    assert columns["_rec"].is_null().to_pylist() == [False, True]
    assert columns["extra_fields"].type == pa.map_(pa.string(), pa.string())


@settings(max_examples=400, deadline=None)
@given(
    text=st.one_of(
        JSON_VALUES.map(json.dumps),
        st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=5).map(lambda d: " " + json.dumps(d) + "\n"),
        st.text(alphabet='{}[]":,0123456789e-.tnufalsrN\\ud8', max_size=40),
    )
)
def test_the_fast_path_reads_exactly_what_the_exact_path_reads(text: str) -> None:
    def outcome(parse: Any) -> tuple[str, Any]:
        try:
            return "ok", parse(text)
        except Exception as exc:
            return "broken", getattr(exc, "rule", type(exc).__name__)

    assert outcome(records.parse_object) == outcome(records._parse_exactly)
