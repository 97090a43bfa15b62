"""The maintenance DAG's last runs in the tables part: read from a SQLite metadata DB with Airflow's ``dag_run``
columns, newest first; a host without Airflow, or with its DB elsewhere, gets a sentence instead, never an error."""

from __future__ import annotations

import importlib.util
import re
import sqlite3
from pathlib import Path

from pipelines.observe import verdicts as v
from pipelines.observe.dag_runs import MaintenanceRuns, airflow_db, dag_runs
from pipelines.observe.gather import LakeReport
from pipelines.observe.render import tables_html

READ_COLUMNS = ("id", "dag_id", "run_id", "state", "start_date", "end_date")


def test_the_columns_read_are_airflows() -> None:
    """Airflow is not imported by the report (seconds); its model's source still names every column read."""
    spec = importlib.util.find_spec("airflow")
    assert spec is not None
    assert spec.submodule_search_locations is not None
    source = (Path(next(iter(spec.submodule_search_locations))) / "models" / "dagrun.py").read_text()
    assert '__tablename__ = "dag_run"' in source
    for column in READ_COLUMNS:
        assert re.search(rf'^\s+_?{column}: Mapped\[.*mapped_column\(("{column}", )?', source, re.M), column


def metadata_db(folder: Path) -> Path:
    db = folder / "airflow.db"
    with sqlite3.connect(db) as connection:
        connection.execute(
            "CREATE TABLE dag_run (id INTEGER PRIMARY KEY, dag_id VARCHAR(250), queued_at TIMESTAMP, run_id "
            "VARCHAR(250), state VARCHAR(50), start_date TIMESTAMP, end_date TIMESTAMP)"
        )
        connection.executemany(
            "INSERT INTO dag_run (dag_id, run_id, state, start_date, end_date) VALUES (?, ?, ?, ?, ?)",
            [
                ("lake_maintenance", "scheduled__1", "success", "2026-12-05 02:00:00.000000", "2026-12-05 02:03:20"),
                ("mirror", "scheduled__m", "failed", "2026-12-06 01:00:00", "2026-12-06 01:00:05"),
                (
                    "lake_maintenance",
                    "scheduled__2",
                    "failed",
                    "2026-12-06 02:00:00+00:00",
                    "2026-12-06 02:00:40+00:00",
                ),
                ("lake_maintenance", "manual__3", "running", "2026-12-06 09:00:00", None),
            ],
        )
    return db


def test_last_runs_newest_first_of_that_dag_only(tmp_path: Path) -> None:
    db = metadata_db(tmp_path)
    found = dag_runs(db)
    assert [r.run_id for r in found.runs] == ["manual__3", "scheduled__2", "scheduled__1"]
    assert found.runs[1].end_s is not None
    assert found.runs[1].start_s is not None
    assert found.runs[1].end_s - found.runs[1].start_s == 40.0
    assert found.runs[0].end_s is None
    assert found.note == ""
    assert [r.run_id for r in dag_runs(db, limit=1).runs] == ["manual__3"]


def test_a_failed_newest_run_warns_with_commands(tmp_path: Path) -> None:
    found = dag_runs(metadata_db(tmp_path))
    assert v.maintenance_verdicts(found)[0].level is v.Level.OK  # the newest runs
    failed = MaintenanceRuns(runs=found.runs[1:])
    (warn,) = v.maintenance_verdicts(failed)
    assert warn.level is v.Level.WARN
    assert "scheduled__2 failed" in warn.value
    assert "`tierlake table optimize --all`" in warn.fix
    assert v.maintenance_verdicts(MaintenanceRuns(note="no Airflow on this host")) == []


def test_no_airflow_and_other_databases_are_said_not_raised(tmp_path: Path) -> None:
    assert "no Airflow on this host" in str(airflow_db({}, tmp_path))
    assert airflow_db({"AIRFLOW_HOME": str(tmp_path)}, tmp_path) == tmp_path / "airflow.db"
    conn = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite:////var/lib/airflow/airflow.db"}
    assert airflow_db(conn, tmp_path) == Path("/var/lib/airflow/airflow.db")
    postgres = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://airflow@db/airflow"}
    assert "postgresql+psycopg2, not read" in str(airflow_db(postgres, tmp_path))
    (tmp_path / "airflow.cfg").write_text("[database]\nsql_alchemy_conn = sqlite:////srv/af/airflow.db\n")
    assert airflow_db({"AIRFLOW_HOME": str(tmp_path)}, tmp_path) == Path("/srv/af/airflow.db")
    assert "airflow db migrate" in dag_runs(tmp_path / "missing.db").note
    (tmp_path / "empty.db").write_bytes(b"")
    assert "could not be read" in dag_runs(tmp_path / "empty.db").note  # not migrated: no dag_run table


def test_the_tables_part_shows_the_runs_or_why_not(tmp_path: Path) -> None:
    report = LakeReport(generated_s=1_796_600_000.0, since_s=0.0, maintenance=dag_runs(metadata_db(tmp_path)))
    page = tables_html(report)
    assert "<h3>Maintenance DAG lake_maintenance: last runs</h3>" in page
    assert "<td>scheduled__2</td><td>failed</td>" in page
    assert "<td>40 s</td>" in page
    assert "<td>running or queued</td>" in page
    report.maintenance = MaintenanceRuns(note="no Airflow on this host (AIRFLOW_HOME unset, no ~/airflow/airflow.db)")
    assert "no Airflow on this host" in tables_html(report)
