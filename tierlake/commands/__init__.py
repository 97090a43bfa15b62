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
