"""Producers: synthetic event streams sent to Kafka with idempotence and ``acks=all``.

Every event has a unique ``event_id``; the summary counts what was sent, acknowledged and failed, so nothing is
lost without being counted. The EV generator here is the smoke version; the ingestion issue grows the datasets.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tierlake.config import Settings
from tierlake.errors import ConfigError, TierlakeError

logger = logging.getLogger(__name__)

DATASET_TOPICS = {"ev": "ev.telemetry"}


@dataclass
class ProduceSummary:
    topic: str
    sent: int = 0
    acknowledged: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        rate = self.acknowledged / self.seconds if self.seconds else 0.0
        text = (
            f"{self.topic}: sent {self.sent}, acknowledged {self.acknowledged}, failed {self.failed} "
            f"in {self.seconds:.1f} s ({rate:,.0f} events/s)"
        )
        if self.errors:
            text += "; errors: " + ", ".join(f"{name} x{count}" for name, count in self.errors.items())
        return text


def ev_events(
    count: int, *, seed: int = 7, stations: int = 50, start: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """EV charging telemetry with a daily load shape, one station per event (the Kafka key)."""
    rng = random.Random(seed)  # noqa: S311 - synthetic data, reproducible by seed
    start = start or datetime(2026, 11, 1, tzinfo=UTC)
    for index in range(count):
        station = f"st-{rng.randrange(stations):04d}"
        ts = start + timedelta(seconds=index * 2)
        hour = ts.hour + ts.minute / 60
        load = 0.35 + 0.65 * max(0.0, math.sin(math.pi * (hour - 6) / 16))  # evening peak, quiet nights
        power = round(max(0.0, rng.gauss(150 * load, 12)), 2)
        voltage = round(rng.gauss(400, 4), 1)
        yield {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "station_id": station,
            "connector": rng.randrange(1, 5),
            "ts": ts.isoformat().replace("+00:00", "Z"),
            "power_kw": power,
            "voltage_v": voltage,
            "current_a": round(power * 1000 / voltage, 1) if voltage else 0.0,
            "soc_pct": round(rng.uniform(5, 100), 1),
            "temp_c": round(rng.gauss(32, 4), 1),
            "status": "charging" if power > 1 else "idle",
        }


def producer_config(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap.servers": settings.kafka.bootstrap(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "compression.type": "lz4",
        "delivery.timeout.ms": 120_000,
    }


def produce_events(
    settings: Settings, *, dataset: str, events: int, rate: float = 0.0, progress: bool = True, seed: int = 7
) -> ProduceSummary:
    """Send ``events`` synthetic events of ``dataset``; returns the counted summary once all are acknowledged."""
    from confluent_kafka import KafkaError, Message, Producer  # noqa: PLC0415

    if dataset not in DATASET_TOPICS:
        raise ConfigError(f"dataset {dataset!r} is unknown. Fix: use one of {sorted(DATASET_TOPICS)}")
    if events < 1:
        raise ConfigError(f"--events {events} must be at least 1")
    if rate < 0:
        raise ConfigError(f"--rate {rate} must be >= 0 (0 = as fast as possible)")
    summary = ProduceSummary(topic=DATASET_TOPICS[dataset])
    producer = Producer(producer_config(settings))

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is None:
            summary.acknowledged += 1
        else:
            summary.failed += 1
            summary.errors[error.name()] = summary.errors.get(error.name(), 0) + 1

    started = time.monotonic()
    for event in ev_events(events, seed=seed):
        _send(producer, summary.topic, event["station_id"], event, delivered)
        summary.sent += 1
        if rate:
            time.sleep(max(0.0, started + summary.sent / rate - time.monotonic()))
        if progress and summary.sent % 1000 == 0:
            sys.stderr.write(f"\rproduced {summary.sent}/{events} (acknowledged {summary.acknowledged})")
    remaining = producer.flush(120)
    summary.seconds = time.monotonic() - started
    if progress:
        sys.stderr.write(f"\rproduced {summary.sent}/{events} (acknowledged {summary.acknowledged})\n")
    if remaining:
        raise TierlakeError(
            f"{remaining} events still unacknowledged after 120 s; see the Kafka logs under "
            f"{settings.run_dir / 'kafka'}"
        )
    logger.info(summary.describe(), extra={"topic": summary.topic})
    return summary


def _send(producer: Any, topic: str, key: str, event: dict[str, Any], callback: Any) -> None:
    """Produce one event, waiting for queue space instead of dropping it when the local queue is full."""
    payload = json.dumps(event, separators=(",", ":")).encode()
    while True:
        try:
            producer.produce(topic, key=key.encode(), value=payload, on_delivery=callback)
            break
        except BufferError:
            producer.poll(0.1)
    producer.poll(0)
