"""Producers: synthetic event streams sent to Kafka with idempotence and ``acks=all``.

Every event has a unique ``event_id``; the summary counts what was sent, acknowledged and failed, so nothing is
lost without being counted. The datasets themselves live in ``pipelines.synthetic.datasets``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pipelines.synthetic.datasets import CORPUS_SPACING_S, EV_SPACING_S, Record, ev_stream, good_records, recent_start
from tierlake.config import Settings
from tierlake.errors import ConfigError, TierlakeError

logger = logging.getLogger(__name__)

DATASET_ENTITIES = {"ev": "ev", "corpus": "corpus"}


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


def producer_config(settings: Settings) -> dict[str, Any]:
    """Idempotent, ``acks=all``. ``linger.ms`` 100: at 200 records/s a 20 ms linger sent requests of one or two
    records, and three brokers spent ~0.4 of a core more on them than idle (0.43-0.57 cores against 0.20); with
    100 ms they stayed at idle (0.19), for at most 0.1 s more before a record leaves."""
    return {
        "bootstrap.servers": settings.kafka.bootstrap(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 100,
        "compression.type": "lz4",
        "delivery.timeout.ms": 120_000,
    }


def produce_events(
    settings: Settings,
    *,
    dataset: str,
    events: int,
    rate: float = 0.0,
    bad_fraction: float = 0.0,
    progress: bool = True,
    seed: int | None = None,
    days_ago: int = 0,
) -> ProduceSummary:
    """Send ``events`` synthetic records of ``dataset``; returns the counted summary once all are acknowledged.

    ``days_ago``: back-date the event times, so the events end that many days before now (history for the cold
    tier; silver quarantines them as late if it already holds newer events of the entity).
    """
    if dataset not in DATASET_ENTITIES:
        raise ConfigError(f"dataset {dataset!r} is unknown. Fix: use one of {sorted(DATASET_ENTITIES)}")
    if events < 1:
        raise ConfigError(f"--events {events} must be at least 1")
    if rate < 0:
        raise ConfigError(f"--rate {rate} must be >= 0 (0 = as fast as possible)")
    if not 0 <= bad_fraction <= 0.5 or (bad_fraction and dataset != "ev"):
        raise ConfigError(f"--bad-fraction {bad_fraction} must be within [0, 0.5], and bad records exist for ev only")
    if days_ago < 0:
        raise ConfigError(f"--days-ago {days_ago} must be >= 0 (0 = events ending now)")
    entity = settings.entities[DATASET_ENTITIES[dataset]]
    now = datetime.now(UTC) - timedelta(days=days_ago)
    # A new seed per run by default: the same seed twice sends the same event ids, which silver drops as duplicates.
    seed = time.time_ns() % 2**31 if seed is None else seed
    logger.info("producing %d %s records with seed %d", events, dataset, seed, extra={"topic": entity.topic})
    if dataset == "ev":
        start = recent_start(events, EV_SPACING_S, now=now)
        records = ev_stream(events, bad_fraction=bad_fraction, seed=seed, max_bytes=entity.max_bytes, start=start)
    else:
        records = good_records(dataset, events, seed=seed, start=recent_start(events, CORPUS_SPACING_S, now=now))
    return send_records(settings, entity.topic, records, total=events, rate=rate, progress=progress)


def send_records(
    settings: Settings, topic: str, records: Iterable[Record], *, total: int, rate: float = 0.0, progress: bool = True
) -> ProduceSummary:
    """Produce ``records`` to ``topic`` (idempotent, acks=all), waiting until every one is acknowledged or failed."""
    from confluent_kafka import KafkaError, Message, Producer  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415

    summary = ProduceSummary(topic=topic)
    producer = Producer(producer_config(settings))

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is None:
            summary.acknowledged += 1
        else:
            summary.failed += 1
            summary.errors[error.name()] = summary.errors.get(error.name(), 0) + 1

    started = time.monotonic()
    bar = tqdm(total=total, unit="rec", desc=f"produce {topic}", disable=not progress, file=sys.stderr)
    for record in records:
        _send(producer, topic, record, delivered)
        summary.sent += 1
        if rate:
            time.sleep(max(0.0, started + summary.sent / rate - time.monotonic()))
        if summary.sent % 500 == 0:
            bar.update(500)
            bar.set_postfix(acked=summary.acknowledged, failed=summary.failed, refresh=False)
    remaining = producer.flush(120)
    summary.seconds = time.monotonic() - started
    bar.update(summary.sent - bar.n)
    bar.set_postfix(acked=summary.acknowledged, failed=summary.failed)
    bar.close()
    if remaining:
        raise TierlakeError(
            f"{remaining} records still unacknowledged after 120 s; see the Kafka logs under "
            f"{settings.run_dir / 'kafka'}"
        )
    logger.info(summary.describe(), extra={"topic": summary.topic})
    return summary


def _send(producer: Any, topic: str, record: Record, callback: Any) -> None:
    """Produce one record, waiting for queue space instead of dropping it when the local queue is full."""
    while True:
        try:
            producer.produce(topic, key=record.key, value=record.value, on_delivery=callback)
            break
        except BufferError:
            producer.poll(0.1)
    producer.poll(0)
