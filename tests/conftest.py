"""Shared test set-up.

Markers follow folders (tests/unit -> unit, tests/integration and tests/e2e -> integration), so `-m unit` selects
exactly the tests that need no service. The stack fixtures start the real local stack lazily, once per session,
through infra/: profile ``ci`` (three Kafka nodes with RF 3 and min ISR 2, Ceph with RGW) on ports and a run dir
of its own (.run-test), so a demo stack on the default ports can keep running beside the tests. Each session
starts from an empty run dir: leftovers of an earlier run are stopped by pid and wiped first.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from infra.stack import LocalStack
from tierlake.config import Settings, load_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)
_FOLDER_MARKERS = {"unit": pytest.mark.unit, "integration": pytest.mark.integration, "e2e": pytest.mark.integration}


_LAST = "test_no_secret_in_any_file_of_the_run_folder"  # greps what every other test left in the run folder


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        if folder in _FOLDER_MARKERS:
            item.add_marker(_FOLDER_MARKERS[folder])
    items.sort(key=lambda item: item.name == _LAST)  # stable: every other test keeps its place


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    leftovers = load_settings("ci")
    LocalStack(leftovers).down()
    if leftovers.run_dir.exists():
        shutil.rmtree(leftovers.run_dir)
    # Load again after the wipe: the first load read the old secret file, which is gone now.
    local = LocalStack(load_settings("ci"), kafka_nodes=3)
    local.settings = local.up()
    yield local
    stopped = local.down()
    logger.info("stack down: %s", stopped)


@pytest.fixture(scope="session")
def settings(stack: LocalStack) -> Settings:
    return stack.settings


@pytest.fixture(scope="session")
def spark(settings: Settings) -> Iterator[SparkSession]:
    from pipelines.session import spark_session  # noqa: PLC0415 - pyspark only for tests that use Spark

    session = spark_session(settings, app_name="tierlake-tests")
    yield session
    session.stop()
