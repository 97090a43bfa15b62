"""The README's data-engineer example, run as written, line by line, against the real stack (profile ``ci``).

tests/unit/test_docs.py checks that every ``tierlake`` line of the docs parses; this runs the one block a data
engineer would paste first (produce, ingest, reconcile, replay, maintenance, the background driver) and expects
every line to succeed. The compliance block needs an archive run first and stays a parser check.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.stack import LocalStack
from tests.e2e.cli import tierlake
from tests.unit.test_docs import readme_block

REPO = Path(__file__).resolve().parents[2]


def data_engineer_block() -> list[str]:
    return readme_block("## For data engineers")


@pytest.fixture
def stopped_driver(stack: LocalStack) -> Iterator[LocalStack]:
    yield stack
    _tierlake(["ingest", "stop"])  # whatever happened, no background driver is left to the next test


def _tierlake(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return tierlake(argv)


@pytest.mark.slow
def test_readme_data_engineer_block_runs_as_written(stopped_driver: LocalStack) -> None:
    lines = data_engineer_block()
    assert lines[0].startswith("tierlake produce"), lines
    for line in lines:
        words = shlex.split(line, comments=True)
        assert words[0] == "tierlake", f"README line {line!r} is not a tierlake command"
        result = _tierlake(words[1:])
        assert result.returncode == 0, f"README line {line!r} exited {result.returncode}: {result.stderr[-2000:]}"
