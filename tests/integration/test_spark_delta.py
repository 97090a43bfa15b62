"""Spark 4.2 + Delta on RGW through s3a: batch round trip read by Spark and delta-rs, and a Kafka stream."""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from deltalake import DeltaTable

from pipelines.synthetic.produce import producer_config
from tierlake.config import Settings
from tiers.s3 import delta_storage_options

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def _table_uri(settings: Settings, name: str) -> str:
    return f"s3a://{settings.s3.lake_bucket}/tests/{name}-{uuid.uuid4().hex[:8]}"


def _delta_rs(settings: Settings, s3a_uri: str) -> DeltaTable:
    return DeltaTable(s3a_uri.replace("s3a://", "s3://", 1), storage_options=delta_storage_options(settings.s3))


def test_delta_written_by_spark_reads_the_same_in_spark_and_delta_rs(spark: SparkSession, settings: Settings) -> None:
    uri = _table_uri(settings, "batch")
    rows = [(i, f"station-{i % 7}", float(i) * 1.5) for i in range(2000)]
    frame = spark.createDataFrame(rows, "id long, station string, power double")
    frame.write.format("delta").partitionBy("station").save(uri)
    frame.limit(10).write.format("delta").mode("append").save(uri)  # a second commit

    from_spark = sorted(tuple(r) for r in spark.read.format("delta").load(uri).collect())
    table = _delta_rs(settings, uri)
    assert table.version() == 1
    arrow = table.to_pyarrow_table()
    from_rust = sorted(
        zip(arrow["id"].to_pylist(), arrow["station"].to_pylist(), arrow["power"].to_pylist(), strict=True)
    )
    assert len(from_spark) == 2010
    assert from_spark == from_rust
    assert from_spark == sorted(rows + rows[:10])


def test_stream_from_kafka_into_delta_holds_exactly_the_records(spark: SparkSession, settings: Settings) -> None:
    topic = f"test.stream.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap()})  # must outlive the future
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=3)])[topic].result(timeout=30)
    producer = Producer(producer_config(settings))
    sent = {f"evt-{i:04d}": i for i in range(400)}
    for event_id, n in sent.items():
        producer.produce(topic, key=event_id.encode(), value=json.dumps({"event_id": event_id, "n": n}).encode())
    assert producer.flush(60) == 0

    from pyspark.sql import functions as F  # noqa: PLC0415 - pyspark is imported only where Spark runs

    uri = _table_uri(settings, "stream")
    source = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka.bootstrap())
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .load()
    )
    parsed = source.select(
        F.from_json(F.col("value").cast("string"), "event_id string, n int").alias("e"), "partition", "offset"
    ).select("e.*", "partition", "offset")
    query = (
        parsed.writeStream.format("delta")
        .option("checkpointLocation", f"{uri}/_checkpoint")
        .trigger(availableNow=True)
        .start(uri)
    )
    query.awaitTermination()

    landed = {r["event_id"]: r["n"] for r in spark.read.format("delta").load(uri).collect()}
    assert landed == sent
    offsets = _delta_rs(settings, uri).to_pyarrow_table(columns=["partition", "offset"]).to_pylist()
    assert len({(o["partition"], o["offset"]) for o in offsets}) == 400, "each Kafka record once"

    # A second run over the same checkpoint finds nothing new: the sink does not duplicate.
    again = (
        parsed.writeStream.format("delta")
        .option("checkpointLocation", f"{uri}/_checkpoint")
        .trigger(availableNow=True)
        .start(uri)
    )
    again.awaitTermination()
    assert spark.read.format("delta").load(uri).count() == 400


def test_commit_ledger_appends_each_batch_once_across_driver_restarts(spark: SparkSession, settings: Settings) -> None:
    """A replayed batch skips a table that holds it; a new ledger (a restarted driver) learns that from the table."""
    from pipelines.ingest.ledger import CommitLedger  # noqa: PLC0415

    uri = _table_uri(settings, "ledger")
    ledger = CommitLedger(spark)
    assert ledger.last(uri) == -1

    def batch(batch_id: int) -> DataFrame:
        return spark.createDataFrame([(batch_id * 10 + i, batch_id) for i in range(3)], "id long, _batch_id long")

    assert ledger.append(batch(0), uri, 0)
    assert ledger.append(batch(1), uri, 1)
    assert not ledger.append(batch(1), uri, 1)  # the same driver replays batch 1
    restarted = CommitLedger(spark)
    assert restarted.last(uri) == 1
    assert not restarted.append(batch(1), uri, 1)  # a restarted driver replays batch 1
    assert restarted.append(batch(2), uri, 2)
    ids = sorted(r["id"] for r in spark.read.format("delta").load(uri).collect())
    assert ids == [0, 1, 2, 10, 11, 12, 20, 21, 22]


def test_an_empty_append_commits_nothing_and_the_write_gives_its_observed_metrics(
    spark: SparkSession, settings: Settings
) -> None:
    """What an ingest batch relies on to write its flags beside silver and count its outcomes in silver's job:
    Delta commits nothing for an append that adds no file (with the flags' options), and the metrics observed on
    the frame a Delta append writes come back once the append returns."""
    from delta.tables import DeltaTable as SparkDeltaTable  # noqa: PLC0415
    from pyspark.sql import Observation  # noqa: PLC0415
    from pyspark.sql import functions as F  # noqa: PLC0415

    from pipelines.ingest.ledger import CommitLedger  # noqa: PLC0415

    uri = _table_uri(settings, "empty_appends")
    frame = spark.createDataFrame([(i, i % 3, "2026-12-06") for i in range(30)], "id long, _batch_id long, day string")
    ledger = CommitLedger(spark)

    def append(rows: DataFrame, batch_id: int) -> bool:  # as the flags are written
        return ledger.append(rows, uri, batch_id, merge_schema=True, partition_by="day", append_only=True)

    assert append(frame.where("_batch_id = 0"), 0)
    assert append(frame.where("_batch_id = 1 and id < 0"), 1)  # no row
    observation = Observation("test_empty_appends")
    watched = frame.observe(observation, F.count(F.lit(1)).alias("rows"), F.max("id").alias("high"))
    assert append(watched.where("_batch_id = 2 and id < 0"), 2)  # no row either
    versions = [row["version"] for row in SparkDeltaTable.forPath(spark, uri).history().collect()]
    assert versions == [0]  # the two empty appends committed nothing
    assert observation.get == {"rows": 30, "high": 29}  # every row the write read, before its filter
    assert ledger.last(uri) == 2  # and the ledger still counts the batches done


def test_commit_times_say_when_each_row_became_visible(spark: SparkSession, settings: Settings) -> None:
    """Each row gets the time its commit file appeared in the log (what freshness measures to), not the write's
    start; rows of files rewritten by compaction are left out rather than given the rewrite's time."""
    from delta.tables import DeltaTable as SparkDeltaTable  # noqa: PLC0415
    from pyspark.sql import functions as F  # noqa: PLC0415

    from pipelines.checks.freshness import with_commit_time  # noqa: PLC0415
    from tiers.s3 import s3_client  # noqa: PLC0415

    uri = _table_uri(settings, "committed")
    frame = spark.createDataFrame([(i, f"station-{i % 3}") for i in range(30)], "id long, station string")
    frame.where("id < 10").write.format("delta").partitionBy("station").save(uri)
    began = time.time()
    frame.where("id >= 10").write.format("delta").mode("append").partitionBy("station").save(uri)
    ended = time.time()

    key = uri.removeprefix(f"s3a://{settings.s3.lake_bucket}/") + "/_delta_log/00000000000000000001.json"
    visible = s3_client(settings.s3).head_object(Bucket=settings.s3.lake_bucket, Key=key)["LastModified"].timestamp()
    rows = with_commit_time(spark, uri).select("id", F.col("committed_at").cast("double").alias("at")).collect()
    assert sorted(r["id"] for r in rows) == list(range(30))  # every row, once
    second = {r["at"] for r in rows if r["id"] >= 10}
    assert len(second) == 1  # one commit, one time, over its three files
    (at,) = second
    assert began - 1 <= at <= ended + 1  # taken during the append (HEAD gives whole seconds, the listing ms)
    assert abs(at - visible) < 1
    assert all(r["at"] < at for r in rows if r["id"] < 10)

    SparkDeltaTable.forPath(spark, uri).optimize().executeCompaction()
    assert with_commit_time(spark, uri).count() == 0  # every file rewritten: no row claims the compaction's time
