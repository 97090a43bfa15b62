"""The one SparkSession factory: Delta, the Kafka source and s3a on Ceph RGW, from settings alone.

The jar set comes from ``spark.jars_dir`` (resolved once by ``infra/bootstrap.sh``), so starting a session needs
no network. ``spark.master`` decides where it runs: ``local[2]`` here, ``spark://`` or ``k8s://`` elsewhere.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

from tierlake.config import Settings
from tierlake.errors import DependencyMissing
from tierlake.host import jars_in

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


# spark.delta_commits -> Delta's log store for s3a:// tables. ConditionalPutLogStore (infra/logstore) creates each log
# entry with If-None-Match: *, so the object store decides which writer owns a version (see its class comment).
LOG_STORES = {
    "conditional": "io.tierlake.delta.ConditionalPutLogStore",
    "single_driver": "io.delta.storage.S3SingleDriverLogStore",
}

POOLS = """<?xml version="1.0"?>
<!-- Written by tierlake (pipelines/session.py). Ingest micro-batches go first: a record's freshness waits on them;
     gold catches up from silver on what is left. Within a batch, silver's append (the commit freshness is measured
     to) takes the cores before the appends beside it (bronze, the flags). -->
<allocations>
  <pool name="silver"><schedulingMode>FIFO</schedulingMode><weight>8</weight><minShare>2</minShare></pool>
  <pool name="ingest"><schedulingMode>FIFO</schedulingMode><weight>4</weight><minShare>1</minShare></pool>
  <pool name="gold"><schedulingMode>FIFO</schedulingMode><weight>1</weight><minShare>0</minShare></pool>
</allocations>
"""


def pools_file(settings: Settings) -> Path:
    """Spark's fair-scheduler pools (``POOLS``), a file under the run folder."""
    return settings.run_dir / "spark" / "pools.xml"


# Spark's own log (log4j) goes to a file, not to the console: a failed query would otherwise print a JVM stack
# trace and its whole plan above tierlake's one-line error. Rolled at 50 MB, three files kept.
LOG4J = """# Written by tierlake (pipelines/session.py): Spark's log to {path}
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {path}
appender.file.filePattern = {path}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n%ex
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
"""


def spark_log(settings: Settings) -> Path:
    """Where Spark's own log goes: ``logs/spark.log`` under the run folder."""
    return settings.run_dir / "logs" / "spark.log"


def log4j_file(settings: Settings) -> Path:
    """Spark's log4j configuration (``LOG4J``), a file under the run folder."""
    return settings.run_dir / "spark" / "log4j2.properties"


_CODEGEN_MODE = "spark.sql.codegen.factoryMode"


def use_pool(spark: SparkSession, pool: str) -> None:
    """Jobs this thread starts from now on run in scheduler pool ``pool`` (``ingest`` or ``gold``)."""
    spark.sparkContext.setLocalProperty("spark.scheduler.pool", pool)


@contextmanager
def batch_codegen(spark: SparkSession, settings: Settings, rows_before: int | None) -> Iterator[None]:
    """Run a streaming batch's own jobs (those of ``foreachBatch``) interpreted when the stream's previous batch
    had fewer than ``spark.codegen_min_batch_rows`` rows (``rows_before``; None, the first batch: compiled).

    Spark generates Java source for every query and for every file a scan reads (a projection per file), then
    compiles it, cached by source. Delta reads its log with wide nested schemas at each batch, and generating
    those projections' source is slow (regular expressions over the code): in a profile of the ingest bench's
    live part ~30 % of the driver's samples were there. A batch of a few hundred rows gains little from compiled
    code, a backlog batch of 200,000 a third of its time; a stream's batches come in runs (a backlog drains in
    large ones, live traffic arrives in small ones), so the previous batch's size decides.

    Only the block is interpreted: ``spark`` is the stream's own session (``batch.sparkSession``), and the stream
    plans its next batch (the Kafka read and the rules, one compiled class reused by every batch) after the block
    has restored Spark's default. ``NO_CODEGEN`` also turns off whole-stage codegen (``CollapseCodegenStages``).
    """
    interpreted = rows_before is not None and rows_before < settings.spark.codegen_min_batch_rows
    if interpreted:
        spark.conf.set(_CODEGEN_MODE, "NO_CODEGEN")
    try:
        yield
    finally:
        if interpreted:
            spark.conf.unset(_CODEGEN_MODE)


T = TypeVar("T")
_BUILT: dict[tuple[str, Hashable], Any] = {}


def built(spark: SparkSession, key: Hashable, build: Callable[[], T]) -> T:
    """What ``build`` returns (columns, a list of them), built once per Spark application and ``key``.

    Each function a column applies is a call from Python to the JVM (``F.col(name).alias(other)`` is three), and
    an ingest batch's filters and projections took about 1,800 of them to build: 0.15 to 0.6 s of every live
    batch on 2 busy cores, before any job ran. A column is an unresolved expression, valid in any plan of the
    application, so the ones that do not change from batch to batch are built once. ``key`` must name everything
    the columns depend on (an entity's fields: its ``repr``).
    """
    at = (spark.sparkContext.applicationId, key)
    if at not in _BUILT:
        _BUILT[at] = build()
    return cast("T", _BUILT[at])


_writers: ThreadPoolExecutor | None = None
_writers_lock = threading.Lock()


def run_together(
    spark: SparkSession, pool: str, calls: Sequence[Callable[[], T]], *, lead_pool: str | None = None
) -> list[T]:
    """Run ``calls`` at the same time, their Spark jobs in scheduler pool ``pool``; their results, in order.

    ``lead_pool``: the pool of the first call's jobs instead (an ingest batch's silver append, ``silver``). Spark
    gives each of an append's stages a job of its own, and within a FIFO pool a later job's tasks queue behind every
    task of the jobs submitted before it: silver's window and write stages waited for bronze's and the flags' whole
    first stages. In a pool of its own with a larger minimum share, its tasks take the free cores first.

    Used for the appends of one ingest batch to its tables: the anomaly flags then no longer wait for silver's
    append (~1.5 s sooner at p50 in a pair of bench runs); silver itself gained nothing measurable, as the two
    cores are the limit. Every call ends before this returns; then the first failure, in order, is raised.
    The threads are kept for the next batch: with pyspark's pinned threads each new Python thread would get a JVM
    thread of its own.
    """
    if not calls or (len(calls) == 1 and lead_pool is None):
        return [call() for call in calls]
    futures = start_together(spark, pool, calls, lead_pool=lead_pool)
    wait(futures)
    return [future.result() for future in futures]


def start_together(
    spark: SparkSession, pool: str, calls: Sequence[Callable[[], T]], *, lead_pool: str | None = None
) -> list[Future[T]]:
    """Start ``calls`` on :func:`run_together`'s threads and return at once; the caller waits for the futures.
    A call must not wait for others started here (the threads are few), and the caller must wait for them all."""
    global _writers  # noqa: PLW0603 - one pool of threads per driver
    with _writers_lock:
        if _writers is None:
            _writers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tierlake-write")
        writers = _writers

    def in_pool(call: Callable[[], T], chosen: str) -> T:
        use_pool(spark, chosen)
        return call()

    chosen = [lead_pool or pool, *([pool] * (len(calls) - 1))]
    return [writers.submit(in_pool, call, name) for call, name in zip(calls, chosen, strict=True)]


def spark_conf(settings: Settings, *, app_name: str) -> dict[str, str]:
    """Every Spark setting tierlake relies on, as plain pairs (pure: unit-tested without a JVM)."""
    spark, s3 = settings.spark, settings.s3
    access_key, secret_key = s3.require_credentials()
    conf = {
        "spark.app.name": app_name,
        "spark.master": spark.master,
        "spark.driver.memory": spark.driver_memory,
        "spark.sql.shuffle.partitions": str(spark.shuffle_partitions),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # Delta replays its log with this many partitions (default 50): sized to the cluster, not to a data centre.
        "spark.databricks.delta.snapshotPartitions": str(spark.shuffle_partitions),
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        # Ceph RGW through s3a: path-style, plain http on loopback, a region for SigV4.
        "spark.hadoop.fs.s3a.endpoint": s3.endpoint,
        "spark.hadoop.fs.s3a.endpoint.region": s3.region,
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": str(s3.endpoint.startswith("https://")).lower(),
        "spark.hadoop.fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
        "spark.hadoop.fs.s3a.access.key": access_key,
        "spark.hadoop.fs.s3a.secret.key": secret_key,
        "spark.hadoop.fs.s3a.attempts.maximum": "5",
        "spark.hadoop.fs.s3a.connection.timeout": "30000",
        "spark.databricks.delta.retentionDurationCheck.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        # The ingest and gold queries share the cores: with FIFO an ingest batch's tasks queued behind gold's.
        "spark.scheduler.mode": "FAIR",
        "spark.scheduler.allocation.file": str(pools_file(settings)),
        # Generated classes are cached by their source. A streaming ingest batch, a gold batch and Delta's commits
        # and reads together make more than the default 100 distinct classes, so the cache cycled and the same
        # classes were compiled again every batch: 663 compilations (~22 ms each, on 2 cores) in a 30 s live
        # part of bench/ingest.py --quick, 163 with 1000 entries. A class is a few tens of KB.
        "spark.sql.codegen.cache.maxEntries": "1000",
        # -Xss: a streaming query stopped mid-batch builds its error message with Java regular expressions that
        # recurse over the whole query plan; with the default 1 MB thread stack that overflowed (StackOverflowError
        # in the stream execution thread, seen when stopping a driver with a gold query running), and with 16 MB
        # once gold's plan grew with the day partitions (RGW killed under a running driver). Only what a thread
        # touches of its stack is committed.
        "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile={log4j_file(settings)} -Xss64m",
        # The ingest rules run in Python workers (mapInArrow, pipelines.ingest.rules): the driver's own interpreter,
        # so the workers import the same tierlake and pyarrow. A cluster sets its executors' path in extra_conf.
        "spark.pyspark.python": sys.executable,
    }
    jars = jars_in(spark.jars_dir)
    conf.update(_delta_commit_conf(spark.delta_commits, spark.jars_dir, jars))
    conf.update(_jar_conf(spark.master, jars))
    if s3.endpoint.startswith("http://"):
        # Over plain http the AWS SDK v2 signs each upload chunk (aws-chunked); RGW 16.2 rejects the last chunk
        # of a zero-byte PUT ("chunk signature mismatch" -> XAmzContentSHA256Mismatch). Unsigned payloads avoid it;
        # over https the SDK sends unsigned payloads anyway.
        conf["spark.hadoop.fs.s3a.signing-algorithm"] = "AWS4UnsignedPayloadSignerType"
    if spark.local_ip:
        conf["spark.driver.host"] = spark.local_ip
        conf["spark.driver.bindAddress"] = spark.local_ip
    conf.update(spark.extra_conf)
    return conf


def _delta_commit_conf(mode: str, jars_dir: Path, jars: list[Path]) -> dict[str, str]:
    """Delta on S3 without DynamoDB: a log store whose commits the object store arbitrates (``spark.delta_commits``)."""
    if mode == "conditional" and not any(jar.name.startswith("tierlake-logstore") for jar in jars):
        raise DependencyMissing(
            f"spark.delta_commits is conditional but {jars_dir} has no tierlake-logstore jar "
            "(infra/logstore, compiled by set-up). Fix: run `make setup`, or set spark.delta_commits: single_driver"
        )
    return {
        "spark.delta.logStore.s3a.impl": LOG_STORES[mode],
        "spark.hadoop.fs.s3a.create.conditional.enabled": "true",
    }


_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _jar_conf(master: str, jars: list[Path]) -> dict[str, str]:
    """How the jar set reaches the JVM.

    A ``local[...]`` driver is its own executor, so the jars go straight onto its classpath. With ``spark.jars``
    Spark copies every jar (~680 MB with the AWS SDK bundle) into a ``/tmp/spark-*/userFiles-*`` folder per
    session, and a driver that dies by kill -9 never removes it. A cluster's executors need ``spark.jars``, or,
    on a cluster of this machine (the stack's), the same classpath as the driver's.
    """
    classpath = {"spark.driver.extraClassPath": os.pathsep.join(str(jar) for jar in jars)}
    if master.startswith("local"):
        return classpath
    if urlsplit(master).hostname in _LOOPBACK:
        # Workers on this machine see the same files: the jars join each executor's classpath where they are.
        # Through spark.jars every executor fetched a copy into its folder, 681 MB per executor and application
        # (seen on the stack's cluster; ``local:`` URIs were copied too, as file: URLs).
        return classpath | {"spark.executor.extraClassPath": classpath["spark.driver.extraClassPath"]}
    return {"spark.jars": ",".join(str(jar) for jar in jars)}


# The S3 keys among spark_conf's pairs: never on a command line (see _launch_jvm).
KEY_CONF = frozenset({"spark.hadoop.fs.s3a.access.key", "spark.hadoop.fs.s3a.secret.key"})


def _launch_jvm(conf: dict[str, str]) -> None:
    """Start pyspark's JVM (``spark-submit``) with ``conf`` on its command line, unless it runs already.

    pyspark passes a new session's settings to ``spark-submit`` as ``--conf key=value`` arguments, where ``ps``
    shows them to every user of the machine. Started here first without the keys, the JVM then receives the
    session's settings, keys included, over py4j into its SparkConf: executors get them from the driver over
    Spark's RPC (on a cluster too), and Spark redacts them wherever it prints its conf.
    """
    from pyspark import SparkConf, SparkContext  # noqa: PLC0415 - pyspark only on Spark paths

    # pyspark has no public hook for the launch command; _ensure_initialized is what its SparkContext calls.
    if SparkContext._gateway is None:
        SparkContext._ensure_initialized(conf=SparkConf(loadDefaults=False).setAll(list(conf.items())))


def spark_session(settings: Settings, *, app_name: str = "tierlake") -> SparkSession:
    """Start (or join) the SparkSession for these settings."""
    from pyspark.sql import SparkSession  # noqa: PLC0415 - importing pyspark costs ~1 s; only Spark paths pay it

    if settings.spark.local_ip:
        # Spark reads this before any conf: without it the driver binds the host's address, not loopback.
        os.environ.setdefault("SPARK_LOCAL_IP", settings.spark.local_ip)
    # pyspark starts its Python workers with PYSPARK_PYTHON (default: whatever python3 is on PATH), not with
    # spark.pyspark.python: the ingest rules need this interpreter's packages there.
    os.environ.setdefault("PYSPARK_PYTHON", settings.spark.extra_conf.get("spark.pyspark.python", sys.executable))
    pools = pools_file(settings)
    pools.parent.mkdir(parents=True, exist_ok=True)
    pools.write_text(POOLS, encoding="utf-8")
    log4j_file(settings).write_text(LOG4J.format(path=spark_log(settings)), encoding="utf-8")
    spark_log(settings).parent.mkdir(parents=True, exist_ok=True)
    conf = spark_conf(settings, app_name=app_name)
    _launch_jvm({key: value for key, value in conf.items() if key not in KEY_CONF})
    builder = SparkSession.builder
    for key, value in conf.items():
        builder = builder.config(key, value)
    session: SparkSession = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session
