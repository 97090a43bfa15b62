"""Pure parts of ingestion: entity schemas from conf, the bad-input generator's oracle, the rules' README table."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from pipelines.ingest.rules import RULES
from pipelines.synthetic.datasets import BAD_KINDS, ev_event, ev_stream, good_records
from tierlake.config import load_settings
from tierlake.entities import build_entities
from tierlake.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EV = {
    "topic": "ev.telemetry",
    "event_id": "event_id",
    "event_time": "ts",
    "key_field": "station_id",
    "watermark_s": 60,
    "max_bytes": 1024,
    "fields": [
        {"name": "event_id", "type": "string", "required": True},
        {"name": "station_id", "type": "string", "required": True},
        {"name": "ts", "type": "timestamp", "required": True},
    ],
}


def test_entities_build_from_conf_shape() -> None:
    entities = build_entities({"ev": EV}, "conf/base.yaml", {"ev.telemetry"})
    assert entities["ev"].field_names == ("event_id", "station_id", "ts")
    assert entities["ev"].future_tolerance_s == 3600


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"topic": "nope"}, r"entities\.ev\.topic = 'nope' is invalid: not a topic of kafka\.topics"),
        ({"event_time": "station_id"}, r"entities\.ev\.event_time = 'station_id' is invalid: must be a timestamp"),
        ({"event_id": "missing"}, r"entities\.ev\.event_id = 'missing' is invalid: must name a required field"),
        ({"watermark_s": 0}, r"entities\.ev\.watermark_s = 0 is invalid: must be an integer >= 1"),
        ({"fields": [{"name": "x", "type": "decimal"}]}, r"fields\[0\]\.type = 'decimal' is invalid: unknown type"),
        ({"colour": "red"}, r"entities\.ev = \['colour'\] is invalid: unknown keys"),
    ],
)
def test_bad_entity_specs_name_key_value_and_fix(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_entities({"ev": {**EV, **change}}, "conf/base.yaml", {"ev.telemetry"})


def test_two_entities_on_one_topic_are_refused() -> None:
    """One ingest query per topic writes its entity's tables (and owns the checkpoint beside bronze)."""
    with pytest.raises(ConfigError, match=r"two entities read topic 'ev.telemetry'. Fix: give each its own topic"):
        build_entities({"ev": EV, "ev_copy": EV}, "conf/base.yaml", {"ev.telemetry"})


def test_generators_are_pure_functions_of_the_seed() -> None:
    assert list(good_records("ev", 50, seed=1)) == list(good_records("ev", 50, seed=1))
    assert list(good_records("ev", 50, seed=1)) != list(good_records("ev", 50, seed=2))
    assert list(ev_stream(300, bad_fraction=0.1, seed=4)) == list(ev_stream(300, bad_fraction=0.1, seed=4))


def test_bad_stream_cycles_through_every_kind_with_its_outcome() -> None:
    records = list(ev_stream(2000, bad_fraction=0.05, seed=9))
    outcomes = Counter(r.expect for r in records)
    for kind in BAD_KINDS:
        if kind == "unknown_fields":
            continue
        prefix = "dropped" if kind == "duplicate_event_id" else "quarantine"
        assert outcomes[f"{prefix}:{kind}"] > 0, kind
    good_ids = [r.event_id for r in records if r.expect == "silver"]
    assert len(good_ids) == len(set(good_ids)), "every good event_id is unique"
    duplicates = {r.event_id for r in records if r.expect == "dropped:duplicate_event_id"}
    assert duplicates <= set(good_ids), "a duplicate repeats an event that was sent"


def test_ev_faults_are_injected() -> None:
    rng = random.Random(1)
    events = [ev_event(rng, i) for i in range(5000)]
    assert any(e["temp_c"] > 80 for e in events)
    assert any(e["status"] == "dropout" for e in events)
    assert any(e["power_kw"] > 400 for e in events)
    assert all(json.dumps(e) for e in events)


def test_readme_documents_every_rule_and_outcome() -> None:
    readme = (REPO / "README.md").read_text()
    for name in {*RULES, *BAD_KINDS, "late_event"} - {"unknown_fields"}:
        assert f"`{name}`" in readme, f"README's ingestion rules table does not document {name}"
    assert "`extra_fields`" in readme


# What Spark's Kafka source said when a local stack's Kafka was reset under a lake that kept its checkpoint
# (the query plan that follows it in the real message is cut here).
SPARK_OFFSETS_BACK = (
    "[STREAM_FAILED] Query [id = 97b5, runId = 04f1] terminated with exception: Some data may have been lost "
    "because they are not available in Kafka any more;\neither the data was aged out by Kafka or the topic may have "
    "been deleted before all the data in the\ntopic was processed.\nIf you don't want your streaming query to fail "
    "on such cases, set the source option failOnDataLoss to false.\nReason: Partition ev.telemetry-1 offset was "
    "changed from 4531 to 561.\nThis could be either 1) a user error ...\n=== Streaming Query ===\nLogical Plan:\n"
)


def test_kafka_data_loss_becomes_one_clear_error_with_the_fix() -> None:
    from pipelines.ingest.stream import data_loss  # noqa: PLC0415

    settings = load_settings("ci", conf_dir=REPO / "conf", env={})
    error = data_loss(RuntimeError(SPARK_OFFSETS_BACK), settings, entity="ev")
    assert error is not None
    message = str(error)
    assert "partition ev.telemetry-1 went back to offset 561, behind the 4531 that the checkpoint" in message
    assert "bronze/_checkpoints/ev_telemetry" in message
    assert "Fix: restore Kafka's data" in message
    assert "\n" not in message
    assert "Logical Plan" not in message

    aged = SPARK_OFFSETS_BACK.replace(
        "Partition ev.telemetry-1 offset was changed from 4531 to 561.", "Cannot fetch offset 12 of ev.telemetry-0."
    )
    aged_message = str(data_loss(RuntimeError(aged), settings, entity="ev"))
    assert "are gone (Cannot fetch offset 12 of ev.telemetry-0.)" in aged_message
    assert "retention" in aged_message

    assert data_loss(RuntimeError("[STREAM_FAILED] something else"), settings, entity="ev") is None
    assert data_loss(None, settings, entity="ev") is None


def test_an_unexpected_error_prints_its_first_line_only() -> None:
    from tierlake.errors import first_line  # noqa: PLC0415

    assert first_line(RuntimeError(SPARK_OFFSETS_BACK)).endswith("not available in Kafka any more; ...")
    assert first_line(RuntimeError("short")) == "short"
    assert first_line(RuntimeError("x" * 500)) == "x" * 400 + " ..."
    assert first_line(RuntimeError("")) == ""
    assert first_line(None) == ""


def test_py4j_wrappers_give_way_to_the_error_inside() -> None:
    from tierlake.errors import first_line  # noqa: PLC0415

    proxy = (
        "An exception was raised by the Python Proxy. Return Message: Traceback (most recent call last):\n"
        '  File "x.py", line 1, in handle\n'
        "py4j.protocol.Py4JJavaError: An error occurred while calling z:io.delta.tables.DeltaTable.isDeltaTable.\n"
        ": org.apache.spark.SparkException: [FAILED_READ_FILE.NO_HINT] Encountered error while reading file s3a://b/k\n"
        "\tat org.apache.spark.X"
    )
    assert first_line(RuntimeError(proxy)).startswith("org.apache.spark.SparkException: [FAILED_READ_FILE.NO_HINT]")
    python_only = "An exception was raised by the Python Proxy. Return Message: Traceback\n  File x\nValueError: bad"
    assert first_line(RuntimeError(python_only)) == "ValueError: bad ..."


def test_gold_runs_at_least_every_ten_seconds_apart_unless_told_otherwise() -> None:
    from pipelines.ingest.driver import gold_trigger  # noqa: PLC0415 - pyspark-free, but beside the queries

    assert gold_trigger(2.0, None) == 60.0, "a 2 s ingest trigger must not make gold's MERGE run every 2 s"
    assert gold_trigger(90.0, None) == 90.0, "gold never runs more often than ingestion"
    assert gold_trigger(2.0, 4.0) == 4.0, "an explicit --gold-trigger-s wins"
