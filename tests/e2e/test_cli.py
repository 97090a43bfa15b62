"""The `tierlake` command as a user runs it: exit codes, JSON for scripts, one-line errors, the main job path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from infra.stack import LocalStack
from pipelines.synthetic.demo import summary, topic_record_count
from tiers.s3 import delta_storage_options

REPO = Path(__file__).resolve().parents[2]


def _tierlake(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "TIERLAKE_PROFILE": "ci", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tierlake.cli", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_config_show_masks_secrets() -> None:
    result = _tierlake(
        "config", "show", "--json", env={"TIERLAKE_S3__ACCESS_KEY": "AKE2E", "TIERLAKE_S3__SECRET_KEY": "topsecret-e2e"}
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["profile"] == "ci"
    assert shown["s3"]["secret_key"] == "****"
    assert shown["s3"]["access_key"] == "****"
    assert "topsecret-e2e" not in result.stdout + result.stderr


def test_half_given_credentials_are_refused() -> None:
    result = _tierlake("config", "show", env={"TIERLAKE_S3__SECRET_KEY": "only-the-secret"})
    assert result.returncode == 2
    assert "s3.secret_key is set (environment variable TIERLAKE_S3__SECRET_KEY) but s3.access_key is not" in (
        result.stderr
    )
    assert "only-the-secret" not in result.stderr


def test_bad_config_is_one_line_with_the_fix_and_no_traceback() -> None:
    result = _tierlake("config", "show", env={"TIERLAKE_KAFKA__NODES": "5"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("tierlake: error: environment variable TIERLAKE_KAFKA__NODES: kafka.nodes = 5")
    assert "Fix:" in result.stderr


def test_bad_flag_value_is_refused_by_the_parser() -> None:
    result = _tierlake("stack", "up", "--kafka-nodes", "2")
    assert result.returncode == 2
    assert "invalid choice: 2" in result.stderr


def test_stack_status_json_lists_pid_port_health(stack: LocalStack) -> None:
    result = _tierlake("stack", "status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads(result.stdout)
    assert status["healthy"] is True
    for service in status["services"]:
        assert {"service", "pid", "port", "health"} <= set(service)
        assert service["health"] == "ok"
    kafka = [s for s in status["services"] if s["service"].startswith("kafka-")]
    assert [s["port"] for s in kafka] == [19192, 19202, 19212]


def test_produce_then_ingest_run_lands_every_record_of_the_topic(stack: LocalStack) -> None:
    produced = _tierlake("produce", "ev", "--events", "700", "--bad-fraction", "0.05", "--json")
    assert produced.returncode == 0, produced.stderr
    summary = json.loads(produced.stdout.strip().splitlines()[-1])
    assert summary["failed"] == 0
    assert summary["acknowledged"] == summary["sent"] >= 700  # a duplicate bad record is sent twice

    in_topic = topic_record_count(stack.settings, "ev.telemetry")
    ingested = _tierlake("ingest", "run", "--entity", "ev", "--json")
    assert ingested.returncode == 0, ingested.stderr[-2000:]
    report = json.loads(ingested.stdout.strip().splitlines()[-1])["ev"]
    assert report["bronze"] == in_topic
    assert report["silver"] + report["quarantine"] + report["dropped"] == in_topic
    assert report["quarantine"] > 0


def test_demo_runs_the_main_job_and_fills_every_part_of_its_report(stack: LocalStack) -> None:
    """The README's main command (`make demo` runs it) on the running stack, its JSON report read back."""
    result = _tierlake("demo", "--events", "1000", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["reconciliation"]["ev"]["balanced"]
    assert report["produced"]["ev"]["failed"] == report["produced"]["corpus"]["failed"] == 0
    for entity in ("ev", "corpus"):
        fresh = report["freshness_kafka_to_silver"][entity]
        assert fresh["rows"] >= report["produced"][entity]["acknowledged"] * 0.9, fresh  # bad records excepted
        assert 0 < fresh["p50_s"] <= fresh["p99_s"]
    # Injected faults: 71 of 4,929 EV readings were flagged in one 5,000-record demo, so 1,000 give some.
    assert report["freshness_kafka_to_anomaly_flag"]["ev"]["rows"] > 0
    top = report["top_anomalies"]
    assert top
    assert all(isinstance(a["flagged_at"], str) and a["reason"] for a in top)
    assert sum(report["quarantine_by_rule"]["ev"].values()) == report["tables"]["ev"]["quarantine"]
    text = summary(report)  # what `make demo` prints instead of the JSON
    assert text.startswith("tierlake demo: OK")
    assert f"silver {report['tables']['ev']['silver']}, quarantine" in text
    assert "reconciliation: balanced" in text
    # The short lifecycle (issue 25): silver/ev compacted to one file per day at most, tokens read by the loader.
    life = report["lifecycle"]
    assert life["files_per_day_after_optimize"]
    assert all(n == 1 for n in life["files_per_day_after_optimize"].values()), life
    assert life["copies_bad"] == 0
    assert report["trainer_sample"]["batches"] > 0
    for user in ("data engineer:", "trainer:", "compliance:"):
        assert user in text


def test_unknown_entity_is_a_clear_error(stack: LocalStack) -> None:
    result = _tierlake("ingest", "run", "--entity", "no_such")
    assert result.returncode == 2
    assert "entity 'no_such' is not in entities" in result.stderr
    assert "Traceback" not in result.stderr


def test_ingest_start_status_stop_streams_new_records_into_silver(stack: LocalStack) -> None:
    settings = stack.settings
    uri = f"s3://{settings.s3.lake_bucket}/silver/corpus"

    def silver_rows() -> int:
        try:
            return int(DeltaTable(uri, storage_options=delta_storage_options(settings.s3)).to_pyarrow_table().num_rows)
        except TableNotFoundError:
            return 0

    before = silver_rows()
    started = _tierlake("ingest", "start", "--entity", "corpus", "--trigger-s", "2")
    assert started.returncode == 0, started.stderr
    try:
        assert _tierlake("ingest", "status", "--json").returncode == 0
        second = _tierlake("ingest", "run", "--entity", "corpus")
        assert second.returncode == 2, "a second writer must refuse while the streaming driver holds the lease"
        assert "owned by writer" in second.stderr
        produced = _tierlake("produce", "corpus", "--events", "40", "--json")
        assert produced.returncode == 0, produced.stderr
        deadline = time.monotonic() + 300
        while silver_rows() < before + 40 and time.monotonic() < deadline:
            time.sleep(2)
        assert silver_rows() == before + 40
    finally:
        stopped = _tierlake("ingest", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "ingestion stopped" in stopped.stdout
    assert _tierlake("ingest", "status", "--json").returncode == 3


def test_wrong_s3_keys_are_one_line_naming_the_endpoint_for_every_s3_command(stack: LocalStack) -> None:
    wrong = {"TIERLAKE_S3__ACCESS_KEY": "NOSUCHKEY0000", "TIERLAKE_S3__SECRET_KEY": "not-the-secret-e2e"}
    commands = [
        ("ingest", "run", "--entity", "ev"),
        ("ingest", "reconcile", "--entity", "ev"),
        ("ingest", "replay-quarantine", "--entity", "ev"),
        ("table", "history", "silver/ev"),
        ("cache", "warm", "silver/ev"),
        ("archive", "verify"),
    ]
    for command in commands:
        result = _tierlake(*command, env=wrong)
        assert result.returncode == 2, (command, result.stderr)
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith(f"tierlake: error: the S3 keys were refused by {stack.settings.s3.endpoint}"), line
        assert "InvalidAccessKeyId" in line
        assert "Fix: set TIERLAKE_S3__ACCESS_KEY" in line
        assert "not-the-secret-e2e" not in result.stderr


def test_bad_arguments_are_refused_before_any_work() -> None:
    for args, expected in [
        (("ingest", "replay-quarantine", "--entity", "ev", "--rule", "nosuch_rule"), "invalid choice: 'nosuch_rule'"),
        (("ingest", "start", "--trigger-s", "-1"), "-1.0 must be a finite number above 0"),
        (("--profile", "", "ingest", "status"), "--profile '' is empty"),
    ]:
        result = _tierlake(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert expected in result.stderr, result.stderr


def test_help_lists_every_exit_code() -> None:
    from tierlake.commands import ExitCode  # noqa: PLC0415

    shown = _tierlake("--help").stdout
    for code in ExitCode:
        assert f"  {code.value}  {code.name.lower()}: " in shown, code


def test_vacuum_is_a_dry_run_unless_told_to_execute() -> None:
    shown = _tierlake("table", "vacuum", "--help").stdout
    assert "--execute" in shown
    assert "--dry-run" not in shown
