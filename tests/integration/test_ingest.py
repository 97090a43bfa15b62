"""Ingestion end to end on the real stack: the exactly-once oracle with the driver killed three times and a
partition leader killed, every bad-input kind landing where the README says, reconciliation, schema upgrade.

The test gets a topic and an entity of its own (passed to the CLI through TIERLAKE_KAFKA__TOPICS and
TIERLAKE_ENTITIES), so its tables and offsets are its alone.
"""

from __future__ import annotations

import functools
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from deltalake import DeltaTable

from infra import procs
from infra.stack import LocalStack
from loaders import pages
from loaders.table import ArrowFileSource
from pipelines.checks.reconcile import reconcile
from pipelines.checks.replay import replay_quarantine
from pipelines.ingest.bronze import bronze_table
from pipelines.ingest.driver import run_until_caught_up
from pipelines.ingest.gold_corpus import SEQ_LEN, decode
from pipelines.ingest.offsets import CheckpointOffsets
from pipelines.ingest.silver import silver_tables
from pipelines.lake import maintenance
from pipelines.synthetic.datasets import BAD_KINDS, EV_SPACING_S, Record, ev_stream, good_records, recent_start
from pipelines.synthetic.produce import producer_config
from tierlake import catalog
from tierlake.config import Settings, load_settings
from tierlake.errors import NotFound
from tiers.s3 import delta_storage_options

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

REPO = Path(__file__).resolve().parents[2]
EVENTS = 20_000


def day_records(days_ago: int, count: int, seed: int) -> list[Record]:
    """``count`` EV events of one UTC day ``days_ago`` days back, from 08:00 (the producer's generator,
    back-dated); today's end no later than now (none of them in the future)."""
    day = date.today() - timedelta(days=days_ago)
    start = datetime(day.year, day.month, day.day, 8, tzinfo=UTC)
    if days_ago == 0:
        start = min(start, recent_start(count, EV_SPACING_S))
    return list(good_records("ev", count, seed=seed, start=start))


class Oracle:
    """A topic and entity of the test's own, and what each produced record must become."""

    def __init__(
        self, stack: LocalStack, *, extra_fields: list[dict[str, Any]] | None = None, base_entity: str = "ev"
    ) -> None:
        tag = uuid.uuid4().hex[:8]
        self.stack = stack
        self.topic, self.entity = f"test.ev.{tag}", f"ev_{tag}"
        base = yaml.safe_load((REPO / "conf" / "base.yaml").read_text())
        spec = {**base["entities"][base_entity], "topic": self.topic}
        self.topics = [
            *base["kafka"]["topics"],
            {"name": self.topic, "partitions": 3, "replication": 3, "retention_ms": 86_400_000},
        ]
        self.spec = spec
        self.extra_fields = extra_fields or []
        self.expect: dict[tuple[int, int], Record] = {}
        admin = AdminClient({"bootstrap.servers": stack.settings.kafka.bootstrap()})
        admin.create_topics([NewTopic(self.topic, num_partitions=3, replication_factor=3)])[self.topic].result(30)

    def env(self) -> dict[str, str]:
        spec = {**self.spec, "fields": [*self.spec["fields"], *self.extra_fields]}
        return {
            "TIERLAKE_PROFILE": "ci",
            "TIERLAKE_KAFKA__TOPICS": json.dumps(self.topics),
            "TIERLAKE_ENTITIES": json.dumps({self.entity: spec}),
        }

    def settings(self) -> Settings:
        return load_settings("ci", env={**os.environ, **self.env()})

    def produce(self, records: list[Record]) -> None:
        producer = Producer(producer_config(self.stack.settings))
        failures: list[str] = []

        def delivered(error: KafkaError | None, message: Message, *, record: Record) -> None:
            if error is not None:
                failures.append(str(error))
                return
            partition, offset = message.partition(), message.offset()
            assert partition is not None
            assert offset is not None
            self.expect[(partition, offset)] = record

        for record in records:
            while True:
                try:
                    producer.produce(
                        self.topic,
                        key=record.key,
                        value=record.value,
                        on_delivery=functools.partial(delivered, record=record),
                    )
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        assert producer.flush(120) == 0
        assert not failures

    def ingest_ok(self) -> None:
        """`tierlake ingest run` for this entity, which must succeed (its stderr's tail is the failure)."""
        result = self.ingest()
        assert result is not None
        assert result.returncode == 0, result.stderr[-3000:]

    def ingest_in_session(self, spark: SparkSession) -> None:
        """`tierlake ingest run --entity` for this entity, in the test session's Spark (:func:`ingest_in_session`)."""
        ingest_in_session(spark, self.settings(), [self.entity])

    def ingest(self, *, kill_after_s: float | None = None) -> subprocess.CompletedProcess[str] | None:
        """Run `tierlake ingest run` for this entity; with kill_after_s, SIGKILL the driver (python + JVM)."""
        argv = [sys.executable, "-m", "tierlake.cli", "ingest", "run", "--entity", self.entity, "--json"]
        env = {**os.environ, **self.env()}
        if kill_after_s is None:
            return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200, check=False)
        process = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            process.wait(timeout=kill_after_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the driver: python and its Spark JVM, mid-flight
            process.wait()
        return None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "tierlake.cli", *args]
        env = {**os.environ, **self.env()}
        return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200, check=False)

    def table(self, kind: str) -> list[dict[str, Any]]:
        tables = silver_tables(self.settings(), self.entity)
        uri = getattr(tables, kind).replace("s3a://", "s3://", 1)
        table = DeltaTable(uri, storage_options=delta_storage_options(self.stack.settings.s3))
        rows: list[dict[str, Any]] = table.to_pyarrow_table().to_pylist()
        return rows

    def gold(self, suffix: str) -> list[dict[str, Any]]:
        uri = f"s3://{self.stack.settings.s3.lake_bucket}/gold/{self.entity}_{suffix}"
        table = DeltaTable(uri, storage_options=delta_storage_options(self.stack.settings.s3))
        rows: list[dict[str, Any]] = table.to_pyarrow_table().to_pylist()
        return rows


class Maintenance:
    """The lake_maintenance DAG's work on an oracle's bronze and silver, in a loop beside its drivers: OPTIMIZE
    (delta-rs, ``dataChange: false``) and a log checkpoint every ``every_s``, and, given a session, one VACUUM (Spark,
    the default retention) of each table once it exists. What ran is counted in ``done``; errors are kept for the
    test."""

    def __init__(self, oracle: Oracle, *, spark: SparkSession | None = None, every_s: float = 5.0) -> None:
        self.settings = oracle.settings()
        self.tables = [f"silver/{oracle.entity}", f"bronze/{catalog.topic_folder(oracle.topic)}"]
        self.spark, self.every_s = spark, every_s
        self.done: Counter[str] = Counter()
        self.errors: list[str] = []
        self._vacuumed: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="maintenance", daemon=True)

    def __enter__(self) -> Maintenance:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=300)
        assert not self._thread.is_alive(), "maintenance did not stop"

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            for table in self.tables:
                self._run("optimize", partial(maintenance.optimize, self.settings, table))
                self._run("checkpoint", partial(maintenance.checkpoint, self.settings, table))
                if (
                    self.spark is not None
                    and table not in self._vacuumed
                    and self._run("vacuum", partial(maintenance.vacuum, self.spark, self.settings, table))
                ):
                    self._vacuumed.add(table)

    def _run(self, what: str, step: Callable[[], object]) -> bool:
        try:
            step()
        except NotFound:  # the first batch has not created the table yet
            return False
        except Exception as exc:  # reported by the test
            self.errors.append(f"{what}: {type(exc).__name__}: {exc}")
            return False
        self.done[what] += 1
        return True


def ingest_in_session(spark: SparkSession, settings: Settings, entities: list[str]) -> None:
    """What `tierlake ingest run` does, in the test session's Spark: for records a test only needs in the lake.

    A driver process of its own (a JVM start and its warm-up: 45-80 s against 10-25 s here, on a loaded 2-core
    machine) stays where the process is the point: the CLI's output and exit code, a kill, a restart. The run's
    released leases leave its tables fenced at 0 in this JVM (``fence_commits``), which a driver's own JVM forgets as
    it exits; so does this, or the test's own Spark writes to those tables afterwards would be refused.
    """
    run_until_caught_up(spark, settings, entities=entities)
    store = spark._jvm.io.tierlake.delta.ConditionalPutLogStore  # type: ignore[union-attr]
    for entity in entities:
        for table in catalog.entity_tables(settings.s3.lake_bucket, entity, settings.entities[entity].topic):
            store.unfence(f"{table.s3a}/")


def _phase_two(count: int, seed: int) -> list[Record]:
    """Good and bad records; every bad kind appears (the generator cycles through them in turn)."""
    records = list(ev_stream(count, bad_fraction=0.03, seed=seed, start=recent_start(count, EV_SPACING_S)))
    kinds = Counter(r.expect for r in records if r.expect != "silver")
    assert len(kinds) == len(BAD_KINDS) - 1, kinds  # unknown_fields is accepted into silver
    return records


def test_exactly_once_through_driver_and_broker_kills(stack: LocalStack, spark: SparkSession) -> None:
    oracle = Oracle(stack)
    rng = random.Random(2026)
    # Phase 1: history, so that late events and duplicates have something to be late for and to repeat.
    start = recent_start(EVENTS + 2000, EV_SPACING_S)
    oracle.produce(list(good_records("ev", 1000, seed=3, start=start)))
    oracle.ingest_in_session(spark)
    # Phase 2: tens of thousands of records with every bad kind, ingested through three driver kills and the
    # loss of a partition leader.
    oracle.produce(_phase_two(EVENTS, seed=4))
    # Table maintenance runs beside the drivers all along, as the lake_maintenance DAG does beside a stream: the
    # results below must be the same as without it.
    with Maintenance(oracle, spark=spark) as beside:
        for attempt in range(3):
            oracle.ingest(kill_after_s=rng.uniform(15, 45))
            if attempt == 1:
                admin = AdminClient({"bootstrap.servers": stack.settings.kafka.bootstrap()})
                leader = admin.list_topics(oracle.topic, timeout=10).topics[oracle.topic].partitions[0].leader
                procs.kill9(stack.kafka.node(leader).daemon)
        result = oracle.ingest()
    assert result is not None
    assert result.returncode == 0, result.stderr[-3000:]
    stack.up()  # the killed broker comes back
    assert not beside.errors, beside.errors
    assert set(beside.done) == {"optimize", "checkpoint", "vacuum"}, beside.done
    operations = {entry["operation"] for entry in maintenance.history(oracle.settings(), f"silver/{oracle.entity}")}
    assert "OPTIMIZE" in operations, operations  # a compaction committed between the appends

    silver = assert_every_record_landed_once(oracle, spark)

    # Gold, its own query, went through the same kills.
    assert_gold_matches(oracle, silver)


def assert_every_record_landed_once(oracle: Oracle, spark: SparkSession) -> list[dict[str, Any]]:
    """The oracle's verdict after a run with every bad kind: each good record in silver once, each bad one in
    quarantine or dropped under its rule at its offset, reconciliation balanced, each commit naming its batch's
    offsets. Returns silver's rows."""
    silver = oracle.table("silver")
    ids = Counter(row["event_id"] for row in silver)
    assert set(ids) == {r.event_id for r in oracle.expect.values() if r.expect == "silver"}
    assert max(ids.values()) == 1, "every good event exactly once"
    got = {(row["partition"], row["offset"]): f"quarantine:{row['rule']}" for row in oracle.table("quarantine")}
    got |= {(row["partition"], row["offset"]): f"dropped:{row['reason']}" for row in oracle.table("dropped")}
    wanted = {key: record.expect for key, record in oracle.expect.items() if record.expect != "silver"}
    assert got == wanted
    assert {k.split(":")[1] for k in wanted.values()} == set(BAD_KINDS) - {"unknown_fields"}
    assert any(row["extra_fields"] for row in silver), "unknown fields are kept, not dropped"
    report = reconcile(spark, oracle.settings(), entity=oracle.entity)
    assert report["balanced"], json.dumps(report, indent=2)
    assert sum(p["bronze"] for p in report["partitions"]) == len(oracle.expect)
    assert_commit_offsets_match_rows(oracle, spark)
    return silver


def assert_gold_matches(oracle: Oracle, silver: list[dict[str, Any]]) -> None:
    """Every silver row sits in exactly one gold window of each length, and every reading that must be flagged is
    flagged exactly once."""
    windows = oracle.gold("windows")
    for minutes in (1, 15):
        assert sum(w["samples"] for w in windows if w["window_minutes"] == minutes) == len(silver), minutes
    flagged = Counter(a["event_id"] for a in oracle.gold("anomalies"))
    hot = {
        row["event_id"]
        for row in silver
        if (row["temp_c"] or 0) > 80 or row["power_kw"] > 400 or (row["status"] == "dropout" and row["power_kw"] == 0)
    }
    assert set(flagged) == hot
    assert max(flagged.values()) == 1


def assert_commit_offsets_match_rows(oracle: Oracle, spark: SparkSession) -> None:
    """Each batch's Kafka offsets, which its commits record for the lineage, are read from the query's checkpoint
    (``offsets/<batch>``), not from its rows: through the kills above they must still be the lowest and highest
    offset of each partition's rows of that batch in bronze, both as the checkpoint gives them and in silver's log."""
    settings = oracle.settings()
    options = delta_storage_options(settings.s3)
    bronze = bronze_table(settings, oracle.topic)
    rows = DeltaTable(bronze.table_uri.replace("s3a://", "s3://", 1), storage_options=options).to_pyarrow_table(
        columns=["partition", "offset", "_batch_id"]
    )
    seen: dict[int, dict[int, tuple[int, int]]] = {}
    for row in rows.to_pylist():
        parts = seen.setdefault(row["_batch_id"], {})
        low, high = parts.get(row["partition"], (row["offset"], row["offset"]))
        parts[row["partition"]] = (min(low, row["offset"]), max(high, row["offset"]))
    checkpoint = CheckpointOffsets(spark, bronze.checkpoint_uri)
    for batch_id in sorted(seen):
        assert checkpoint.ranges(batch_id) == {oracle.topic: seen[batch_id]}, batch_id
    silver = silver_tables(settings, oracle.entity).silver.replace("s3a://", "s3://", 1)
    logged = 0
    for entry in DeltaTable(silver, storage_options=options).history():
        described = json.loads(entry.get("userMetadata") or "null")
        if isinstance(described, dict) and "offsets" in described:
            ranges = {int(p): (lo, hi) for p, (lo, hi) in described["offsets"][oracle.topic].items()}
            assert ranges == seen[described["batch_id"]], described
            logged += 1
    assert logged >= 2, "silver's commits carry their batches' offsets"


def test_schema_upgrade_adds_an_optional_field_on_restart(stack: LocalStack, spark: SparkSession) -> None:
    oracle = Oracle(stack)
    start = recent_start(400, EV_SPACING_S)
    before = list(good_records("ev", 200, seed=8, start=start))
    oracle.produce(before)
    oracle.ingest_in_session(spark)

    oracle.extra_fields = [{"name": "firmware", "type": "string", "max_length": 16}]
    after = []
    for i, record in enumerate(good_records("ev", 200, seed=9, start=start + timedelta(seconds=400))):
        event = json.loads(record.value)
        event["firmware"] = f"7.{i % 4}.0"
        after.append(Record(record.key, json.dumps(event).encode(), "silver", event["event_id"]))
    # Too hot as well: once replayed into silver it must be flagged, once.
    incompatible = {**json.loads(after[0].value), "event_id": "bad-firmware", "firmware": "x" * 40, "temp_c": 95.0}
    after.append(Record(b"st-0001", json.dumps(incompatible).encode(), "quarantine:too_long", "bad-firmware"))
    oracle.produce(after)
    assert (second := oracle.ingest()) is not None
    assert second.returncode == 0, second.stderr[-3000:]

    silver = {row["event_id"]: row for row in oracle.table("silver")}
    assert len(silver) == 400
    assert all(silver[r.event_id]["firmware"] is None for r in before)
    assert all(silver[r.event_id]["firmware"] is not None for r in after[:-1])
    quarantined = oracle.table("quarantine")
    assert [(q["rule"], json.loads(q["value"])["event_id"]) for q in quarantined] == [("too_long", "bad-firmware")]

    # The fix: allow longer firmware strings; replaying the quarantine moves the record to silver, once.
    oracle.extra_fields = [{"name": "firmware", "type": "string", "max_length": 64}]
    run = oracle.cli("ingest", "replay-quarantine", "--entity", oracle.entity)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["replayed"] == 1
    # Again, through the library call the CLI makes, in the session's Spark (no second JVM to start).
    again = replay_quarantine(spark, oracle.settings(), entity=oracle.entity)
    assert again["replayed"] == 0, "the second replay finds nothing left to move"
    silver_ids = Counter(row["event_id"] for row in oracle.table("silver"))
    assert silver_ids["bad-firmware"] == 1
    assert [q["replayed"] for q in oracle.table("quarantine")] == [True]
    assert reconcile(spark, oracle.settings(), entity=oracle.entity)["balanced"]
    flags = Counter(a["event_id"] for a in oracle.gold("anomalies"))
    assert flags["bad-firmware"] == 1, "a replayed reading is flagged like any other, and only once"


def test_a_topic_recreated_under_the_lake_stops_ingest_with_one_clear_line(
    stack: LocalStack, spark: SparkSession
) -> None:
    """Kafka going back behind what the checkpoint read (the topic re-created, or its data reset) is data loss:
    ingest refuses with what happened and the fix, in one line, and writes nothing more."""
    oracle = Oracle(stack)
    oracle.produce(list(good_records("ev", 300, seed=11, start=recent_start(300, EV_SPACING_S))))
    oracle.ingest_in_session(spark)

    admin = AdminClient({"bootstrap.servers": stack.settings.kafka.bootstrap()})
    admin.delete_topics([oracle.topic])[oracle.topic].result(30)
    deadline = time.monotonic() + 60
    while True:  # the deletion finishes in the background; creating too soon is refused
        try:
            admin.create_topics([NewTopic(oracle.topic, num_partitions=3, replication_factor=3)])[oracle.topic].result(
                30
            )
            break
        except KafkaException:
            assert time.monotonic() < deadline, "the deleted topic never went away"
            time.sleep(1)
    oracle.produce(list(good_records("ev", 10, seed=12, start=recent_start(10, EV_SPACING_S))))

    second = oracle.ingest()
    assert second is not None
    assert second.returncode == 2, second.stderr[-3000:]
    # tierlake's own INFO lines and the JVM's start-up notes may come first; no stack trace, no query plan.
    *before, line = second.stderr.strip().splitlines()
    assert not [seen for seen in before if seen.lstrip().startswith("at ") or "Exception" in seen], before
    assert "Logical Plan" not in second.stderr
    assert f"tierlake: error: ingest {oracle.entity}: Kafka no longer holds what the lake expects" in line
    went_back = rf"partition {re.escape(oracle.topic)}-\d went back to offset \d+, behind the \d+ that the checkpoint"
    assert re.search(went_back, line)
    assert "Fix: restore Kafka's data" in line
    assert len(oracle.table("silver")) == 300  # nothing of the new topic was written


def test_gold_windows_and_anomaly_flags(stack: LocalStack, spark: SparkSession) -> None:
    oracle = Oracle(stack)
    oracle.spec = {**oracle.spec, "gold": "ev"}
    minute = (datetime.now(UTC) - timedelta(minutes=10)).replace(second=0, microsecond=0)
    samples = [  # (seconds after the minute, power_kw, status, temp_c)
        (0, 100.0, "charging", 30.0),
        (10, 100.0, "charging", 31.0),
        (20, 0.0, "idle", 30.0),
        (30, 100.0, "charging", 32.0),
        (70, 100.0, "charging", 95.0),  # overheating
        (80, 500.0, "charging", 30.0),  # power spike
    ]
    records = []
    for i, (offset_s, power, status, temp) in enumerate(samples):
        event = {
            "event_id": f"gold-{i}",
            "station_id": "st-9999",
            "connector": 1,
            "ts": (minute + timedelta(seconds=offset_s)).isoformat().replace("+00:00", "Z"),
            "power_kw": power,
            "voltage_v": 400.0,
            "current_a": power * 2.5,
            "soc_pct": 50.0,
            "temp_c": temp,
            "status": status,
        }
        records.append(Record(b"st-9999", json.dumps(event).encode(), "silver", f"gold-{i}"))
    produced = datetime.now(UTC)
    oracle.produce(records)
    oracle.ingest_in_session(spark)

    options = delta_storage_options(stack.settings.s3)
    root = f"s3://{stack.settings.s3.lake_bucket}/gold/{oracle.entity}"
    windows = DeltaTable(f"{root}_windows", storage_options=options).to_pyarrow_table().to_pylist()
    first = next(w for w in windows if w["window_minutes"] == 1 and w["window_start"].replace(tzinfo=UTC) == minute)
    # Held power: 100 kW for 10 s, 100 kW for 10 s, 0 for 10 s, then 100 kW until the next sample (capped at 60 s).
    assert first["samples"] == 4
    assert first["sessions"] == 2
    assert first["max_power_kw"] == 100.0
    assert first["mean_power_kw"] == 75.0
    assert first["energy_kwh"] == pytest.approx((100 * 10 + 100 * 10 + 0 + 100 * 40) / 3600, abs=1e-4)
    quarter = [w for w in windows if w["window_minutes"] == 15]
    assert sum(w["samples"] for w in quarter) == 6
    anomalies = DeltaTable(f"{root}_anomalies", storage_options=options).to_pyarrow_table().to_pylist()
    flagged = {a["event_id"]: (a["reason"], a["score"]) for a in anomalies}
    assert flagged == {"gold-4": ("overheating", 0.75), "gold-5": ("power_spike", pytest.approx(0.667, abs=1e-3))}
    # Each flag carries its commit time, after the reading was produced (how soon gold showed it).
    assert all(a["flagged_at"] is not None and a["flagged_at"].replace(tzinfo=UTC) > produced for a in anomalies)


def test_corpus_gold_packs_every_document_into_fixed_length_token_rows(
    stack: LocalStack, spark: SparkSession, tmp_path: Path
) -> None:
    oracle = Oracle(stack, base_entity="corpus")
    docs = list(good_records("corpus", 120, seed=12, start=recent_start(120, 5)))
    oracle.produce(docs)
    oracle.ingest_in_session(spark)

    uri = f"s3://{stack.settings.s3.lake_bucket}/gold/{oracle.entity}_tokens"
    rows = DeltaTable(uri, storage_options=delta_storage_options(stack.settings.s3)).to_pyarrow_table().to_pylist()
    assert rows, "token rows were written"
    assert {len(r["tokens"]) for r in rows} == {SEQ_LEN}
    ordered = sorted(rows, key=lambda r: r["seq_id"])  # documents span rows within a batch, never across
    texts = decode(np.concatenate([np.array(r["tokens"], np.int32) for r in ordered]))
    assert sorted(texts) == sorted(json.loads(d.value)["text"] for d in docs)
    held = {doc for r in rows for doc in r["doc_ids"]}
    assert held == {d.event_id for d in docs}
    # Spark's files (parquet-mr's pages, snappy) go through the loader's direct page reader, which reads them as
    # pyarrow does.
    options = delta_storage_options(stack.settings.s3)
    assert direct_row_groups(DeltaTable(uri, storage_options=options).file_uris(), options, tmp_path) > 0


def direct_row_groups(uris: list[str], options: dict[str, str], into: Path) -> int:
    """Row groups of ``uris`` whose token columns the direct page reader took, each checked against pyarrow."""
    source, taken = ArrowFileSource(options), 0
    for index, uri in enumerate(uris):
        local = into / f"{index}.parquet"
        with source.open(uri) as remote:
            local.write_bytes(remote.read())
        with io.FileIO(local) as handle:
            parquet = pq.ParquetFile(local)
            for rg in range(parquet.num_row_groups):
                direct = pages.read_row_group(handle.fileno(), parquet, rg, ["tokens", "pad", "_batch_id"])
                assert direct is not None, f"row group {rg} of {uri} was left to pyarrow"
                assert direct.equals(parquet.read_row_group(rg, columns=["tokens", "pad", "_batch_id"]))
                taken += 1
    return taken
