"""The strict reading of one Kafka record against its entity: exactly one RFC 8259 JSON object, exact types.

Spark's ``from_json`` is lenient where a lake must not be: it takes single-quoted strings, ignores what follows the
first object (a second, concatenated object vanished), keeps the last of two equal keys (``"power_kw":10,
"power_kw":900`` became a 900 kW reading), turns numbers and objects given for a string field into text, and
wraps integer timestamps into the current time. This module reads a record the way RFC 8259 and ``conf/`` say,
in plain Python (the C scanner of the standard ``json`` module with hooks), so the same function is the rule in
the streaming plan (:mod:`pipelines.ingest.rules` runs it over Arrow batches), the oracle of the fuzz tests and the
reference a test compares silver with.

What a record must be, in rule order (the first rule broken names the quarantine row):

============================ ================================================================================
``empty_payload``            no value, or zero bytes
``oversized``                more than the entity's ``max_bytes``
``invalid_utf8``             the bytes are not UTF-8 (overlong forms and encoded surrogates included)
``null_key``                 the Kafka record has no key
``malformed_json``           not exactly one JSON object: a syntax error, single quotes, ``NaN``, a BOM, data
                             after the object (a second object too), or a value that is not an object
``duplicate_key``            one object names a key twice (RFC 8259 leaves it undefined; no value is guessed)
``too_deep``                 nesting deeper than :data:`MAX_DEPTH`
``number_out_of_range``      a number no type holds exactly: over 20 digits, a float that overflows, an
                             integer outside its field's int/long range, or one a double cannot hold exactly
``invalid_unicode``          a ``\\uD800``-style escape that is a lone surrogate (not a character)
``wrong_type``               a value of another JSON type than the field's (a number for a string, ``"1"`` for
                             an int, ``1.5`` for an int, a timestamp in a format the field does not declare)
``missing_required``         a required field absent, null, or (strings) blank
``control_character``        a control character in the event id or the key field (they are joined on)
``out_of_range``             outside the field's declared ``min``/``max``
``too_long``                 longer than the field's ``max_length`` (characters)
``future_timestamp``         event time more than ``future_tolerance_s`` after the batch's ingest time
``ancient_timestamp``        event time before 2000-01-01
============================ ================================================================================

Decisions (documented in the README's rules table): a timestamp field reads ISO 8601 / RFC 3339 *with* a zone
(``Z`` or ``+hh:mm``) and at most microseconds by default; epoch seconds or milliseconds only where the field
declares ``formats: [epoch_s]`` / ``[epoch_ms]``. A value without a zone is ``wrong_type``, never guessed as UTC.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tierlake.entities import EntitySpec, FieldSpec

RULES = (
    "empty_payload",
    "oversized",
    "invalid_utf8",
    "null_key",
    "malformed_json",
    "duplicate_key",
    "too_deep",
    "number_out_of_range",
    "invalid_unicode",
    "wrong_type",
    "missing_required",
    "control_character",
    "out_of_range",
    "too_long",
    "future_timestamp",
    "ancient_timestamp",
)
"""Every rule a single record can break, in the order they are checked (``late_event`` needs history)."""

MAX_DEPTH = 32
"""Deepest nesting of objects and arrays a record may have (the declared fields are scalars)."""
MAX_DIGITS = 20
"""An integer literal of more digits than this fits no field type (int64 has 19)."""
_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_DOUBLE_EXACT = 2**53  # integers beyond this are not all representable as a double
ANCIENT = datetime(2000, 1, 1, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ISO = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})",
)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Verdict:
    """The reading of one record: ``rule``/``error`` None for a valid one; ``record`` the typed declared fields
    (absent optional fields are None); ``extra`` the undeclared keys, each value as JSON text (strings as is)."""

    rule: str | None
    error: str | None
    record: dict[str, Any] | None = None
    extra: dict[str, str | None] | None = None


class _Broken(Exception):
    def __init__(self, rule: str, error: str) -> None:
        super().__init__(error)
        self.rule, self.error = rule, error


class _BigNumber:
    """A number literal no field type holds exactly (kept as its text for the error message)."""

    def __init__(self, text: str) -> None:
        self.text = text


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _integer(text: str) -> int | _BigNumber:
    return _BigNumber(text) if len(text.lstrip("-")) > MAX_DIGITS else int(text)


def _float(text: str) -> float | _BigNumber:
    value = float(text)
    return _BigNumber(text) if math.isinf(value) else value


def _constant(text: str) -> Any:
    raise _Broken("malformed_json", f"{text} is not a JSON value (RFC 8259 has no NaN or Infinity)")


def _decoder(duplicates: list[str]) -> json.JSONDecoder:
    """A strict decoder that notes (does not raise on) repeated keys, so a syntax error still ranks first."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        if len(obj) != len(items):
            counts: dict[str, int] = {}
            for name, _ in items:
                counts[name] = counts.get(name, 0) + 1
            duplicates.extend(name for name, n in counts.items() if n > 1)
        return obj

    return json.JSONDecoder(object_pairs_hook=pairs, parse_int=_integer, parse_float=_float, parse_constant=_constant)


def _depth(text: str) -> int:
    """The deepest nesting of ``{``/``[`` outside strings (only called when the text has many brackets)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "}]":
            depth -= 1
    return deepest


def _walk(value: Any) -> Any:
    """Every string and number in a parsed value (keys included), for the checks that look inside it."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)
    else:
        yield value


class _Unusual(Exception):  # an internal signal: leave the fast path for the exact one
    pass


def _fast_pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(items)
    if len(obj) != len(items):
        raise _Unusual
    return obj


def _fast_integer(text: str) -> int:
    if len(text) > MAX_DIGITS:  # a minus sign counts: the exact path decides
        raise _Unusual
    return int(text)


def _fast_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Unusual
    return value


def _fast_constant(text: str) -> Any:
    raise _Unusual


_FAST = json.JSONDecoder(
    object_pairs_hook=_fast_pairs, parse_int=_fast_integer, parse_float=_fast_float, parse_constant=_fast_constant
)


def parse_object(text: str) -> dict[str, Any]:
    """Exactly one JSON object from ``text``; raises :class:`_Broken` naming the first rule (in order) it breaks.

    Most records are ordinary: one pass of the C scanner whose hooks stop at anything unusual (a repeated key, a
    number no type holds, NaN), plus cheap checks on the text. Anything else takes :func:`_parse_exactly`, which
    ranks every rule a record breaks; both give the same verdict (a property test checks it).
    """
    if text.count("{") + text.count("[") <= MAX_DEPTH and _SURROGATE_ESCAPE.search(text) is None:
        start = len(text) - len(text.lstrip(" \t\n\r"))
        try:
            value, end = _FAST.raw_decode(text, start)
        except (_Unusual, json.JSONDecodeError):
            pass
        else:
            if isinstance(value, dict) and (end == len(text) or not text[end:].strip(" \t\n\r")):
                return value
    return _parse_exactly(text)


def _parse_exactly(text: str) -> dict[str, Any]:
    """:func:`parse_object` for any text: every check, in rule order."""
    duplicates: list[str] = []
    start = len(text) - len(text.lstrip(" \t\n\r"))  # RFC 8259: whitespace may surround the value
    try:
        value, end = _decoder(duplicates).raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise _Broken("malformed_json", f"not JSON: {exc.msg} at character {exc.pos}") from exc
    except RecursionError as exc:  # nesting deeper than the scanner's stack: too deep whatever follows
        raise _Broken("too_deep", f"nesting deeper than {MAX_DEPTH} levels") from exc
    if end != len(text) and text[end:].strip(" \t\n\r"):
        raise _Broken("malformed_json", f"data after the JSON object at character {end}: {_short(text[end:], 20)!r}")
    if not isinstance(value, dict):
        kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
        raise _Broken("malformed_json", f"the value is a JSON {kind}, not an object")
    if duplicates:
        raise _Broken("duplicate_key", f"key {_short(json.dumps(duplicates[0]))} appears more than once in one object")
    if text.count("{") + text.count("[") > MAX_DEPTH and (depth := _depth(text)) > MAX_DEPTH:
        raise _Broken("too_deep", f"nesting is {depth} levels deep > {MAX_DEPTH}")
    needs_unicode_check = _SURROGATE_ESCAPE.search(text) is not None
    big: _BigNumber | None = None
    lone: str | None = None
    for item in _walk(value):
        if isinstance(item, _BigNumber):
            big = big or item
        elif needs_unicode_check and isinstance(item, str) and lone is None and not _encodable(item):
            lone = item
    if big is not None:
        raise _Broken("number_out_of_range", f"number {_short(big.text)} fits no field type exactly")
    if lone is not None:
        raise _Broken("invalid_unicode", f"string {_short(ascii(lone))} holds a lone surrogate escape")
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _timestamp(field: FieldSpec, value: Any) -> datetime:
    formats = field.formats
    if isinstance(value, str) and "iso8601" in formats:
        if not _ISO.fullmatch(value):
            raise _Broken(
                "wrong_type",
                f"{field.name}: expected an ISO 8601 timestamp with a zone and at most microseconds "
                f"(e.g. 2026-12-06T10:00:00Z), got {_short(json.dumps(value))}",
            )
        try:
            return datetime.fromisoformat(value).astimezone(UTC)
        except (ValueError, OverflowError) as exc:
            raise _Broken("wrong_type", f"{field.name}: {_short(json.dumps(value))} is not a valid date") from exc
    epoch = next((f for f in ("epoch_ms", "epoch_s") if f in formats), None)
    if epoch is not None and type(value) is int:
        try:
            return _EPOCH + timedelta(**{"milliseconds" if epoch == "epoch_ms" else "seconds": value})
        except OverflowError as exc:
            raise _Broken("number_out_of_range", f"{field.name}={value} ({epoch}) is outside the years 1-9999") from exc
    raise _Broken("wrong_type", f"{field.name}: expected a timestamp as {' or '.join(formats)}, got {_json(value)}")


def _json(value: Any) -> str:
    return _short(json.dumps(value, ensure_ascii=False))


def typed(field: FieldSpec, value: Any) -> Any:
    """``value`` as ``field``'s type, exactly, or :class:`_Broken` (``wrong_type`` or ``number_out_of_range``)."""
    kind = field.type
    if kind == "string" and isinstance(value, str):
        return value
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind in _INT_RANGE and type(value) is int:
        low, high = _INT_RANGE[kind]
        if not low <= value <= high:
            raise _Broken("number_out_of_range", f"{field.name}={value} does not fit a {kind} ({low}..{high})")
        return value
    if kind == "double" and type(value) in (int, float):
        if type(value) is int and abs(value) > _DOUBLE_EXACT:
            raise _Broken("number_out_of_range", f"{field.name}={value} is not exact as a double (> 2^53)")
        return float(value)
    if kind == "timestamp":
        return _timestamp(field, value)
    raise _Broken("wrong_type", f"{field.name}: expected {kind}, got {_json(value)}")


def _field_checks(entity: EntitySpec, field: FieldSpec, raw: dict[str, Any]) -> tuple[Any, list[_Broken]]:
    """The typed value of one field and every rule it breaks (the caller keeps the first in rule order)."""
    value = raw.get(field.name)
    if value is None:
        broken = [_Broken("missing_required", f"{field.name}: required, missing or null")] if field.required else []
        return None, broken
    try:
        value = typed(field, value)
    except _Broken as exc:
        return None, [exc]
    broken = []
    if isinstance(value, str):
        if field.required and not value.strip():
            broken.append(_Broken("missing_required", f"{field.name}: required, blank ({_json(value)})"))
        if field.name in (entity.event_id, entity.key_field) and _CONTROL.search(value):
            broken.append(_Broken("control_character", f"{field.name}: {value!a} holds a control character"))
        if field.max_length is not None and len(value) > field.max_length:
            broken.append(_Broken("too_long", f"{field.name}: length {len(value)} > max_length {field.max_length}"))
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if field.min is not None and value < field.min:
            broken.append(_Broken("out_of_range", f"{field.name}={value} < min {field.min}"))
        if field.max is not None and value > field.max:
            broken.append(_Broken("out_of_range", f"{field.name}={value} > max {field.max}"))
    return value, broken


def judge_record(value: bytes | None, key: bytes | None, entity: EntitySpec, *, ingest_time: datetime) -> Verdict:
    """The verdict of one Kafka record (``ingest_time``: the batch's, aware) against ``entity``."""
    try:
        text = _payload(value, key, entity)
        raw = parse_object(text)
        record: dict[str, Any] = {}
        broken: list[_Broken] = []
        for field in entity.fields:
            record[field.name], found = _field_checks(entity, field, raw)
            broken += found
        if broken:
            first = min(broken, key=lambda b: RULES.index(b.rule))  # stable: field order breaks ties
            raise first
        _check_time(entity, record[entity.event_time], ingest_time)
    except _Broken as exc:
        return Verdict(exc.rule, exc.error)
    declared = set(entity.field_names)
    extra = {
        k: (v if isinstance(v, str) or v is None else json.dumps(v, ensure_ascii=False, separators=(",", ":")))
        for k, v in raw.items()
        if k not in declared
    }
    return Verdict(None, None, record, extra)


def _payload(value: bytes | None, key: bytes | None, entity: EntitySpec) -> str:
    if not value:
        raise _Broken("empty_payload", "empty value")
    if len(value) > entity.max_bytes:
        raise _Broken("oversized", f"value of {len(value)} bytes > max_bytes {entity.max_bytes}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Broken("invalid_utf8", f"value is not valid UTF-8 (byte {exc.start}: {exc.reason})") from exc
    if key is None:
        raise _Broken("null_key", "record has no Kafka key")
    return text


def _check_time(entity: EntitySpec, event_time: datetime, ingest_time: datetime) -> None:
    name = entity.event_time
    if event_time > ingest_time + timedelta(seconds=entity.future_tolerance_s):
        raise _Broken(
            "future_timestamp",
            f"{name}={event_time.isoformat()} is more than {entity.future_tolerance_s} s after ingest time",
        )
    if event_time < ANCIENT:
        raise _Broken("ancient_timestamp", f"{name}={event_time.isoformat()} is before 2000")
