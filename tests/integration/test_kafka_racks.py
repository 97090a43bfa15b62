"""Kafka across racks (three racks standing for three availability zones, one broker each here): every partition
has a replica on each rack, a consumer that names its rack fetches from the replica there (KIP-392), and a whole
rack killed (kill -9) while records are produced and ingested loses no
acknowledged record and duplicates none. The ingest driver names its own rack (client.rack, KIP-392), the rack
that is killed, so it must go on fetching from the other racks' replicas."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from infra import procs
from infra.stack import LocalStack
from pipelines.checks.reconcile import reconcile
from pipelines.synthetic.datasets import EV_SPACING_S, Record, good_records, recent_start
from pipelines.synthetic.produce import producer_config
from tests.integration.test_ingest import Oracle
from tests.integration.test_kafka import _create_topic
from tierlake.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

RECORDS = 12_000
CHUNK = 500
KILLED_RACK = "az-a"


class _RackOracle(Oracle):
    """The ingest oracle with a consumer that fetches from the replica in its own rack."""

    def env(self) -> dict[str, str]:
        return {**super().env(), "TIERLAKE_KAFKA__CLIENT_RACK": KILLED_RACK}


def test_every_partition_has_one_replica_per_rack(stack: LocalStack, settings: Settings) -> None:
    assert [row["rack"] for row in stack.kafka.node_status()] == list(settings.kafka.racks)
    for topic in (t.name for t in settings.kafka.topics):
        placement = stack.kafka.replica_racks(topic)
        assert len(placement) == 3, topic
        for partition, racks in placement.items():
            assert sorted(racks) == sorted(settings.kafka.racks), (topic, partition, racks)


def test_a_consumer_that_names_its_rack_fetches_from_the_replica_there(stack: LocalStack, settings: Settings) -> None:
    """KIP-392 on the brokers: the leader sends a consumer of another rack to that rack's follower."""
    topic = _create_topic(settings, partitions=1)
    producer = Producer(producer_config(settings))
    for i in range(200):
        producer.produce(topic, value=f"m-{i}".encode())
    assert producer.flush(60) == 0
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap()})
    leader = admin.list_topics(topic, timeout=10).topics[topic].partitions[0].leader
    follower = next(node for node in (1, 2, 3) if node != leader)
    stats: list[dict[str, object]] = []
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap(),
            "group.id": f"g-{topic}",
            "client.rack": settings.kafka.rack(follower),
            "statistics.interval.ms": 500,
            "stats_cb": lambda raw: stats.append(json.loads(raw)),
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    received, fetched_by = 0, None
    deadline = time.monotonic() + 60
    try:
        while (received < 200 or fetched_by != follower) and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            received += message is not None and message.error() is None
            if stats:
                fetched_by = _fetching_broker(stats[-1], topic)
    finally:
        consumer.close()
    assert received == 200
    assert fetched_by == follower, f"partition 0 (leader {leader}) fetched from broker {fetched_by}"


def _fetching_broker(stats: dict[str, Any], topic: str) -> int | None:
    partition = stats.get("topics", {}).get(topic, {}).get("partitions", {}).get("0", {})
    broker = partition.get("broker")
    return int(broker) if isinstance(broker, int) and broker >= 0 else None


def _produce_in_chunks(oracle: Oracle, records: list[Record]) -> None:
    for start in range(0, len(records), CHUNK):
        oracle.produce(records[start : start + CHUNK])
        time.sleep(0.2)  # a steady stream, so that the rack dies with records still coming


def _silver_rows(oracle: Oracle) -> int:
    try:
        return len(oracle.table("silver"))
    except Exception:
        return 0


def _wait(what: str, done: Callable[[], bool], *, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_a_rack_killed_during_produce_and_ingest_loses_and_repeats_nothing(
    stack: LocalStack, spark: SparkSession
) -> None:
    """The streaming driver (`ingest start`, fetching from the killed rack's replicas) is landing records and the
    producer is sending more when every broker of one rack is killed: the driver stays up and lands the rest."""
    oracle = _RackOracle(stack)
    placement = stack.kafka.replica_racks(oracle.topic)
    assert all(len(set(racks)) == 3 for racks in placement.values()), placement
    records = list(good_records("ev", RECORDS, seed=23, start=recent_start(RECORDS, EV_SPACING_S)))
    oracle.produce(records[:2000])
    killed = stack.kafka.rack_nodes(KILLED_RACK)
    assert killed, f"no local broker in rack {KILLED_RACK}"
    started = oracle.cli("ingest", "start", "--entity", oracle.entity, "--trigger-s", "1")
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        _wait("the stream's first records in silver", lambda: _silver_rows(oracle) > 0)
        with ThreadPoolExecutor(max_workers=1) as pool:
            producing = pool.submit(_produce_in_chunks, oracle, records[2000:])
            while len(oracle.expect) < RECORDS // 2 and not producing.done():
                time.sleep(0.05)
            assert not producing.done(), "the rack must die while records are still being produced"
            alive = oracle.cli("ingest", "status")
            assert alive.returncode == 0, f"the driver must be ingesting when the rack dies: {alive.stdout}"
            for node in killed:
                procs.kill9(node.daemon)
            producing.result()  # every record acknowledged by the two racks left (min.insync.replicas 2)
        _wait("every record in silver", lambda: _silver_rows(oracle) >= RECORDS)
        after = oracle.cli("ingest", "status")
        assert after.returncode == 0, f"the driver went on through the outage: {after.stdout}{after.stderr}"
    finally:
        assert oracle.cli("ingest", "stop").returncode == 0
        stack.up()  # the killed rack comes back
    assert stack.kafka.brokers() == [1, 2, 3]

    assert len(oracle.expect) == RECORDS, "every produced record was acknowledged"
    silver = Counter(row["event_id"] for row in oracle.table("silver"))
    assert set(silver) == {r.event_id for r in records}, "no acknowledged record lost"
    assert max(silver.values()) == 1, "no record duplicated"
    report = reconcile(spark, oracle.settings(), entity=oracle.entity)
    assert report["balanced"], json.dumps(report, indent=2)
    assert sum(p["bronze"] for p in report["partitions"]) == RECORDS
