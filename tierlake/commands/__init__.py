"""CLI subcommands, one module per area. Each module has ``register(subparsers)`` that adds its parsers and sets
``handler`` (``(args, settings) -> exit code``) on each; ``tierlake.cli.COMMAND_MODULES`` lists the modules."""

from __future__ import annotations

import argparse
import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeAlias

from tierlake.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

Handler = Callable[[argparse.Namespace, Settings], int]


@contextmanager
def spark_for(settings: Settings, app: str) -> Iterator[SparkSession]:
    """The Spark session of one command, stopped when it ends (pyspark is imported only by commands that use it)."""
    from pipelines.session import spark_session  # noqa: PLC0415 - importing pyspark costs ~1 s

    session = spark_session(settings, app_name=app)
    try:
        yield session
    finally:
        session.stop()


class ExitCode(enum.IntEnum):
    """What ``tierlake`` exits with, the same for every command (listed in ``tierlake --help``)."""

    OK = 0
    UNEXPECTED = 1  # a defect: one line here, the traceback in the log file it names
    ERROR = 2  # bad input, configuration or a refused operation: one line with the fix
    NOT_RUNNING = 3  # the stack or the ingest driver is not running, or nothing matched
    INCOMPLETE = 4  # some items failed: unacknowledged records, bad or unverified copies, failed cache fills
    DEMO_FAILED = 5  # the demo's report found a problem
    NOT_BALANCED = 6  # reconcile: Kafka, bronze and the outputs do not account for every record
    DEGRADED = 7  # a part failed while the rest ran: an ingest entity gave up, a mirrored copy differs


def exit_codes_help() -> str:
    """The exit codes as lines for ``--help``."""
    meaning = {
        ExitCode.OK: "success",
        ExitCode.UNEXPECTED: "unexpected error (a defect; the traceback is in the log file named)",
        ExitCode.ERROR: "bad input, configuration or refused operation (the message says the fix)",
        ExitCode.NOT_RUNNING: "not running, or nothing matched",
        ExitCode.INCOMPLETE: "some items failed (records, copies, fills)",
        ExitCode.DEMO_FAILED: "the demo found a problem",
        ExitCode.NOT_BALANCED: "reconcile: not every record is accounted for",
        ExitCode.DEGRADED: "part failed while the rest ran (an ingest entity, a mirror copy)",
    }
    return "exit codes:\n" + "\n".join(f"  {code.value}  {code.name.lower()}: {text}" for code, text in meaning.items())


# argparse has no public name for what add_subparsers() returns.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def positive_int(text: str) -> int:
    """argparse type for counts: a clear message instead of a traceback for 0, -3 or 'many'."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type for numbers that start at 0 (a training step): -1 or 'last' get a clear message."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exc
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
    return value


def positive_float(text: str) -> float:
    """argparse type for intervals and rates: a finite number above 0 (``--trigger-s -1`` is refused here)."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be a finite number above 0")
    return value


def non_negative_float(text: str) -> float:
    """argparse type for rates where 0 means "no limit"."""
    return 0.0 if text.strip() in ("0", "0.0") else positive_float(text)


def fraction(text: str) -> float:
    """argparse type for shares: a number from 0 to 1."""
    value = 0.0 if text.strip() in ("0", "0.0") else positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{value} must be at most 1 (a share, e.g. 0.02)")
    return value
