"""The archive queue: every task of the tiering and retention DAGs runs on the Celery queue that the archive workers
of infra/k8s/ take (`--queues`), and no other DAG's task does (they run on the chart's workers)."""

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

ARCHIVE_DAGS = {"tiering", "retention"}


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(ROOT / "dags"))


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
