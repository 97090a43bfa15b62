"""Kafka 4.4 in KRaft mode from the Maven jar set: 1 or 3 combined broker/controller nodes on loopback.

Node N sits in rack ``kafka.racks[N-1]`` (``broker.rack``; a rack stands for an availability zone), so topics get
their replicas on distinct racks and consumers that set ``kafka.client_rack`` read from their rack's replica.

Layout under ``<run_dir>/kafka``: ``cluster.json`` (cluster id and node count), ``node-N/server.properties``,
``node-N/data`` (log.dirs), ``node-N/kafka.log`` (stdout/stderr) and ``node-N/logs`` (log4j2 files), and
``node-N.pid``. Data survives ``stack down``; a change of node count starts a new cluster (the old data is
moved aside, never silently reused with the wrong quorum).
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from infra import procs
from infra.jars import jar_paths
from tierlake.config import KafkaSettings, Settings
from tierlake.errors import DependencyMissing, StackError
from tierlake.host import alive

logger = logging.getLogger(__name__)

_LOG4J2 = Path(__file__).parent / "kafka_log4j2.properties"
START_TIMEOUT_S = 90.0
RACK_SELECTOR = "org.apache.kafka.common.replica.RackAwareReplicaSelector"
"""Brokers let a consumer that names its rack (client.rack) fetch from that rack's replica (KIP-392)."""


def min_insync(nodes: int) -> int:
    """min.insync.replicas of a cluster of ``nodes``: 2 from 3 nodes on (one may fail), else 1."""
    return 2 if nodes >= 3 else 1


@dataclass(frozen=True, kw_only=True)
class KafkaNode:
    node_id: int
    broker_port: int
    controller_port: int
    home: Path
    daemon: procs.Daemon

    @property
    def properties(self) -> Path:
        return self.home / "server.properties"


class KafkaCluster:
    """The local KRaft cluster: owns its processes and files under ``<run_dir>/kafka``."""

    def __init__(self, settings: Settings, *, nodes: int | None = None) -> None:
        self.kafka: KafkaSettings = settings.kafka
        self.home = settings.run_dir / "kafka"
        self.jars_dir = settings.root / ".cache" / "jars" / "kafka"
        self.size = nodes or self.kafka.nodes
        self.nodes = [self._node(i) for i in range(1, self.size + 1)]

    def _node(self, node_id: int) -> KafkaNode:
        home = self.home / f"node-{node_id}"
        stride = (node_id - 1) * self.kafka.port_stride
        daemon = procs.Daemon(
            name=f"kafka-{node_id}",
            pid_file=self.home / f"node-{node_id}.pid",
            log=home / "kafka.log",
            marker=str(home / "server.properties"),
        )
        return KafkaNode(
            node_id=node_id,
            broker_port=self.kafka.broker_port + stride,
            controller_port=self.kafka.controller_port + stride,
            home=home,
            daemon=daemon,
        )

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.broker_port}" for n in self.nodes)

    # ----------------------------------------------------------------------------------------------------
    # start

    def up(self) -> None:
        """Start every node that is not running; format new clusters; wait until all brokers serve."""
        cluster_id = self._cluster_id()
        started = []
        for node in self.nodes:
            if node.daemon.running_pid() is not None:
                continue
            node.home.mkdir(parents=True, exist_ok=True)
            node.properties.write_text(self._server_properties(node), encoding="utf-8")
            if not (node.home / "data" / "meta.properties").exists():
                procs.run(
                    [
                        *self._java(node, heap_mb=256),
                        "kafka.tools.StorageTool",
                        "format",
                        "-t",
                        cluster_id,
                        "-c",
                        str(node.properties),
                    ],
                    log=node.daemon.log,
                    what=f"kafka-{node.node_id} format",
                )
            pid = procs.spawn(
                node.daemon,
                [*self._java(node, heap_mb=self.kafka.heap_mb), "kafka.Kafka", str(node.properties)],
            )
            started.append((node, pid))
        for node, pid in started:
            procs.wait_until(
                f"kafka-{node.node_id} on 127.0.0.1:{node.broker_port}",
                functools.partial(procs.port_open, node.broker_port),
                timeout_s=START_TIMEOUT_S,
                log=node.daemon.log,
                alive=functools.partial(alive, pid),
            )
        if started:
            self.wait_brokers(timeout_s=START_TIMEOUT_S)

    def _cluster_id(self) -> str:
        """Reuse the cluster id for the same node count; a different count gets a fresh cluster."""
        meta = self.home / "cluster.json"
        if meta.exists():
            known = json.loads(meta.read_text(encoding="utf-8"))
            if known["nodes"] == self.size:
                return str(known["cluster_id"])
            running = [n for n in self._all_known_daemons() if n.running_pid() is not None]
            if running:
                raise StackError(
                    f"Kafka is running with {known['nodes']} node(s); --kafka-nodes {self.size} needs a new "
                    "cluster. Fix: `tierlake stack down` first"
                )
            aside = self.home.with_name(f"kafka-{known['nodes']}-nodes-{int(time.time())}")
            logger.warning("node count changed %s -> %s: moving old Kafka data to %s", known["nodes"], self.size, aside)
            shutil.move(str(self.home), aside)
        self.home.mkdir(parents=True, exist_ok=True)
        node = self.nodes[0]
        cluster_id = (
            procs.run(
                [*self._java(node, heap_mb=128), "kafka.tools.StorageTool", "random-uuid"],
                log=self.home / "format.log",
                what="kafka random-uuid",
            )
            .strip()
            .splitlines()[-1]
        )
        meta.write_text(json.dumps({"cluster_id": cluster_id, "nodes": self.size}), encoding="utf-8")
        return cluster_id

    def _java(self, node: KafkaNode, *, heap_mb: int) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise DependencyMissing("java is not on PATH. Fix: run `make setup` (installs OpenJDK 17)")
        jar_paths(self.jars_dir)  # a clear error when set-up has not run
        return [
            java,
            f"-Xms{heap_mb}m",
            f"-Xmx{heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={_LOG4J2}",
            f"-Dkafka.logs.dir={node.home / 'logs'}",
            "-cp",
            f"{self.jars_dir}/*",
        ]

    def _server_properties(self, node: KafkaNode) -> str:
        replication = min(3, self.size)
        min_isr = min_insync(self.size)
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        lines = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{node.broker_port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.broker_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": node.home / "data",
            "num.partitions": 3,
            "default.replication.factor": replication,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replication,
            "transaction.state.log.replication.factor": replication,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replication,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": 0,
            "auto.create.topics.enable": "false",
            "unclean.leader.election.enable": "false",
            "log.segment.bytes": 64 * 1024 * 1024,
            # One rack per availability zone: new topics get replicas on distinct racks, and a consumer that names
            # its rack (client.rack) fetches from that rack's replica (KIP-392).
            "broker.rack": self.kafka.rack(node.node_id),
            "replica.selector.class": RACK_SELECTOR,
        }
        header = "# written by tierlake (infra/kafka.py) on every start; edit conf/, not this file\n"
        return header + "".join(f"{key}={value}\n" for key, value in lines.items())

    # ----------------------------------------------------------------------------------------------------
    # health, topics, stop

    def wait_brokers(self, *, timeout_s: float) -> None:
        """Wait until the cluster metadata lists every broker (the quorum elected, all registered)."""
        log = self.nodes[0].daemon.log
        procs.wait_until(
            f"Kafka: {self.size} brokers registered",
            lambda: len(self.brokers()) == self.size,
            timeout_s=timeout_s,
            log=log,
            interval_s=0.5,
        )

    def brokers(self) -> list[int]:
        from confluent_kafka import KafkaException  # noqa: PLC0415 - keeps `stack status` imports light
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415

        try:
            metadata = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=2)
        except KafkaException:
            return []
        return sorted(metadata.brokers)

    def create_topics(self) -> list[str]:
        """Create the topics of conf/ that do not exist; replication is capped at the node count."""
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415 - keeps `stack status` imports light
        from confluent_kafka.cimpl import NewTopic  # noqa: PLC0415

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        existing = set(admin.list_topics(timeout=10).topics)
        wanted = [
            NewTopic(
                t.name,
                num_partitions=t.partitions,
                replication_factor=min(t.replication, self.size),
                config={"retention.ms": str(t.retention_ms), "min.insync.replicas": str(min_insync(self.size))},
            )
            for t in self.kafka.topics
            if t.name not in existing
        ]
        if not wanted:
            return []
        for topic, future in admin.create_topics(wanted, request_timeout=30).items():
            try:
                future.result()
            except Exception as exc:  # confluent_kafka raises KafkaException with a KafkaError inside
                raise StackError(f"creating topic {topic} failed: {exc}; see {self.nodes[0].daemon.log}") from exc
        return [t.topic for t in wanted]

    def replica_racks(self, topic: str, *, timeout_s: float = 30.0) -> dict[int, list[str]]:
        """The rack of every replica of each partition of ``topic``, as the cluster describes it.

        A topic created a moment ago may not have reached the answering broker's metadata yet: UNKNOWN_TOPIC_OR_PART
        is retried until ``timeout_s``, then raised.
        """
        from confluent_kafka import KafkaError, KafkaException, TopicCollection  # noqa: PLC0415 - light `stack status`
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                description = admin.describe_topics(TopicCollection([topic]), request_timeout=30)[topic].result()
                break
            except KafkaException as exc:
                unknown = exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART
                if not unknown or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        return {p.id: [replica.rack or "" for replica in p.replicas] for p in description.partitions}

    def rack_nodes(self, rack: str) -> list[KafkaNode]:
        """The local nodes of one rack (availability zone)."""
        return [n for n in self.nodes if self.kafka.rack(n.node_id) == rack]

    def node_status(self) -> list[dict[str, object]]:
        registered = set(self.brokers()) if any(n.daemon.running_pid() for n in self.nodes) else set()
        return [
            {
                "service": n.daemon.name,
                "pid": n.daemon.running_pid(),
                "port": n.broker_port,
                "controller_port": n.controller_port,
                "rack": self.kafka.rack(n.node_id),
                "health": "ok" if n.node_id in registered else ("starting" if n.daemon.running_pid() else "down"),
                "log": str(n.daemon.log),
            }
            for n in self.nodes
        ]

    def _all_known_daemons(self) -> list[procs.Daemon]:
        return [self._node(i).daemon for i in range(1, 4)]

    def down(self) -> list[str]:
        return procs.stop(self._all_known_daemons(), timeout_s=30)

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]
