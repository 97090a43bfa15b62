"""DagBag import test: every DAG of dags/ imports, has no cycle, and every task has retries and a timeout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tierlake.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
# Airflow reads its configuration at import: give it a home under the run dir (never ~/airflow) first.
_HOME = load_settings("ci").run_dir / "airflow"
os.environ.setdefault("AIRFLOW_HOME", str(_HOME))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_HOME / 'airflow.db'}")

from airflow.dag_processing.dagbag import DagBag  # noqa: E402 - after the environment above

EXPECTED = {"lake_maintenance", "tiering", "cache_warmup", "retention", "mirror", "ingest_supervisor"}


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(ROOT / "dags"))


def test_every_dag_imports_without_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == EXPECTED


def test_every_task_has_retries_and_a_timeout(dagbag: DagBag) -> None:
    missing = [
        f"{dag_id}.{t.task_id}"
        for dag_id in dagbag.dag_ids
        for t in dagbag.dags[dag_id].tasks
        if not t.retries or t.execution_timeout is None
    ]
    assert missing == []


def test_no_cycles_and_no_catchup(dagbag: DagBag) -> None:
    for dag_id in dagbag.dag_ids:
        dag = dagbag.dags[dag_id]
        dag.check_cycle()  # raises AirflowDagCycleException on a cycle
        assert dag.catchup is False, dag_id
        assert "tierlake" in dag.tags, dag_id


def test_cache_warmup_is_scheduled_on_the_gold_asset_that_the_supervisor_emits(dagbag: DagBag) -> None:
    from dags.common import GOLD_VERSION_LANDED  # noqa: PLC0415

    warmup = dagbag.dags["cache_warmup"]
    assert GOLD_VERSION_LANDED in getattr(warmup.timetable.asset_condition, "objects", ())
    announce = dagbag.dags["ingest_supervisor"].get_task("announce_gold")
    assert GOLD_VERSION_LANDED in announce.outlets
