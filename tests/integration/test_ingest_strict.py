"""Ingestion never stops on a record and never stores a wrong value, on the real stack (Kafka, RGW, Spark+Delta).

Records are produced with confluent-kafka straight to a topic of the test's own (not through tierlake's producer):
the adversarial records found by outside testing as named cases, then arbitrary bytes and arbitrary JSON-shaped
records (hypothesis) mixed with good ones. Every record must land in exactly one of silver / quarantine / dropped
with a rule, reconcile must balance against what Kafka holds, and every silver value must be what the strict
reader (``pipelines.ingest.records``) reads from the record. An entity whose batch cannot commit is marked failed in
``ingest status`` while the other entity runs on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

from deltalake import DeltaTable
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from infra.stack import LocalStack
from pipelines.checks.reconcile import reconcile
from pipelines.ingest.records import judge_record
from pipelines.ingest.silver import silver_tables
from pipelines.ingest.stream import run_ingest_until_caught_up
from pipelines.synthetic.datasets import EV_SPACING_S, Record, good_records, recent_start
from tests.integration.test_ingest import REPO, Oracle
from tests.unit.test_records import ADVERSARIAL, JSON_VALUES
from tiers.s3 import delta_storage_options, s3_client

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

POISON = (  # the record that stopped ingestion for good: epoch milliseconds read as year 58899
    b'{"event_id":"x1","station_id":"st-1","connector":2,"ts":1796512953333,"power_kw":50,"status":"charging"}'
)


def _rows(oracle: Oracle, kind: str) -> dict[tuple[int, int], dict[str, Any]]:
    if kind == "bronze":
        uri = f"s3://{oracle.stack.settings.s3.lake_bucket}/bronze/{oracle.topic.replace('.', '_')}"
        table = DeltaTable(uri, storage_options=delta_storage_options(oracle.stack.settings.s3))
        rows: list[dict[str, Any]] = table.to_pyarrow_table().to_pylist()
    else:
        rows = oracle.table(kind) if _exists(oracle, kind) else []
    return {(row["partition"], row["offset"]): row for row in rows}


def _exists(oracle: Oracle, kind: str) -> bool:
    uri = getattr(silver_tables(oracle.settings(), oracle.entity), kind).replace("s3a://", "", 1)
    bucket, prefix = uri.split("/", 1)
    listing = s3_client(oracle.stack.settings.s3).list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/_delta_log/")
    return bool(listing.get("KeyCount"))


def check_every_record(oracle: Oracle, spark: SparkSession) -> dict[str, int]:
    """Every produced record in exactly one output, with the strict reader's verdict and values; reconcile
    balanced against Kafka. Returns the rows per outcome."""
    entity = oracle.settings().entities[oracle.entity]
    bronze = _rows(oracle, "bronze")
    outputs = {kind: _rows(oracle, kind) for kind in ("silver", "quarantine", "dropped")}
    assert set(bronze) == set(oracle.expect), "bronze holds every record Kafka acknowledged, once"
    for where, record in oracle.expect.items():
        landed = [kind for kind, rows in outputs.items() if where in rows]
        assert len(landed) == 1, (where, record, landed)
        verdict = judge_record(record.value, record.key, entity, ingest_time=bronze[where]["ingest_time"])
        kind = landed[0]
        if kind == "quarantine":
            row = outputs[kind][where]
            assert row["rule"] == (verdict.rule or "late_event"), (record.value, row["rule"], row["error"])
            assert row["value"] == record.value
            continue
        assert verdict.rule is None, (record.value, kind, verdict)
        if kind == "silver":
            row = outputs[kind][where]
            assert verdict.record is not None
            assert {name: row[name] for name in entity.field_names} == verdict.record, record.value
            assert dict(row["extra_fields"] or []) == (verdict.extra or {}), record.value
    report = reconcile(spark, oracle.settings(), entity=oracle.entity)
    assert report["balanced"], json.dumps(report, indent=2)
    assert all(k["state"] == "caught_up" for k in report["kafka"]), report["kafka"]
    return {kind: len(rows) for kind, rows in outputs.items()}


def _good(count: int, seed: int) -> list[Record]:
    return list(good_records("ev", count, seed=seed, start=recent_start(count, EV_SPACING_S)))


def test_adversarial_records_never_stop_ingestion_and_land_under_their_rule(
    stack: LocalStack, spark: SparkSession
) -> None:
    oracle = Oracle(stack)
    good = _good(40, seed=31)
    bad = [Record(b"st-1", value, f"quarantine:{rule}", name) for name, (value, rule) in ADVERSARIAL.items()]
    mixed = [*good[:20], Record(b"st-1", POISON, "quarantine:wrong_type", "x1"), *bad, *good[20:]]
    oracle.produce(mixed)
    run = oracle.ingest()  # the real entry point, `tierlake ingest run`
    assert run is not None
    assert run.returncode == 0, run.stderr[-3000:]
    counts = check_every_record(oracle, spark)
    assert counts["silver"] == 40
    rules = sorted(row["rule"] for row in oracle.table("quarantine"))
    assert rules == sorted([*(rule for _, rule in ADVERSARIAL.values()), "wrong_type"])

    # Each commit says which query, batch and offsets wrote it (Delta's userMetadata).
    uri = silver_tables(oracle.settings(), oracle.entity).silver.replace("s3a://", "s3://", 1)
    history = DeltaTable(uri, storage_options=delta_storage_options(stack.settings.s3)).history()
    appends = [json.loads(h["userMetadata"]) for h in history if h.get("operation") == "WRITE"]
    assert appends, history
    assert appends[-1]["query"] == f"ingest_{oracle.entity}"
    assert set(appends[-1]["offsets"][oracle.topic]) <= {"0", "1", "2"}


RECORDS = st.lists(
    st.one_of(
        st.binary(max_size=300).map(lambda b: ("bytes", b)),
        st.dictionaries(
            st.sampled_from(["event_id", "station_id", "connector", "ts", "power_kw", "status", "temp_c", "x"]),
            JSON_VALUES,
            max_size=8,
        ).map(lambda d: ("json", json.dumps(d).encode())),
        st.just(("good", b"")),
    ),
    min_size=5,
    max_size=25,
)


@settings(
    max_examples=3,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(records=RECORDS, keyless=st.integers(min_value=0, max_value=3))
def test_fuzzed_batches_never_stop_the_stream_and_every_record_is_accounted(
    stack: LocalStack, spark: SparkSession, records: list[tuple[str, bytes]], keyless: int
) -> None:
    oracle = Oracle(stack)
    good = iter(_good(len(records), seed=uuid.uuid4().int % 10_000))
    batch = []
    for i, (kind, value) in enumerate(records):
        record = next(good)
        key = None if i < keyless else b"st-1"
        batch.append(record if kind == "good" else Record(key, value, "?", f"fuzz-{i}"))
    oracle.produce(batch)
    run_ingest_until_caught_up(spark, oracle.settings(), entity=oracle.entity)
    check_every_record(oracle, spark)


def test_an_entity_whose_batch_cannot_commit_is_marked_failed_and_the_other_runs_on(stack: LocalStack) -> None:
    """A table the driver cannot write (an unreadable Delta log under silver) fails every batch of that entity:
    after its restarts it is marked failed with the batch, the offsets and the reason, the other entity keeps
    ingesting, `ingest status` exits 7 naming it, and reconcile reports the records it holds back as stuck."""
    healthy, broken = Oracle(stack), Oracle(stack)
    env = {**healthy.env(), "TIERLAKE_KAFKA__TOPICS": json.dumps([*healthy.topics, broken.topics[-1]])}
    entities = json.loads(healthy.env()["TIERLAKE_ENTITIES"]) | json.loads(broken.env()["TIERLAKE_ENTITIES"])
    env["TIERLAKE_ENTITIES"] = json.dumps(entities)
    silver = silver_tables(broken.settings(), broken.entity).silver.replace("s3a://", "", 1)
    bucket, prefix = silver.split("/", 1)
    s3_client(stack.settings.s3).put_object(
        Bucket=bucket, Key=f"{prefix}/_delta_log/00000000000000000000.json", Body=b"{not a delta log"
    )
    healthy.produce(_good(30, seed=41))
    broken.produce(_good(30, seed=42))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "tierlake.cli", "--profile", "ci", *args]
        return subprocess.run(argv, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, check=False)

    started = cli("ingest", "start", "--entity", healthy.entity, "--entity", broken.entity, "--trigger-s", "1")
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        deadline = time.monotonic() + 300
        while True:
            status = cli("ingest", "status", "--json")
            state = json.loads(status.stdout)
            assert state["running"], f"the driver died: {status.stderr} (log {state['log']})"
            failed = state.get("failed", {})
            if broken.entity in failed and _exists(healthy, "silver") and len(healthy.table("silver")) == 30:
                break
            assert time.monotonic() < deadline, (status.stdout, status.stderr)
            time.sleep(2)
        assert status.returncode == 7, status.stderr
        assert f"ingest {broken.entity} FAILED at batch" in status.stderr
        failure = failed[broken.entity]
        assert failure["batch_id"] == 0
        assert sum(hi - lo + 1 for lo, hi in failure["offsets"].values()) == 30
        assert failure["error"]
        assert json.loads(status.stdout)["running"] is True, "the driver runs on for the healthy entity"
        healthy.produce(_good(10, seed=43))
        while len(healthy.table("silver")) < 40:
            assert time.monotonic() < deadline, "the healthy entity kept ingesting"
            time.sleep(2)
    finally:
        stopped = cli("ingest", "stop")
        assert stopped.returncode == 0, stopped.stderr
    s3_client(stack.settings.s3).delete_object(Bucket=bucket, Key=f"{prefix}/_delta_log/00000000000000000000.json")
    verdict = cli("ingest", "reconcile", "--entity", broken.entity, "--stuck-after-s", "1", "--json")
    assert verdict.returncode == 6, verdict.stderr[-2000:]
    kafka = json.loads(verdict.stdout)[0]["kafka"]
    assert sum(k["behind"] for k in kafka) == 30
    assert {k["state"] for k in kafka if k["behind"]} == {"stuck"}
