"""What the user sees on the console when something fails: one line; the traceback only in the log file."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from pipelines.synthetic.demo import json_safe
from tierlake.logs import configure_logging


@pytest.fixture
def root_handlers() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        handler.close()
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.mark.usefixtures("root_handlers")
def test_tracebacks_go_to_the_log_file_not_the_console(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_file = configure_logging(tmp_path / "tierlake.log")
    try:
        raise RuntimeError("the plan, forty lines of it")
    except RuntimeError:
        logging.getLogger("tierlake.cli").exception("unexpected error")
    console = capsys.readouterr().err
    assert console == "ERROR tierlake.cli: unexpected error\n"
    written = log_file.read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in written
    assert "RuntimeError: the plan, forty lines of it" in written


def test_demo_rows_print_as_json_with_times_as_text() -> None:
    row = {"event_id": "e1", "score": 0.9, "ts": datetime(2026, 11, 29, 12, 0), "flagged_at": datetime(2026, 11, 29)}
    assert json_safe(row) == {
        "event_id": "e1",
        "score": 0.9,
        "ts": "2026-11-29T12:00:00",
        "flagged_at": "2026-11-29T00:00:00",
    }
