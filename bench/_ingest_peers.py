"""The ingestion bench's peers and diagnostics (``bench/ingest.py`` runs them; not a bench of its own).

Peers: the plain Structured Streaming job a data engineer would write (``start_plain``/``plain_peer``), a raw
confluent-kafka consumer (``raw_consume``), Spark reading the topic as a batch (``spark_read``) and the cost of
the strict parse against ``json.loads``/``from_json`` (``parse_cost``). Diagnostics: each query's batch phases
(``batch_phases``), tierlake's own batch breakdown (``BatchBreakdown``) and Spark's code generation counts.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from deltalake import DeltaTable

from pipelines.checks.freshness import freshness
from pipelines.ingest.bronze import FETCH_MAX_WAIT_MS
from pipelines.ingest.records import judge_record
from pipelines.ingest.rules import classify, record_ddl
from pipelines.synthetic.datasets import Record
from pipelines.synthetic.produce import send_records
from tierlake import catalog
from tierlake.config import Settings
from tiers.s3 import delta_storage_options


def plain_topic(tag: str) -> str:
    """The topic of the plain Structured Streaming peer (the same records as tierlake's, a topic of its own)."""
    return f"bench.plain.{tag}"


def start_plain(
    spark: Any, settings: Settings, entity: str, tag: str, *, trigger_s: float | None, tuned: bool = False
) -> Any:
    """The job a data engineer would write instead of tierlake: one query, Kafka -> ``from_json`` -> Delta append,
    no validation, no quarantine, no exactly-once ledger, one table (``bench/plain_<tag>`` in the lake), the Kafka
    source's defaults. ``tuned``: the same job with the one consumer setting tierlake's source adds
    (``kafka.fetch.max.wait.ms``, :data:`pipelines.ingest.bronze.FETCH_MAX_WAIT_MS`), to its own table
    (``bench/plain_tuned_<tag>``): what that setting alone is worth to anyone's job."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    name = f"plain_tuned_{tag}" if tuned else f"plain_{tag}"
    table = catalog.TablePath(settings.s3.lake_bucket, f"bench/{name}")
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka.bootstrap())
        .option("subscribe", plain_topic(tag))
        .option("startingOffsets", "earliest")
    )
    if tuned:
        reader = reader.option("kafka.fetch.max.wait.ms", FETCH_MAX_WAIT_MS)
    parsed = reader.load().select(
        F.from_json(F.col("value").cast("string"), record_ddl(settings.entities[entity])).alias("r"),
        F.col("timestamp").alias("kafka_timestamp"),
    )
    writer = (
        parsed.select("r.*", "kafka_timestamp")
        .writeStream.format("delta")
        .option("checkpointLocation", f"{table.s3a}/_checkpoint")
        .queryName(name)
    )
    writer = (
        writer.trigger(availableNow=True)
        if trigger_s is None
        else writer.trigger(processingTime=f"{trigger_s} seconds")
    )
    return writer.start(table.s3a)


def plain_backlog(spark: Any, settings: Settings, entity: str, tag: str, records: list[Record]) -> tuple[float, float]:
    """One backlog of ``records`` on the plain query's topic, drained by the plain query, then by the tuned one
    (:func:`start_plain`, a checkpoint of its own, so it reads the same records): the seconds of each (query start
    excluded: the sum of its batches' trigger times)."""
    send_records(settings, plain_topic(tag), iter(records), total=len(records), progress=False)
    times = []
    for tuned in (False, True):
        query = start_plain(spark, settings, entity, tag, trigger_s=None, tuned=tuned)
        query.awaitTermination()
        times.append(backlog_s(query))
    return times[0], times[1]


def plain_live(
    spark: Any,
    settings: Settings,
    entity: str,
    tag: str,
    *,
    before: int,
    live: list[Record],
    rate: float,
    trigger_s: float,
) -> dict[str, Any]:
    """The plain query's live freshness to the commit, on the same records and rate as tierlake's live part, and
    its batches' phases; ``before``: the records its table holds already (its backlogs)."""
    topic = plain_topic(tag)
    query = start_plain(spark, settings, entity, tag, trigger_s=trigger_s)
    try:
        time.sleep(10)  # up and idle before the clock starts, as tierlake's live part
        since = time.time()
        send_records(settings, topic, iter(live), total=len(live), rate=rate, progress=False)
        table = catalog.TablePath(settings.s3.lake_bucket, f"bench/plain_{tag}")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            rows = DeltaTable(table.s3, storage_options=delta_storage_options(settings.s3)).to_pyarrow_table(
                columns=["event_id"]
            )
            if rows.num_rows >= before + len(live):
                break
            time.sleep(1)
        phases = batch_phases(spark)
    finally:
        query.stop()
    return {
        "live": freshness(spark, table.s3a, since_epoch_s=since),
        "phases": phases.get(f"plain_{tag}", {}),
    }


def backlog_s(query: Any) -> float:
    """A finished query's time in the batches that read records (its start and its empty batches excluded)."""
    return float(sum(p["durationMs"]["triggerExecution"] / 1000 for p in query.recentProgress if p["numInputRows"]))


def raw_consume(settings: Settings, topic: str, expected: int) -> float:
    """Seconds for a plain consumer to read ``expected`` records of ``topic`` from the start.

    The consumer assigns itself every partition from the beginning, as Spark's Kafka source does, rather than
    joining a consumer group: a new group waits for the broker's initial rebalance delay (3 s by default), which
    would time the broker's wait, not the reading.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap(),
            "group.id": f"bench-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    started = time.monotonic()
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    seen = 0
    try:
        while seen < expected and time.monotonic() - started < 300:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error() is None:
                    seen += 1
    finally:
        consumer.close()
    if seen < expected:
        raise RuntimeError(f"raw consumer saw {seen} of {expected} records in 300 s")
    return time.monotonic() - started


def spark_read(spark: Any, settings: Settings, topic: str, expected: int) -> float:
    """Seconds for Spark to read (count) every record of ``topic`` as a batch job, best of two."""
    source = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka.bootstrap())
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .load()
    )
    times = []
    for _ in range(2):
        began = time.monotonic()
        seen = source.count()
        times.append(time.monotonic() - began)
        if seen != expected:
            raise RuntimeError(f"Spark read {seen} of {expected} records of {topic}")
    return min(times)


def batch_phases(spark: Any) -> dict[str, dict[str, float]]:
    """Per running query, the median of each phase of its recent micro-batches (Spark's ``durationMs``), in ms:
    where a batch's time goes (``addBatch`` is the batch itself; ``walCommit`` and ``commitOffsets`` are the
    checkpoint writes before and after it)."""
    phases: dict[str, dict[str, float]] = {}
    for query in spark.streams.active:
        durations = [p["durationMs"] for p in query.recentProgress if p.get("numInputRows")]
        keys = sorted({k for d in durations for k in d})
        phases[query.name] = {k: statistics.median(d.get(k, 0) for d in durations) for k in keys}
        phases[query.name]["batches"] = len(durations)
    return phases


class BatchBreakdown(logging.Handler):
    """Where tierlake's own ingest batches spend their time, from the line ``pipelines.ingest.silver`` logs per
    batch: judging (the facts' job, which fills the batch's cache, and the history's probe), then the appends
    (silver's and the others', bronze's started with the judging)."""

    PARTS = ("judged_s", "written_s")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.batches: list[dict[str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if all(hasattr(record, part) for part in self.PARTS):
            self.batches.append({part: float(getattr(record, part)) for part in self.PARTS})

    def medians(self) -> dict[str, float]:
        found: dict[str, float] = {
            part: round(statistics.median(b[part] for b in self.batches), 2) for part in self.PARTS if self.batches
        }
        return {**found, "batches": len(self.batches)}


def codegen_compiles(spark: Any) -> dict[str, float]:
    """Spark's generated-code compilations so far (Janino; a class whose source is cached is not compiled again)
    and the mean compile time of the recent ones, in ms (Spark's ``CodegenMetrics``)."""
    timer = spark._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME()
    return {"compiles": int(timer.getCount()), "mean_ms": round(float(timer.getSnapshot().getMean()), 1)}


def parse_cost(spark: Any, settings: Settings, entity: str, records: list[Record]) -> dict[str, float]:
    """What strictness costs, on the same records: the strict reader in plain Python (ms per 1,000 records, best
    of five) against ``json.loads`` alone, and in Spark the strict rules (``classify``, the Arrow UDF) against
    Spark's lenient ``from_json`` of the same schema (the parse the rules used before), both counted over one
    cached DataFrame of the records (best of three, warm)."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    spec = settings.entities[entity]
    now = datetime.now(UTC)

    def best(call: Any, tries: int) -> float:
        times = []
        for _ in range(tries):
            began = time.perf_counter()
            call()
            times.append(time.perf_counter() - began)
        return min(times)

    per_k = 1000 / len(records)
    strict_s = best(lambda: [judge_record(r.value, r.key, spec, ingest_time=now) for r in records], 5)
    loads_s = best(lambda: [json.loads(r.value) for r in records], 5)
    frame = spark.createDataFrame([(r.key, r.value) for r in records], "key binary, value binary").withColumn(
        "ingest_time", F.current_timestamp()
    )
    frame = frame.persist()
    frame.count()
    schema = record_ddl(spec)
    classify_s = best(lambda: classify(frame, spec).where(F.col("rule").isNull()).count(), 3)
    from_json_s = best(
        lambda: (
            frame.select(F.from_json(F.col("value").cast("string"), schema).alias("r"))
            .where(F.col("r").isNotNull())
            .count()
        ),
        3,
    )
    frame.unpersist()
    return {
        "strict_parse_ms_per_1k": round(strict_s * 1000 * per_k, 2),
        "json_loads_ms_per_1k": round(loads_s * 1000 * per_k, 2),
        "spark_strict_rules_ms_per_1k": round(classify_s * 1000 * per_k, 2),
        "spark_from_json_ms_per_1k": round(from_json_s * 1000 * per_k, 2),
    }
