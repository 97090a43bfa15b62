"""Kafka lag of the ingest queries over a sliding window, from what the queries and Kafka already keep.

The window's samples come from the streaming checkpoint beside bronze (``bronze/_checkpoints/<topic>``): each
committed batch ``N`` has ``offsets/N`` (the offsets it read up to, which are the next offsets to read once it
committed) and ``commits/N``, whose object time says when it committed. The log end offset at that moment comes from
Kafka's own time index (``offsets_for_times``: the first offset stamped at or after it). A last sample is now: the
end offsets now against the latest committed batch. No extra process has to record anything; the history is as long
as the checkpoint keeps batches (Spark keeps the last 100 by default).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pipelines.checks.reconcile import kafka_offsets, record_age_s
from pipelines.observe.ingestion import client_for
from pipelines.observe.verdicts import LagSample, LagState, Verdict, judge_lag, lag_verdict
from tierlake import catalog
from tierlake.config import Settings

logger = logging.getLogger(__name__)
WINDOW = 10
"""Committed batches per window (Burrow's default window is 10 offset commits as well)."""


@dataclass(frozen=True, kw_only=True)
class PartitionLag:
    topic: str
    partition: int
    window: list[LagSample]
    waiting_s: float | None
    state: LagState
    verdict: Verdict


def parse_offsets_file(text: str, topic: str) -> dict[int, int] | None:
    """Partition -> offset of ``topic`` in a Structured Streaming ``offsets/<batch>`` file (None: not this topic).

    The file is a version line (``v1``), a line of batch metadata, then one JSON line per source, here the Kafka
    source's ``{"<topic>": {"<partition>": offset}}``.
    """
    lines = text.splitlines()
    if not lines or not lines[0].startswith("v"):
        return None
    for line in lines[2:]:
        try:
            source = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(source, dict) and isinstance(source.get(topic), dict):
            return {int(p): int(o) for p, o in source[topic].items()}
    return None


def committed_batches(
    settings: Settings, topic: str, *, since_s: float, limit: int = WINDOW
) -> list[tuple[float, dict[int, int]]]:
    """The newest ``limit`` committed batches of the topic's ingest query since ``since_s``, oldest first: (commit
    time, partition -> next offset). Empty when the query never committed a batch."""
    client = client_for(settings)
    bucket = settings.s3.lake_bucket
    prefix = f"{catalog.bronze_checkpoint(bucket, topic).path}/"
    commits: list[tuple[int, float]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}commits/"):
        for item in page.get("Contents", []):
            name = item.get("Key", "").rsplit("/", 1)[-1]
            if name.isdigit() and "LastModified" in item:
                commits.append((int(name), item["LastModified"].timestamp()))
    commits.sort()
    recent = [c for c in commits if c[1] >= since_s][-limit:] or commits[-1:]  # the last commit even if older
    found = []
    for batch, at_s in recent:
        body = client.get_object(Bucket=bucket, Key=f"{prefix}offsets/{batch}")["Body"].read().decode("utf-8")
        offsets = parse_offsets_file(body, topic)
        if offsets is not None:
            found.append((at_s, offsets))
    return found


def end_offsets_at(settings: Settings, topic: str, partitions: Iterable[int], at_s: float) -> dict[int, int]:
    """Each partition's log end offset at ``at_s``: the first offset stamped at or after it (-1 from Kafka: none is,
    so the end then was the end now)."""
    from confluent_kafka import Consumer, TopicPartition  # noqa: PLC0415

    consumer = Consumer(
        {"bootstrap.servers": settings.kafka.bootstrap(), "group.id": "tierlake-observe", "enable.auto.commit": False}
    )
    try:
        wanted = [TopicPartition(topic, p, int(at_s * 1000)) for p in partitions]
        found = consumer.offsets_for_times(wanted, timeout=15)
        return {tp.partition: int(tp.offset) for tp in found}
    finally:
        consumer.close()


def topic_lag(
    settings: Settings, topic: str, *, since_s: float, grace_s: float, driver_running: bool
) -> list[PartitionLag]:
    """Each partition of ``topic``: its window and its Burrow-style state."""
    now_s = time.time()
    ends = {p: end for p, (_, end) in kafka_offsets(settings, topic).items()}
    batches = committed_batches(settings, topic, since_s=since_s)
    windows: dict[int, list[LagSample]] = {p: [] for p in ends}
    for at_s, offsets in batches:
        then = end_offsets_at(settings, topic, ends, at_s)
        for partition, end_now in ends.items():
            end_then = then.get(partition, -1)
            end_then = end_now if end_then < 0 else end_then
            committed = offsets.get(partition, 0)
            windows[partition].append(LagSample(at_s, committed, max(end_then, committed)))
    found = []
    for partition, window in sorted(windows.items()):
        committed = window[-1].committed if window else 0
        current = LagSample(now_s, committed, ends[partition])
        window.append(current)
        waiting = record_age_s(settings, topic, partition, committed) if current.lag else None
        state = judge_lag(window, waiting_s=waiting, grace_s=grace_s)
        verdict = lag_verdict(topic, partition, state, current, waiting_s=waiting, driver_running=driver_running)
        found.append(
            PartitionLag(
                topic=topic, partition=partition, window=window, waiting_s=waiting, state=state, verdict=verdict
            )
        )
    return found


def lag_as_dict(lag: PartitionLag) -> dict[str, Any]:
    return {
        "topic": lag.topic,
        "partition": lag.partition,
        "state": lag.state.value,
        "lag": lag.window[-1].lag,
        "committed": lag.window[-1].committed,
        "end": lag.window[-1].end,
        "waiting_s": lag.waiting_s,
        "window": [[s.at_s, s.committed, s.end] for s in lag.window],
    }
