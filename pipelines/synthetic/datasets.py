"""Synthetic event streams: EV charging telemetry, text-corpus documents, and the bad inputs the rules must catch.

Every generator is a pure function of its seed, so a test knows exactly what it sent. Each record comes with
the outcome the ingestion must give it (``silver``, ``dropped:duplicate_event_id`` or ``quarantine:<rule>``):
the oracle the integration tests check against.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

START = datetime(2026, 11, 1, tzinfo=UTC)
EV_SPACING_S = 2  # event-time step between consecutive EV events
CORPUS_SPACING_S = 5
BAD_KINDS = (
    "malformed_json",
    "wrong_type",
    "missing_required",
    "out_of_range",
    "invalid_utf8",
    "oversized",
    "null_key",
    "duplicate_event_id",
    "late_event",
    "future_timestamp",
    "unknown_fields",
    "empty_payload",
)


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes
    expect: str  # "silver", "dropped:<reason>" or "quarantine:<rule>"
    event_id: str | None = None


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def ev_event(rng: random.Random, index: int, *, start: datetime = START, stations: int = 50) -> dict[str, Any]:
    """One EV telemetry event: a daily load shape, with injected faults (overheating, dropouts, power spikes)."""
    station = f"st-{rng.randrange(stations):04d}"
    ts = start + timedelta(seconds=index * EV_SPACING_S)
    hour = ts.hour + ts.minute / 60
    load = 0.35 + 0.65 * max(0.0, math.sin(math.pi * (hour - 6) / 16))  # evening peak, quiet nights
    power = max(0.0, rng.gauss(150 * load, 12))
    temp = rng.gauss(32, 4)
    status = "charging"
    fault = rng.random()
    if fault < 0.004:
        temp = rng.uniform(85, 110)  # overheating
        status = "fault"
    elif fault < 0.008:
        power = 0.0  # dropout mid-session
        status = "dropout"
    elif fault < 0.012:
        power = rng.uniform(450, 700)  # spike
    voltage = rng.gauss(400, 4)
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "station_id": station,
        "connector": rng.randrange(1, 5),
        "ts": _iso(ts),
        "power_kw": round(power, 2),
        "voltage_v": round(voltage, 1),
        "current_a": round(power * 1000 / voltage, 1),
        "soc_pct": round(rng.uniform(5, 100), 1),
        "temp_c": round(temp, 1),
        "status": status,
    }


_WORDS = [
    "tier",
    "lake",
    "stream",
    "shard",
    "tape",
    "cache",
    "delta",
    "kafka",
    "spark",
    "ceph",
    "train",
    "token",
    "model",
    "batch",
    "epoch",
    "gpu",
    "loader",
    "archive",
    "replica",
    "checkpoint",
    "offset",
    "partition",
    "schema",
    "watermark",
    "window",
    "anomaly",
    "station",
    "power",
    "energy",
]


def corpus_doc(rng: random.Random, index: int, *, start: datetime = START) -> dict[str, Any]:
    words = [rng.choice(_WORDS) for _ in range(rng.randrange(20, 200))]
    return {
        "doc_id": f"doc-{uuid.UUID(int=rng.getrandbits(128), version=4)}",
        "source": rng.choice(("wiki", "forum", "manual", "code")),
        "language": "en",
        "ts": _iso(start + timedelta(seconds=index * CORPUS_SPACING_S)),
        "text": " ".join(words).capitalize() + ".",
    }


def _encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def good_records(dataset: str, count: int, *, seed: int = 7, start: datetime = START) -> Iterator[Record]:
    rng = random.Random(seed)  # noqa: S311 - synthetic data, reproducible by seed
    make, key_field, id_field = (
        (ev_event, "station_id", "event_id") if dataset == "ev" else (corpus_doc, "source", "doc_id")
    )
    for index in range(count):
        event = make(rng, index, start=start)
        yield Record(str(event[key_field]).encode(), _encode(event), "silver", str(event[id_field]))


def _payload_breakers(max_bytes: int) -> dict[str, Callable[[dict[str, Any], bytes], tuple[bytes | None, bytes]]]:
    """Bad kinds that break the bytes or the key: event, key -> (key, value)."""
    return {
        "malformed_json": lambda e, k: (k, _encode(e)[:-7]),
        "invalid_utf8": lambda e, k: (k, _encode(e)[:-2] + b'\xff\xfe"}'),
        "oversized": lambda e, k: (k, _encode({**e, "status": "x" * max_bytes})),
        "null_key": lambda e, k: (None, _encode(e)),
        "empty_payload": lambda e, k: (k, b""),
    }


_FIELD_BREAKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "wrong_type": lambda e: {**e, "power_kw": "lots"},
    "missing_required": lambda e: {k: v for k, v in e.items() if k != "station_id"},
    "out_of_range": lambda e: {**e, "soc_pct": 140.0},
    "late_event": lambda e: {**e, "ts": _iso(datetime.fromisoformat(e["ts"]) - timedelta(days=2))},
    "future_timestamp": lambda e: {**e, "ts": _iso(datetime.fromisoformat(e["ts"]) + timedelta(days=3650))},
    "unknown_fields": lambda e: {**e, "firmware": "7.3.1"},  # kept in silver's extra_fields
}


def bad_record(kind: str, rng: random.Random, *, template: dict[str, Any], max_bytes: int) -> Record:
    """One record of a bad kind, built from a valid EV event, with the outcome the rules must give it."""
    key = str(template["station_id"]).encode()
    if kind == "duplicate_event_id":
        return Record(key, _encode(template), "dropped:duplicate_event_id", str(template["event_id"]))
    event = {**template, "event_id": f"bad-{kind}-{uuid.UUID(int=rng.getrandbits(128), version=4)}"}
    payload_breakers = _payload_breakers(max_bytes)
    if kind in payload_breakers:
        broken_key, value = payload_breakers[kind](event, key)
        return Record(broken_key, value, f"quarantine:{kind}", event["event_id"])
    if kind not in _FIELD_BREAKERS:
        raise ValueError(f"unknown bad kind {kind!r}; known: {BAD_KINDS}")
    expect = "silver" if kind == "unknown_fields" else f"quarantine:{kind}"
    return Record(key, _encode(_FIELD_BREAKERS[kind](event)), expect, event["event_id"])


def recent_start(count: int, spacing_s: int, *, now: datetime | None = None) -> datetime:
    """A start time such that ``count`` events ``spacing_s`` apart end now: re-runs keep event time moving on."""
    return (now or datetime.now(UTC)) - timedelta(seconds=count * spacing_s)


def ev_stream(
    count: int, *, bad_fraction: float = 0.0, seed: int = 7, max_bytes: int = 4096, start: datetime = START
) -> Iterator[Record]:
    """``count`` EV records; about ``bad_fraction`` of them bad, cycling through every bad kind in turn."""
    rng = random.Random(seed + 1)  # noqa: S311 - synthetic data, reproducible by seed
    sent: list[dict[str, Any]] = []
    bad_index = 0
    for record in good_records("ev", count, seed=seed, start=start):
        event = json.loads(record.value)
        if bad_fraction and sent and rng.random() < bad_fraction:
            kind = BAD_KINDS[bad_index % len(BAD_KINDS)]
            bad_index += 1
            template = rng.choice(sent) if kind == "duplicate_event_id" else event
            yield bad_record(kind, rng, template=template, max_bytes=max_bytes)
            if kind != "duplicate_event_id":
                continue
        sent.append(event)
        yield record
