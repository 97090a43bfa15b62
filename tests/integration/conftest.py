"""The real local stack for integration tests: brought up once per session through infra/, then taken down.

Profile ``ci``: three Kafka nodes (RF 3, min ISR 2), Ceph with RGW, ports and run dir of its own (.run-test),
so a demo stack on the default ports can keep running beside the tests. Each session starts from an empty run
dir: leftovers of an earlier run are stopped by pid and wiped first.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from infra.stack import LocalStack
from tierlake.config import Settings, load_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    settings = load_settings("ci")
    LocalStack(settings).down()
    if settings.run_dir.exists():
        shutil.rmtree(settings.run_dir)
    local = LocalStack(settings, kafka_nodes=3)
    local.settings = local.up()
    yield local
    stopped = local.down()
    logger.info("stack down: %s", stopped)


@pytest.fixture(scope="session")
def settings(stack: LocalStack) -> Settings:
    return stack.settings


@pytest.fixture(scope="session")
def spark(settings: Settings) -> Iterator[SparkSession]:
    from pipelines.session import spark_session

    session = spark_session(settings, app_name="tierlake-tests")
    yield session
    session.stop()
