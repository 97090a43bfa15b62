"""Settings of the engines: Kafka (topics, brokers, ports), Ceph (monitors, OSDs, erasure code) and Spark."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tierlake.config.values import Values, port, positive

EPHEMERAL_PORTS_START = 32768


@dataclass(frozen=True, kw_only=True)
class TopicSettings:
    name: str
    partitions: int
    replication: int
    retention_ms: int


@dataclass(frozen=True, kw_only=True)
class KafkaSettings:
    managed: bool
    nodes: int
    bootstrap_servers: str
    broker_port: int
    controller_port: int
    port_stride: int
    heap_mb: int
    topics: tuple[TopicSettings, ...]
    racks: tuple[str, ...]  # broker.rack of node N is racks[N - 1]: one rack stands for one availability zone
    client_rack: str  # the consumer's rack (client.rack, KIP-392): fetch from the nearest replica; "" = the leader

    def rack(self, node_id: int) -> str:
        """The rack (availability zone) of local node ``node_id`` (1-based), round-robin over ``racks``."""
        return self.racks[(node_id - 1) % len(self.racks)]

    def broker_ports(self, nodes: int | None = None) -> list[int]:
        return [self.broker_port + i * self.port_stride for i in range(nodes or self.nodes)]

    def bootstrap(self, nodes: int | None = None) -> str:
        """The bootstrap list clients use: the local brokers when managed, else the configured cluster."""
        if not self.managed:
            return self.bootstrap_servers
        return ",".join(f"127.0.0.1:{port}" for port in self.broker_ports(nodes))


@dataclass(frozen=True, kw_only=True)
class CephSettings:
    managed: bool
    mon_port: int
    rgw_port: int
    osds: int
    osd_size_gb: int
    ec_k: int
    ec_m: int


DELTA_COMMITS = ("conditional", "single_driver")


@dataclass(frozen=True, kw_only=True)
class SparkSettings:
    master: str
    driver_memory: str
    shuffle_partitions: int
    local_ip: str
    jars_dir: Path
    delta_commits: str  # "conditional" (PUT If-None-Match: *) or "single_driver" (Delta's default for S3)
    codegen_min_batch_rows: int
    extra_conf: Mapping[str, str]


def build_kafka(values: Values) -> KafkaSettings:
    managed = values.get("kafka.managed", bool, fix="true to start Kafka locally, false to use bootstrap_servers")
    nodes = values.get(
        "kafka.nodes",
        int,
        fix="use 1 (demo) or 3 (durability)",
        check=lambda n: None if n in (1, 3) else "the local stack runs 1 or 3 combined broker/controller nodes",
    )
    bootstrap = values.get("kafka.bootstrap_servers", str, default="", fix="host:port[,host:port...]")
    if not managed and not bootstrap:
        raise values.fail(
            "kafka.bootstrap_servers",
            bootstrap,
            "required when kafka.managed is false",
            "set it to your cluster's brokers, e.g. kafka-1:9092,kafka-2:9092",
        )
    topics = _topics(values)
    racks: list[object] = values.get("kafka.racks", list, check=_racks, fix="e.g. [az-a, az-b, az-c]: one per zone")
    kafka = KafkaSettings(
        managed=managed,
        nodes=nodes,
        bootstrap_servers=bootstrap,
        broker_port=values.get("kafka.broker_port", int, check=port, fix="a free port, e.g. 19092"),
        controller_port=values.get("kafka.controller_port", int, check=port, fix="a free port, e.g. 19093"),
        port_stride=values.get("kafka.port_stride", int, check=positive, fix="e.g. 10: node 2 uses port+10"),
        heap_mb=values.get(
            "kafka.heap_mb",
            int,
            fix="at least 256",
            check=lambda n: None if n >= 256 else "a broker needs at least 256 MB of heap",
        ),
        topics=topics,
        racks=tuple(str(rack) for rack in racks),
        client_rack=values.get(
            "kafka.client_rack",
            str,
            default="",
            fix="the zone the consumer runs in, e.g. az-a; empty to always fetch from the leader",
        ),
    )
    check_kafka_ports(values, kafka)
    return kafka


def _topics(values: Values) -> tuple[TopicSettings, ...]:
    """``kafka.topics``: every topic with its name, partitions, replication and retention."""
    topics = []
    for index, item in enumerate(values.get("kafka.topics", list, fix="a list of {name, partitions, ...}")):
        where = f"kafka.topics[{index}]"
        if not isinstance(item, dict) or not {"name", "partitions", "replication", "retention_ms"} <= set(item):
            raise values.fail(
                "kafka.topics",
                item,
                f"{where} needs name, partitions, replication, retention_ms",
                "give every topic all four keys",
            )
        if not all(isinstance(item[k], int) and item[k] > 0 for k in ("partitions", "replication")):
            raise values.fail(
                "kafka.topics",
                item,
                f"{where}: partitions and replication must be integers >= 1",
                "correct the numbers",
            )
        topics.append(
            TopicSettings(
                name=str(item["name"]),
                partitions=item["partitions"],
                replication=item["replication"],
                retention_ms=int(item["retention_ms"]),
            )
        )
    return tuple(topics)


def _racks(racks: list[object]) -> str | None:
    if not racks or not all(isinstance(r, str) and re.fullmatch(r"[A-Za-z0-9._-]+", r) for r in racks):
        return "must be a non-empty list of rack names (letters, digits, . _ -)"
    if len(set(racks)) != len(racks):
        return "rack names must be distinct"
    return None


def check_kafka_ports(values: Values, kafka: KafkaSettings) -> None:
    """Broker and controller ports of up to 3 nodes must not collide, nor fall in the ephemeral range."""
    ports = [p + i * kafka.port_stride for i in range(3) for p in (kafka.broker_port, kafka.controller_port)]
    if len(set(ports)) != len(ports):
        raise values.fail(
            "kafka.port_stride",
            kafka.port_stride,
            f"node ports collide: {sorted(ports)}",
            "use a stride larger than controller_port - broker_port",
        )
    if max(ports) >= EPHEMERAL_PORTS_START:
        raise values.fail(
            "kafka.broker_port",
            kafka.broker_port,
            f"node ports reach {max(ports)}, inside Linux's ephemeral range (32768-60999) where any "
            "outgoing connection may take them",
            "keep broker_port + 2 * port_stride + 1 below 32768",
        )


def build_ceph(values: Values) -> CephSettings:
    ceph = CephSettings(
        managed=values.get("ceph.managed", bool, fix="true to start Ceph locally, false to use s3.endpoint"),
        mon_port=values.get("ceph.mon_port", int, check=port, fix="a free port, e.g. 3300"),
        rgw_port=values.get("ceph.rgw_port", int, check=port, fix="a free port, e.g. 7480"),
        osds=values.get(
            "ceph.osds",
            int,
            fix="3 for an EC 2+1 pool",
            check=lambda n: None if n >= 3 else "EC 2+1 needs 3 OSDs",
        ),
        osd_size_gb=values.get("ceph.osd_size_gb", int, check=positive, fix="e.g. 4 (sparse file)"),
        ec_k=values.get("ceph.ec_k", int, check=positive, fix="e.g. 2"),
        ec_m=values.get("ceph.ec_m", int, check=positive, fix="e.g. 1"),
    )
    if ceph.ec_k + ceph.ec_m > ceph.osds:
        raise values.fail(
            "ceph.osds",
            ceph.osds,
            f"EC {ceph.ec_k}+{ceph.ec_m} needs k+m OSDs",
            f"raise ceph.osds to {ceph.ec_k + ceph.ec_m}",
        )
    return ceph


def build_spark(values: Values, root: Path) -> SparkSettings:
    extra = values.get("spark.extra_conf", dict, default={}, fix="a mapping of Spark conf keys to values")
    return SparkSettings(
        master=values.get(
            "spark.master",
            str,
            fix="local[2], spark://host:7077 or k8s://...",
            check=lambda m: None if m else "must not be empty",
        ),
        driver_memory=values.get(
            "spark.driver_memory",
            str,
            fix="e.g. 1g",
            check=lambda m: None if re.fullmatch(r"\d+[mg]", m) else "expected e.g. 512m or 2g",
        ),
        shuffle_partitions=values.get("spark.shuffle_partitions", int, check=positive, fix="e.g. 2 on 2 cores"),
        local_ip=values.get("spark.local_ip", str, fix="127.0.0.1 for the local stack"),
        jars_dir=root / values.get("spark.jars_dir", str, fix="where infra/bootstrap.sh puts the jars"),
        delta_commits=values.get(
            "spark.delta_commits",
            str,
            check=lambda c: None if c in DELTA_COMMITS else f"must be one of {', '.join(DELTA_COMMITS)}",
            fix="conditional where the store honours If-None-Match: * on PUT (RGW 16.2+, AWS S3), else single_driver",
        ),
        codegen_min_batch_rows=values.get(
            "spark.codegen_min_batch_rows",
            int,
            check=lambda n: None if n >= 0 else "must be 0 or more",
            fix="e.g. 20000; 0 compiles every batch",
        ),
        extra_conf={str(k): str(v) for k, v in extra.items()},
    )
