"""`dag.test()` of every DAG against the real local stack (Ceph RGW, Spark, Kafka, the virtual tape library).

Each DAG runs in this process with a sqlite metadata DB under the run dir; its tasks run the `tierlake` CLI as
subprocesses with this process's environment, so they reach the same stack. Retries are switched off here so a
failing task fails the run at once instead of waiting for its retry delay.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from pipelines.lake import maintenance
from tests.integration.test_ingest import ingest_in_session
from tests.lake_tables import small_table
from tierlake.config import Settings, load_settings
from tiers.s3 import delta_storage_options, s3_client
from training.lineage_store import LineageStore, default_uri

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

ROOT = Path(__file__).resolve().parents[2]
_HOME = load_settings("ci").run_dir / "airflow"
os.environ.setdefault("AIRFLOW_HOME", str(_HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_HOME / 'airflow.db'}")

TIERLAKE = str(Path(sys.executable).with_name("tierlake"))


def _cli(*args: str, ok: tuple[int, ...] = (0,)) -> Any:
    done = subprocess.run([TIERLAKE, *args], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode in ok, f"tierlake {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1]) if "--json" in args else done.stdout


@pytest.fixture(scope="module")
def airflow_dags(settings: Settings) -> Iterator[dict[str, Any]]:
    """A migrated sqlite metadata DB under the run dir (the stack fixture wiped it), and the parsed DAGs.

    ``dag.test()`` runs tasks in this process and installs Airflow's signal handlers here; they are put back
    afterwards, so later tests (and processes they fork) see the default SIGTERM again.
    """
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    _HOME.mkdir(parents=True, exist_ok=True)
    migrate = subprocess.run(
        [str(Path(sys.executable).with_name("airflow")), "db", "migrate"], capture_output=True, text=True, check=False
    )
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    from airflow.dag_processing.dagbag import DagBag  # noqa: PLC0415 - after AIRFLOW_HOME is set

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    for dag in bag.dags.values():
        for task in dag.tasks:
            task.retries = 0
    yield dict(bag.dags)
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def _run(dag: Any, conf: dict[str, Any] | None = None) -> dict[str, str]:
    """dag.test(); returns task id (with map index) -> state."""
    run = dag.test(run_conf=conf)
    from airflow.models.taskinstance import TaskInstance  # noqa: PLC0415
    from airflow.utils.session import create_session  # noqa: PLC0415

    with create_session() as session:
        tis = session.query(TaskInstance).filter(TaskInstance.run_id == run.run_id, TaskInstance.dag_id == dag.dag_id)
        return {f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: str(ti.state) for ti in tis}


def _small_table(settings: Settings, prefix: str, appends: int) -> str:
    return small_table(settings, prefix, appends=appends, rows=20)


def test_lake_maintenance_compacts_vacuums_checkpoints_and_exports_stats(
    airflow_dags: dict[str, Any], settings: Settings
) -> None:
    table = _small_table(settings, "dag_maint", appends=5)
    assert len(maintenance.data_objects(settings, table)) == 5
    states = _run(
        airflow_dags["lake_maintenance"], {"tables": [table], "retention_hours": 0, "allow_short_retention": True}
    )
    assert states == {t: "success" for t in ("optimize", "vacuum", "checkpoint", "export_stats", "lineage")}
    uri = f"s3://{settings.s3.lake_bucket}/{table}"
    options = delta_storage_options(settings.s3)
    kept = LineageStore(default_uri(settings.s3.lake_bucket), options).read(table_uri=uri).to_pylist()
    # VACUUM leaves no commit here (Delta logs VACUUM START/END only where vacuum logging is on): OPTIMIZE does
    assert [r["operation"] for r in kept if r["kind"] == "maintenance"] == ["OPTIMIZE"]
    newest = DeltaTable(uri, storage_options=options).version()
    assert sorted({r["version"] for r in kept}) == list(range(newest + 1))  # every commit of the table, in lineage
    stats = maintenance.table_stats(settings, table)
    assert (stats.files, stats.rows) == (1, 100)  # compacted, every row kept
    assert len(maintenance.data_objects(settings, table)) == 1  # the 5 small files were vacuumed
    pointer = s3_client(settings.s3).get_object(
        Bucket=settings.s3.lake_bucket, Key=f"{table}/_delta_log/_last_checkpoint"
    )
    assert json.loads(pointer["Body"].read())["version"] == stats.version
    assert f'tierlake_table_files{{table="{table}"}} 1.0' in settings.maintenance.metrics_file.read_text()


def test_lake_maintenance_refuses_a_short_retention_without_the_override(
    airflow_dags: dict[str, Any], settings: Settings
) -> None:
    table = _small_table(settings, "dag_short", appends=2)
    # Every param is named: in one process, a DAG object keeps the params of its previous test run.
    states = _run(
        airflow_dags["lake_maintenance"], {"tables": [table], "retention_hours": 1, "allow_short_retention": False}
    )
    assert states["optimize"] == "success"
    assert states["vacuum"] == "failed"
    assert len(maintenance.data_objects(settings, table)) == 3  # compacted (1 new file), the 2 small ones kept


def test_mirror_dag_copies_tables_and_checkpoints_verified(airflow_dags: dict[str, Any], settings: Settings) -> None:
    table = _small_table(settings, "dag_mirror", appends=3)
    client = s3_client(settings.s3)
    prefix = settings.mirror.checkpoint_prefixes[0]
    client.put_object(Bucket=settings.s3.lake_bucket, Key=f"{prefix}run-1/step-10.pt", Body=b"\x01" * 4096)
    states = _run(airflow_dags["mirror"], {"tables": [table]})
    assert states == {"mirror_tables": "success", "mirror_checkpoints": "success"}
    options = delta_storage_options(settings.s3)
    source = DeltaTable(maintenance.rust_uri(settings, table), storage_options=options).to_pyarrow_table()
    copy = DeltaTable(f"s3://{settings.mirror.bucket}/{table}", storage_options=options).to_pyarrow_table()
    assert sorted(copy.to_pylist(), key=str) == sorted(source.to_pylist(), key=str)
    body = client.get_object(Bucket=settings.mirror.bucket, Key=f"{prefix}run-1/step-10.pt")["Body"].read()
    assert body == b"\x01" * 4096


def test_cache_warmup_pins_the_version_it_is_given(airflow_dags: dict[str, Any], settings: Settings) -> None:
    table = _small_table(settings, "dag_warm", appends=3)
    states = _run(airflow_dags["cache_warmup"], {"table": table, "version": 1})
    assert states == {"pinned_version": "success", "warm": "success"}
    stats = _cli("cache", "stats", "--json")
    assert stats["entries"] >= 2  # the two data files of version 1 (and its log)
    assert stats["pinned_objects"] >= 2


def _archive_policy(monkeypatch: pytest.MonkeyPatch, table: str) -> None:
    rule: dict[str, str | int] = {"partition_column": "day", "key_column": "station_id", "cold_by": "age"}
    policy = {table: rule | {"cold_after_days": 30, "retention_days": 0}}
    monkeypatch.setenv("TIERLAKE_ARCHIVE__TABLES", json.dumps(policy))


def test_tiering_archives_cold_partitions_to_both_sites_and_verifies(
    airflow_dags: dict[str, Any], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = f"scratch/dag_tier_{uuid.uuid4().hex[:8]}"
    today = time.strftime("%Y-%m-%d")
    for day in ("2020-01-01", "2020-01-02", today):
        batch = pa.table({"day": [day] * 10, "station_id": [f"st-{i}" for i in range(10)], "kwh": [1.0] * 10})
        write_deltalake(
            maintenance.rust_uri(settings, table),
            batch,
            mode="append",
            partition_by=["day"],
            storage_options=delta_storage_options(settings.s3),
        )
    _archive_policy(monkeypatch, table)
    assert len(_cli("archive", "select", "--table", table, "--json")["partitions"]) == 2
    states = _run(airflow_dags["tiering"], {"tables": [table], "purge": False})
    assert set(states.values()) == {"success"}, states
    assert _cli("archive", "select", "--table", table, "--json")["partitions"] == []  # both archived
    verified = _cli("archive", "verify", "--json")
    assert verified["bad"] == []
    assert verified["files_checked"] >= 4  # 2 partitions x 2 copies (one per site)
    assert len(verified["cartridges"]) >= 2


def test_retention_dag_enforces_and_reports(airflow_dags: dict[str, Any]) -> None:
    states = _run(airflow_dags["retention"])
    assert states == {"enforce_retention": "success", "verify_copies": "success"}
    report = _cli("archive", "retention", "--report-only", "--json")
    assert {"held", "expiring", "became_purgeable"} <= set(report)


def test_ingest_supervisor_restarts_a_killed_driver_and_announces_gold(
    airflow_dags: dict[str, Any], settings: Settings, spark: SparkSession
) -> None:
    _cli("produce", "ev", "--events", "40", "--json")
    _cli("produce", "corpus", "--events", "5", "--json")
    # Bronze tables must exist before the streaming driver starts: `ingest run`'s library call, in this session's
    # Spark (no JVM of its own to start; the CLI's own run is test_cli's and the README test's).
    ingest_in_session(spark, settings, list(settings.entities))
    _cli("ingest", "start")
    try:
        killed = _cli("ingest", "status", "--json")["pid"]
        os.kill(killed, signal.SIGKILL)
        while _cli("ingest", "status", "--json", ok=(0, 3))["running"]:
            time.sleep(0.5)
        states = _run(airflow_dags["ingest_supervisor"])
        assert states["health"] == "success"
        assert states["restart_if_dead"] == "success"
        assert states["announce_gold"] == "success"  # gold/corpus_tokens has a first version to announce
        status = _cli("ingest", "status", "--json")
        assert status["running"] is True
        assert status["pid"] != killed
        again = _run(airflow_dags["ingest_supervisor"])  # alive now: nothing to restart
        assert again["restart_if_dead"] == "skipped"
    finally:
        _cli("ingest", "stop")


def test_tiering_with_no_params_moves_conf_defaults_and_purges_nothing(
    airflow_dags: dict[str, Any], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of the box (conf/base.yaml's archive.tables, no run params), on a lake bucket of the test's own: the
    written tables' partitions older than each default's cold_after_days go to tape, the younger ones and the
    tables not written yet are left alone, and the purge stays a dry run (every row still in the lake)."""
    defaults = load_settings("ci").archive.tables
    assert {t: p.cold_after_days for t, p in defaults.items()} == {
        "silver/ev": 30,
        "silver/corpus": 30,
        "gold/ev_windows": 90,
        "gold/ev_anomalies": 90,
    }
    lake = f"lake-tier-{uuid.uuid4().hex[:8]}"
    s3_client(settings.s3).create_bucket(Bucket=lake)
    monkeypatch.setenv("TIERLAKE_S3__BUCKETS", json.dumps([*settings.s3.buckets, lake]))
    monkeypatch.setenv("TIERLAKE_S3__LAKE_BUCKET", lake)
    days = {ago: (datetime.now(UTC).date() - timedelta(days=ago)) for ago in (100, 45, 0)}
    options = delta_storage_options(settings.s3)
    for table in ("silver/ev", "gold/ev_windows"):  # silver/corpus and gold/ev_anomalies: not written yet
        rows = pa.table(
            {
                "event_date": [d for d in days.values() for _ in range(5)],
                "station_id": [f"st-{i}" for _ in days for i in range(5)],
                "power_kw": [1.0] * 5 * len(days),
            }
        )
        write_deltalake(f"s3://{lake}/{table}", rows, partition_by=["event_date"], storage_options=options)
    cold = {"silver/ev": [100, 45], "gold/ev_windows": [100]}  # by each default's cold_after_days
    for table, agos in cold.items():
        planned = _cli("archive", "select", "--table", table, "--json")["partitions"]
        assert sorted(p["partition"] for p in planned) == sorted(f"event_date={days[a]}" for a in agos), table

    states = _run(airflow_dags["tiering"], {"tables": [], "purge": False})
    assert set(states.values()) == {"success"}, states
    # checkpoints: `tierlake checkpoint archive`, a no-op while conf/ leaves checkpoint.tape off
    assert {k.partition("[")[0] for k in states} == {"tables", "select", "archive", "checkpoints", "verify", "purge"}
    assert sum(k.startswith("archive[") for k in states) == len(defaults)  # every default table, mapped
    for table in cold:
        assert _cli("archive", "select", "--table", table, "--json")["partitions"] == [], table  # all archived
        assert DeltaTable(f"s3://{lake}/{table}", storage_options=options).to_pyarrow_table().num_rows == 15
    assert _cli("archive", "verify", "--json")["bad"] == []
