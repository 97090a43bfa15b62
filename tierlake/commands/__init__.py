"""CLI subcommands, one module per area. Each module has ``register(subparsers)`` that adds its parsers and sets
``handler`` (``(args, settings) -> exit code``) on each; ``tierlake.cli.COMMAND_MODULES`` lists the modules."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeAlias

from tierlake.config import Settings

Handler = Callable[[argparse.Namespace, Settings], int]
# argparse has no public name for what add_subparsers() returns.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def positive_int(text: str) -> int:
    """argparse type for counts: a clear message instead of a traceback for 0, -3 or 'many'."""
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
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
