"""Kafka, 3 KRaft nodes: acks=all + idempotence delivers every message, even when a partition leader is killed."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from infra import procs
from infra.stack import LocalStack
from pipelines.synthetic.produce import producer_config
from tierlake.config import Settings


def _create_topic(settings: Settings, partitions: int) -> str:
    topic = f"test.{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap()})
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=3, config={"min.insync.replicas": "2"})]
    )
    futures[topic].result(timeout=30)
    return topic


def _consume_all(settings: Settings, topic: str, expected: int, *, timeout_s: float = 90) -> list[str]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap(),
            "group.id": f"g-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    values: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                assert error.code() == KafkaError._PARTITION_EOF, error
                continue
            values.append(_text(message))
    finally:
        consumer.close()
    return values


def _text(message: Message) -> str:
    value = message.value()
    assert value is not None, "every test message has a value"
    return value.decode()


class _Acks:
    def __init__(self) -> None:
        self.acked: set[str] = set()
        self.failed: list[str] = []

    def __call__(self, error: KafkaError | None, message: Message) -> None:
        value = _text(message)
        if error is None:
            self.acked.add(value)
        else:
            self.failed.append(f"{value}: {error}")


def test_cluster_has_three_brokers(stack: LocalStack) -> None:
    assert stack.kafka.brokers() == [1, 2, 3]


def test_every_acknowledged_message_is_consumed(settings: Settings) -> None:
    topic = _create_topic(settings, partitions=3)
    producer = Producer(producer_config(settings))
    acks = _Acks()
    for i in range(3000):
        producer.produce(topic, key=str(i % 17).encode(), value=f"m-{i}".encode(), on_delivery=acks)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert not acks.failed
    assert len(acks.acked) == 3000
    consumed = _consume_all(settings, topic, expected=3000)
    assert sorted(consumed) == sorted(acks.acked), "each message exactly once"


def test_leader_killed_mid_produce_loses_no_acknowledged_message(stack: LocalStack, settings: Settings) -> None:
    topic = _create_topic(settings, partitions=1)
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap()})
    leader = admin.list_topics(topic, timeout=10).topics[topic].partitions[0].leader
    producer = Producer({**producer_config(settings), "linger.ms": 5})
    acks = _Acks()
    total = 6000
    killed_pid = None
    for i in range(total):
        while True:
            try:
                producer.produce(topic, value=f"m-{i}".encode(), on_delivery=acks)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        if i == total // 3:
            producer.flush(30)  # some acknowledged before the kill, the rest in flight after it
            killed_pid = procs.kill9(stack.kafka.node(leader).daemon)
    assert killed_pid is not None
    assert producer.flush(120) == 0
    new_leader = admin.list_topics(topic, timeout=10).topics[topic].partitions[0].leader
    assert new_leader != leader, "a surviving in-sync replica took over"
    consumed = _consume_all(settings, topic, expected=len(acks.acked))
    missing = acks.acked - set(consumed)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
    assert len(consumed) == len(set(consumed)), "the idempotent producer wrote no duplicates"
    # With 2 of 3 replicas in sync (min.insync.replicas=2) nothing needed to fail either.
    assert not acks.failed
    assert len(acks.acked) == total
    # `stack up` heals: the killed node restarts and rejoins.
    stack.up()
    assert stack.kafka.brokers() == [1, 2, 3]
