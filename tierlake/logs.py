"""Logging set-up for entry points only (the CLI, DAG tasks, bench scripts). Library modules just log."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _NoTraceback(logging.Formatter):
    """The message only: tracebacks go to the log file, never to the console (the CLI prints one line instead)."""

    def format(self, record: logging.LogRecord) -> str:
        bare = logging.makeLogRecord(record.__dict__)
        bare.exc_info, bare.exc_text, bare.stack_info = None, None, None
        return super().format(bare)


def configure_logging(log_file: Path, *, verbose: bool = False) -> Path:
    """INFO (or DEBUG) to ``log_file``; warnings and tierlake's own INFO lines to stderr. Returns the file."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    to_file = logging.FileHandler(log_file, encoding="utf-8")
    to_file.setFormatter(logging.Formatter(_FORMAT))
    root.addHandler(to_file)
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setFormatter(_NoTraceback("%(levelname)s %(name)s: %(message)s"))
    to_stderr.addFilter(
        lambda record: (
            record.levelno >= logging.WARNING
            or record.name.split(".")[0] in ("infra", "pipelines", "tiers", "tierlake")
        )
    )
    root.addHandler(to_stderr)
    for noisy in ("py4j", "botocore", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return log_file
