"""Entity schemas declared in ``conf/`` (section ``entities``): fields, types, required flags and ranges.

One entity is one kind of record on one topic (``ev`` on ``ev.telemetry``, ``corpus`` on ``corpus.docs``). The
silver job parses records against these declarations and quarantines what breaks a rule; adding an optional
field here is the schema upgrade the stream picks up on its next start.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tierlake.errors import ConfigError

FIELD_TYPES = ("string", "int", "long", "double", "boolean", "timestamp")
TIMESTAMP_FORMATS = ("iso8601", "epoch_s", "epoch_ms")
"""How a timestamp field may be written: ISO 8601 with a zone (the default), or integer epoch seconds/millis."""
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True, kw_only=True)
class FieldSpec:
    name: str
    type: str
    required: bool = False
    min: float | None = None
    max: float | None = None
    max_length: int | None = None
    formats: tuple[str, ...] = ("iso8601",)  # timestamp fields only: the accepted ways to write one


@dataclass(frozen=True, kw_only=True)
class EntitySpec:
    name: str
    topic: str
    event_id: str
    event_time: str
    key_field: str
    watermark_s: int
    max_bytes: int
    future_tolerance_s: int
    fields: tuple[FieldSpec, ...]
    gold: str | None = (
        None  # "ev": windows and anomalies (pipelines.ingest.gold_ev); "corpus": token rows (gold_corpus)
    )

    def field(self, name: str) -> FieldSpec:
        return next(f for f in self.fields if f.name == name)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


def build_entities(raw: object, source: str, topics: set[str]) -> dict[str, EntitySpec]:
    """Validate the ``entities`` mapping; every error names the source, the key path, the value and the fix."""
    if not isinstance(raw, dict):
        raise _fail(source, "entities", raw, "expected a mapping of entity name -> spec", "see conf/base.yaml")
    entities = {str(name): _entity(str(name), spec, source, topics) for name, spec in raw.items()}
    by_topic: dict[str, list[str]] = {}
    for entity in entities.values():
        by_topic.setdefault(entity.topic, []).append(entity.name)
    for topic, names in by_topic.items():
        if len(names) > 1:
            # One ingest query per topic writes its entity's tables; two entities would share a checkpoint.
            raise _fail(source, "entities", names, f"two entities read topic {topic!r}", "give each its own topic")
    return entities


def _fail(source: str, key: str, value: object, why: str, fix: str) -> ConfigError:
    return ConfigError(f"{source}: {key} = {value!r} is invalid: {why}. Fix: {fix}")


def _entity(name: str, spec: object, source: str, topics: set[str]) -> EntitySpec:
    where = f"entities.{name}"
    if not _NAME.match(name):
        raise _fail(source, where, name, "entity names are lower_snake_case", "rename it")
    if not isinstance(spec, dict):
        raise _fail(source, where, spec, "expected a mapping", "give topic, event_id, event_time, fields, ...")
    required = {"topic", "event_id", "event_time", "key_field", "watermark_s", "max_bytes", "fields"}
    if missing := sorted(required - set(spec)):
        raise _fail(source, where, sorted(spec), f"missing {', '.join(missing)}", "add the missing keys")
    if spec.get("gold") not in (None, "ev", "corpus"):
        raise _fail(source, f"{where}.gold", spec["gold"], "unknown gold feature", "use ev or corpus, or leave it out")
    if unknown := sorted(set(spec) - required - {"future_tolerance_s", "gold"}):
        raise _fail(source, where, unknown, "unknown keys", "remove them or correct the spelling")
    if spec["topic"] not in topics:
        raise _fail(source, f"{where}.topic", spec["topic"], "not a topic of kafka.topics", "declare the topic")
    for key in ("watermark_s", "max_bytes"):
        if not isinstance(spec[key], int) or spec[key] < 1:
            raise _fail(source, f"{where}.{key}", spec[key], "must be an integer >= 1", "correct the number")
    fields = tuple(_field(f"{where}.fields[{i}]", item, source) for i, item in enumerate(spec["fields"] or []))
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise _fail(source, f"{where}.fields", names, "field names repeat", "give each field once")
    entity = EntitySpec(
        name=name,
        topic=str(spec["topic"]),
        event_id=str(spec["event_id"]),
        event_time=str(spec["event_time"]),
        key_field=str(spec["key_field"]),
        watermark_s=spec["watermark_s"],
        max_bytes=spec["max_bytes"],
        future_tolerance_s=int(spec.get("future_tolerance_s", 3600)),
        fields=fields,
        gold=spec.get("gold"),
    )
    for role in ("event_id", "event_time", "key_field"):
        value = getattr(entity, role)
        if value not in names or not entity.field(value).required:
            raise _fail(source, f"{where}.{role}", value, "must name a required field", "point it at one")
    if entity.field(entity.event_time).type != "timestamp":
        raise _fail(source, f"{where}.event_time", entity.event_time, "must be a timestamp field", "fix the type")
    return entity


def _field(where: str, item: object, source: str) -> FieldSpec:
    if not isinstance(item, Mapping) or "name" not in item or "type" not in item:
        raise _fail(source, where, item, "a field needs at least name and type", "e.g. {name: ts, type: timestamp}")
    allowed = {"name", "type", "required", "min", "max", "max_length", "formats"}
    if unknown := sorted(set(item) - allowed):
        raise _fail(source, where, unknown, "unknown field keys", f"use only {sorted(allowed)}")
    if item["type"] not in FIELD_TYPES:
        raise _fail(source, f"{where}.type", item["type"], "unknown type", f"use one of {FIELD_TYPES}")
    if not _NAME.match(str(item["name"])):
        raise _fail(source, f"{where}.name", item["name"], "field names are lower_snake_case", "rename it")
    formats = item.get("formats", ["iso8601"])
    if item["type"] != "timestamp" and "formats" in item:
        raise _fail(source, f"{where}.formats", formats, "only timestamp fields take formats", "remove it")
    if not isinstance(formats, list) or not formats or any(f not in TIMESTAMP_FORMATS for f in formats):
        raise _fail(
            source, f"{where}.formats", formats, "unknown timestamp format", f"list some of {TIMESTAMP_FORMATS}"
        )
    if "epoch_s" in formats and "epoch_ms" in formats:
        raise _fail(source, f"{where}.formats", formats, "an integer cannot be both seconds and millis", "keep one")
    numbers: dict[str, Any] = {k: item.get(k) for k in ("min", "max")}
    for key, value in numbers.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise _fail(source, f"{where}.{key}", value, "must be a number", "correct it")
    return FieldSpec(
        name=str(item["name"]),
        type=str(item["type"]),
        required=bool(item.get("required", False)),
        min=numbers["min"],
        max=numbers["max"],
        max_length=item.get("max_length"),
        formats=tuple(str(f) for f in formats),
    )
