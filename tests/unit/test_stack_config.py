"""Pure parts of the stack: Kafka server.properties per node count, the Spark conf, the S3 secret file."""

from __future__ import annotations

import os
import shutil
import stat
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from xml.etree import ElementTree

import pytest

from infra.ceph import CephCluster
from infra.kafka import KafkaCluster
from infra.stack import ensure_credentials
from pipelines.session import (
    LOG4J,
    POOLS,
    batch_codegen,
    log4j_file,
    pools_file,
    run_together,
    spark_conf,
    spark_log,
)
from tierlake.config import Settings, load_settings
from tierlake.errors import ConfigError, DependencyMissing

pytestmark = pytest.mark.unit
REPO_CONF = Path(__file__).resolve().parents[2] / "conf"


def _settings(tmp_path: Path, profile: str = "local", **env: str) -> Settings:
    """The shipped profile, rooted in tmp_path (so run dir and secret file are the test's own)."""
    conf_dir = tmp_path / "conf"
    if not conf_dir.exists():
        shutil.copytree(REPO_CONF, conf_dir)
    return load_settings(profile, conf_dir=conf_dir, env=env)


def _props(cluster: KafkaCluster, node_id: int) -> dict[str, str]:
    text = cluster._server_properties(cluster.node(node_id))
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_three_node_kafka_has_rf3_min_isr2_and_three_voters(tmp_path: Path) -> None:
    cluster = KafkaCluster(_settings(tmp_path, "ci"), nodes=3)
    props = _props(cluster, 2)
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19193,2@127.0.0.1:19203,3@127.0.0.1:19213"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19202,CONTROLLER://127.0.0.1:19203"
    assert props["default.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["unclean.leader.election.enable"] == "false"
    assert props["log.dirs"] == str(tmp_path / ".run-test" / "kafka" / "node-2" / "data")


def test_each_kafka_node_sits_in_its_own_rack_and_serves_the_nearest_replica(tmp_path: Path) -> None:
    cluster = KafkaCluster(_settings(tmp_path, "ci"), nodes=3)
    racks = [_props(cluster, node)["broker.rack"] for node in (1, 2, 3)]
    assert racks == ["az-a", "az-b", "az-c"]
    assert _props(cluster, 1)["replica.selector.class"] == "org.apache.kafka.common.replica.RackAwareReplicaSelector"
    assert [n.node_id for n in cluster.rack_nodes("az-b")] == [2]


@pytest.mark.parametrize(
    ("racks", "why"),
    [("[]", "non-empty list"), ('["az-a", "az-a"]', "must be distinct"), ('["az a"]', "letters, digits")],
)
def test_bad_kafka_racks_are_refused(tmp_path: Path, racks: str, why: str) -> None:
    with pytest.raises(ConfigError, match=rf"kafka.racks.*{why}.*Fix: e.g. \[az-a, az-b, az-c\]"):
        _settings(tmp_path, "ci", TIERLAKE_KAFKA__RACKS=racks)


def test_one_node_kafka_has_rf1(tmp_path: Path) -> None:
    cluster = KafkaCluster(_settings(tmp_path), nodes=1)
    props = _props(cluster, 1)
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["min.insync.replicas"] == "1"


def test_credentials_file_is_created_once_private_and_reused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert not settings.s3.has_credentials()
    first = ensure_credentials(settings)
    access_key, secret_key = first.s3.require_credentials()
    assert len(access_key) == 20
    assert len(secret_key) >= 30
    again = ensure_credentials(_settings(tmp_path))
    assert again.s3.require_credentials() == (access_key, secret_key)
    mode = stat.S_IMODE((tmp_path / ".run" / "secrets" / "s3.env").stat().st_mode)
    assert mode == 0o600


def _spark_settings(tmp_path: Path, jar: str) -> Settings:
    """Settings with credentials and a jar folder holding one (empty) jar named ``jar``: enough for spark_conf."""
    settings = _settings(tmp_path, TIERLAKE_S3__ACCESS_KEY="AK", TIERLAKE_S3__SECRET_KEY="SK")
    jars = tmp_path / "jars"
    jars.mkdir()
    (jars / jar).write_bytes(b"PK")
    (jars / LOGSTORE_JAR).write_bytes(b"PK")
    return replace(settings, spark=replace(settings.spark, jars_dir=jars))


def test_spark_conf_points_s3a_at_rgw_path_style(tmp_path: Path) -> None:
    settings = _spark_settings(tmp_path, "delta-spark_4.2_2.13-4.4.0.jar")
    settings = replace(settings, spark=replace(settings.spark, extra_conf={"spark.x": "y"}))
    conf = spark_conf(settings, app_name="unit")
    assert conf["spark.master"] == "local[2]"
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:7480"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.signing-algorithm"] == "AWS4UnsignedPayloadSignerType"
    # local[2]: the jars go on the driver's classpath, not copied into a per-session temp folder
    assert conf["spark.driver.extraClassPath"].split(os.pathsep)[0].endswith("delta-spark_4.2_2.13-4.4.0.jar")
    assert "spark.jars" not in conf
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert conf["spark.x"] == "y"
    assert conf["spark.driver.host"] == "127.0.0.1"


def test_ingest_jobs_get_a_core_before_gold_jobs(tmp_path: Path) -> None:
    """Fair scheduling: the ingest pool has a guaranteed core and four times gold's weight; silver's append (the
    commit a record's freshness waits for) is guaranteed two cores, before the other appends of its batch."""
    settings = _spark_settings(tmp_path, "a-1.jar")
    conf = spark_conf(settings, app_name="unit")
    assert conf["spark.scheduler.mode"] == "FAIR"
    assert conf["spark.scheduler.allocation.file"] == str(pools_file(settings))
    pools = {
        pool.get("name"): (pool.findtext("weight"), pool.findtext("minShare"))
        for pool in ElementTree.fromstring(POOLS).iter("pool")  # noqa: S314 - our own constant
    }
    assert pools == {"silver": ("8", "2"), "ingest": ("4", "1"), "gold": ("1", "0")}


def test_sparks_own_log_goes_to_a_file_under_the_run_folder(tmp_path: Path) -> None:
    """Not to the console, where a failed query's stack trace and plan would bury tierlake's one-line error."""
    settings = _spark_settings(tmp_path, "a-1.jar")
    conf = spark_conf(settings, app_name="unit")
    assert conf["spark.driver.extraJavaOptions"] == f"-Dlog4j2.configurationFile={log4j_file(settings)} -Xss64m"
    properties = dict(
        line.split(" = ", 1) for line in LOG4J.format(path=spark_log(settings)).splitlines() if " = " in line
    )
    assert properties["rootLogger.appenderRef.file.ref"] == properties["appender.file.name"]
    assert properties["appender.file.fileName"] == str(settings.run_dir / "logs" / "spark.log")
    assert not any(key.startswith("appender.console") for key in properties)


def test_generated_classes_are_cached_beyond_one_batch_of_each_query(tmp_path: Path) -> None:
    settings = _spark_settings(tmp_path, "a-1.jar")
    conf = spark_conf(settings, app_name="unit")
    assert int(conf["spark.sql.codegen.cache.maxEntries"]) >= 1000  # Spark's default, 100, cycled every batch


def test_a_batch_runs_interpreted_after_a_small_one_and_the_stream_plans_compiled(tmp_path: Path) -> None:
    class Conf:
        def __init__(self) -> None:
            self.values: dict[str, str] = {}

        def set(self, key: str, value: str) -> None:
            self.values[key] = value

        def unset(self, key: str) -> None:
            self.values.pop(key, None)

    class Session:
        conf = Conf()

    settings = _settings(tmp_path)
    session = Session()
    key = "spark.sql.codegen.factoryMode"
    threshold = settings.spark.codegen_min_batch_rows
    with batch_codegen(session, settings, threshold - 1):  # type: ignore[arg-type]
        assert session.conf.values[key] == "NO_CODEGEN"
    assert key not in session.conf.values  # Spark's default again: the stream plans its next batch compiled
    for rows_before in (None, threshold):  # a stream's first batch; a batch after a large one
        with batch_codegen(session, settings, rows_before):  # type: ignore[arg-type]
            assert key not in session.conf.values
    always = replace(settings, spark=replace(settings.spark, codegen_min_batch_rows=0))
    with batch_codegen(session, always, 0):  # type: ignore[arg-type]
        assert key not in session.conf.values
    with pytest.raises(RuntimeError), batch_codegen(session, settings, 1):  # type: ignore[arg-type]
        raise RuntimeError("a failed batch")
    assert key not in session.conf.values


def test_spark_master_comes_from_config(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        TIERLAKE_SPARK__MASTER="spark://head:7077",
        TIERLAKE_S3__ACCESS_KEY="AK",
        TIERLAKE_S3__SECRET_KEY="SK",
    )
    jars = tmp_path / "jars"
    jars.mkdir()
    (jars / "a-1.jar").write_bytes(b"PK")
    (jars / LOGSTORE_JAR).write_bytes(b"PK")
    conf = spark_conf(replace(settings, spark=replace(settings.spark, jars_dir=jars)), app_name="unit")
    assert conf["spark.master"] == "spark://head:7077"
    # a cluster's executors fetch the jars from the driver
    assert conf["spark.jars"] == f"{jars / 'a-1.jar'},{jars / LOGSTORE_JAR}"
    assert "spark.driver.extraClassPath" not in conf


def test_rgw_answers_without_nagle_on_a_new_and_on_an_older_cluster(tmp_path: Path) -> None:
    """TCP_NODELAY on beast: a GET or LIST answer must not wait for the client's delayed ACK (~40 ms each)."""
    cluster = CephCluster(_settings(tmp_path))
    port = cluster.ceph.rgw_port
    assert f"rgw_frontends = beast endpoint=127.0.0.1:{port} tcp_nodelay=1\n" in cluster._ceph_conf("fsid")

    cluster.home.mkdir(parents=True)
    older = f"[client.rgw.gw]\nrgw_frontends = beast endpoint=127.0.0.1:{port}\nrgw_thread_pool_size = 32\n"
    cluster.conf.write_text(older, encoding="utf-8")
    cluster._refresh_rgw_frontends()
    assert cluster.conf.read_text(encoding="utf-8") == older.replace(f"{port}\n", f"{port} tcp_nodelay=1\n", 1)


LOGSTORE_JAR = "tierlake-logstore-0123456789abcdef.jar"


def test_delta_commits_are_conditional_puts_by_default(tmp_path: Path) -> None:
    """Spark's Delta log entries go through the conditional-PUT log store; single_driver is Delta's own."""
    settings = _spark_settings(tmp_path, "a-1.jar")
    conf = spark_conf(settings, app_name="unit")
    assert conf["spark.delta.logStore.s3a.impl"] == "io.tierlake.delta.ConditionalPutLogStore"
    assert conf["spark.hadoop.fs.s3a.create.conditional.enabled"] == "true"
    single = replace(settings, spark=replace(settings.spark, delta_commits="single_driver"))
    assert (
        spark_conf(single, app_name="unit")["spark.delta.logStore.s3a.impl"]
        == "io.delta.storage.S3SingleDriverLogStore"
    )


def test_conditional_commits_without_the_log_store_jar_say_how_to_fix(tmp_path: Path) -> None:
    settings = _spark_settings(tmp_path, "a-1.jar")
    (settings.spark.jars_dir / LOGSTORE_JAR).unlink()
    with pytest.raises(DependencyMissing, match=r"tierlake-logstore.*make setup.*single_driver"):
        spark_conf(settings, app_name="unit")
    single = replace(settings, spark=replace(settings.spark, delta_commits="single_driver"))
    assert spark_conf(single, app_name="unit")["spark.master"] == "local[2]"


def test_delta_commits_refuses_an_unknown_mode(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"spark.delta_commits.*conditional, single_driver"):
        _settings(tmp_path, TIERLAKE_SPARK__DELTA_COMMITS="dynamodb")


class _Context:
    """What run_together touches of a Spark session: the thread-local scheduler pool."""

    def __init__(self) -> None:
        self.local = threading.local()

    def setLocalProperty(self, key: str, value: str) -> None:
        setattr(self.local, key, value)


def test_run_together_runs_the_first_call_in_the_lead_pool_and_the_others_in_the_pool() -> None:
    """Silver's append in ``silver``, bronze's and the flags' in ``ingest``; results in order, all calls ended."""
    context = _Context()
    spark = SimpleNamespace(sparkContext=context)

    def pool_of(name: str) -> Callable[[], tuple[str, str]]:
        return lambda: (name, getattr(context.local, "spark.scheduler.pool"))

    calls = [pool_of("silver"), pool_of("bronze"), pool_of("flags")]
    results = run_together(spark, "ingest", calls, lead_pool="silver")  # type: ignore[arg-type]
    assert results == [("silver", "silver"), ("bronze", "ingest"), ("flags", "ingest")]
    assert run_together(spark, "ingest", [pool_of("alone")], lead_pool="silver") == [("alone", "silver")]  # type: ignore[arg-type]
    assert run_together(spark, "ingest", [], lead_pool="silver") == []  # type: ignore[arg-type]
