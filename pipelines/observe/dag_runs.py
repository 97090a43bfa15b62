"""The maintenance DAG's last runs (``dags/lake_maintenance.py``: OPTIMIZE, VACUUM, checkpoint, stats, lineage), for
the tables part of the operator's view.

Read from Airflow's metadata DB when it is a local SQLite file (the dev stack's, ``airflow db migrate`` under
``AIRFLOW_HOME``), opened read-only with the standard library: importing Airflow to ask it costs seconds, longer than
the whole report may take. Its ``dag_run`` table's ``id``, ``dag_id``, ``run_id``, ``state``, ``start_date`` and
``end_date`` columns have kept their names since Airflow 1. Where the DB is elsewhere (PostgreSQL under Kubernetes)
or absent (no Airflow on this host), the page says so instead; the CLI passes the environment that says which.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

MAINTENANCE_DAG = "lake_maintenance"
LAST_RUNS = 5


@dataclass(frozen=True, kw_only=True)
class DagRunRow:
    run_id: str
    state: str
    start_s: float | None
    end_s: float | None


@dataclass(frozen=True, kw_only=True)
class MaintenanceRuns:
    """The DAG's last runs, newest first, and where they were read; ``note`` says why there are none when they could
    not be read (no Airflow here, a DB that is not local, a DB not migrated)."""

    dag_id: str = MAINTENANCE_DAG
    where: str = ""
    runs: list[DagRunRow] = field(default_factory=list)
    note: str = ""


def _epoch(text: str | None) -> float | None:
    """Airflow keeps UTC times; SQLite holds them as text, with or without the zone."""
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def dag_runs(db: Path, *, dag_id: str = MAINTENANCE_DAG, limit: int = LAST_RUNS) -> MaintenanceRuns:
    """The last ``limit`` runs of ``dag_id`` in the SQLite metadata DB ``db`` (read-only), or a note saying why
    there are none to show."""
    if not db.is_file():
        return MaintenanceRuns(dag_id=dag_id, note=f"no Airflow metadata DB at {db} (`airflow db migrate` makes it)")
    try:
        connection = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = connection.execute(
                "SELECT run_id, state, start_date, end_date FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT ?",
                (dag_id, limit),
            ).fetchall()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        return MaintenanceRuns(dag_id=dag_id, where=str(db), note=f"Airflow's DB {db} could not be read: {exc}")
    runs = [DagRunRow(run_id=str(r[0]), state=str(r[1]), start_s=_epoch(r[2]), end_s=_epoch(r[3])) for r in rows]
    note = "" if runs else f"{dag_id} has not run yet"
    return MaintenanceRuns(dag_id=dag_id, where=str(db), runs=runs, note=note)


def airflow_db(environ: Mapping[str, str], home: Path) -> Path | str:
    """Where Airflow keeps its metadata DB as a local SQLite file, or a sentence saying why there is none to read.
    ``environ``: the process environment (the CLI passes it); ``home``: the user's home (Airflow's default
    ``AIRFLOW_HOME`` is ``~/airflow``)."""
    import configparser  # noqa: PLC0415

    airflow_home = Path(environ.get("AIRFLOW_HOME") or home / "airflow")
    conn = environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    config = airflow_home / "airflow.cfg"
    if conn is None and config.is_file():
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(config)
        conn = parser.get("database", "sql_alchemy_conn", fallback=None)
    if conn is None:
        if "AIRFLOW_HOME" not in environ and not (airflow_home / "airflow.db").is_file():
            return "no Airflow on this host (AIRFLOW_HOME unset, no ~/airflow/airflow.db)"
        return airflow_home / "airflow.db"
    if conn.startswith("sqlite:///"):
        return Path(conn.removeprefix("sqlite:///").split("?", 1)[0])
    return f"Airflow's metadata DB is {conn.split(':', 1)[0]}, not read by the report; the Airflow UI shows the runs"
