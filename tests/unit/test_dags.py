"""DagBag import test: every DAG of dags/ imports, has no cycle, and every task has retries and a timeout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra import manifests
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


# The archive queue: every task of the tiering and retention DAGs runs on the Celery queue that the archive workers
# of infra/k8s/ take (`--queues`), and no other DAG's task does (they run on the chart's workers).
ARCHIVE_DAGS = {"tiering", "retention"}


def _worker_queues() -> list[str]:
    objects = manifests.render(manifests.K8S / "base")
    pod = manifests.one(objects, "StatefulSet", "tierlake-archive")["spec"]["template"]["spec"]
    args = next(c for c in pod["containers"] if c["name"] == "worker")["args"]
    queues: list[str] = args[args.index("--queues") + 1].split(",")
    return queues


def test_the_archive_dags_run_on_the_queue_the_archive_workers_take(dagbag: DagBag) -> None:
    from dags.common import ARCHIVE_QUEUE  # noqa: PLC0415 - after the environment above

    assert _worker_queues() == [ARCHIVE_QUEUE]
    assert set(dagbag.dag_ids) >= ARCHIVE_DAGS
    elsewhere = [
        f"{dag_id}.{task.task_id}: {task.queue}"
        for dag_id in sorted(ARCHIVE_DAGS)
        for task in dagbag.dags[dag_id].tasks
        if task.queue != ARCHIVE_QUEUE
    ]
    assert elsewhere == []


def test_no_other_dag_sends_work_to_the_tape_nodes(dagbag: DagBag) -> None:
    from dags.common import ARCHIVE_QUEUE  # noqa: PLC0415

    on_archive = [
        f"{dag_id}.{task.task_id}"
        for dag_id in sorted(set(dagbag.dag_ids) - ARCHIVE_DAGS)
        for task in dagbag.dags[dag_id].tasks
        if task.queue == ARCHIVE_QUEUE
    ]
    assert on_archive == []
