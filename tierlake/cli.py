"""The ``tierlake`` command. Parses flags, loads settings once, calls one library function per subcommand.

Subcommands live in ``tierlake/commands/<area>.py``, each with a ``register(subparsers)``; add a module to
``COMMAND_MODULES`` to add an area. Errors of ours (:class:`TierlakeError`) print as one line with the fix and
exit 2; anything unexpected prints one line naming the log file that holds the traceback, and exits 1.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from tierlake.commands import ExitCode, Handler, exit_codes_help
from tierlake.config import load_settings
from tierlake.errors import TierlakeError, first_line
from tierlake.logs import configure_logging

logger = logging.getLogger("tierlake.cli")

COMMAND_MODULES = (
    "tierlake.commands.stack",
    "tierlake.commands.config",
    "tierlake.commands.ingest",
    "tierlake.commands.cache",
    "tierlake.commands.archive",
    "tierlake.commands.table",
    "tierlake.commands.report",
    "tierlake.commands.metrics",
    "tierlake.commands.checkpoint",
    "tierlake.commands.lineage",
)


# Commands that read or write the object store, by (command, action); None: every action. Before paying for a JVM
# or a long run, each checks that the endpoint accepts the S3 keys (tiers.s3.check_credentials), so wrong keys are
# one line with the fix in well under a second, not a Java stack trace or "unexpected error" later.
S3_COMMANDS: dict[str, frozenset[str] | None] = {
    "ingest": frozenset({"run", "serve", "start", "replay-quarantine", "reconcile"}),
    "table": None,
    "cache": frozenset({"warm", "verify", "serve"}),
    "archive": None,
    # list, show, verify and restore go on without the lake's RGW: its tier is refused and the others (the second
    # site's among them) are read, so the lake's endpoint must not be required up front.
    "checkpoint": frozenset({"promote", "archive", "gc"}),
    "lineage": frozenset({"trace", "sync"}),  # send posts a local file to the OpenLineage endpoint
}


def uses_s3(args: argparse.Namespace) -> bool:
    if args.command not in S3_COMMANDS:
        return False
    actions = S3_COMMANDS[args.command]
    return actions is None or getattr(args, "action", None) in actions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tierlake",
        description="tierlake: a tiered lake from Kafka to GPUs",
        epilog=exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", help="config profile: local (default), ci or prod (or TIERLAKE_PROFILE)")
    parser.add_argument("--conf-dir", type=Path, help="folder with base.yaml and the profiles (default: ./conf)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def run_command(argv: list[str] | None = None) -> int:
    """Parse ``argv``, load the settings and run the subcommand; returns the exit code."""
    args = build_parser().parse_args(argv)
    log_file: Path | None = None
    try:
        settings = load_settings(args.profile, conf_dir=args.conf_dir)
        log_file = configure_logging(settings.run_dir / "logs" / "tierlake.log", verbose=args.verbose)
        if uses_s3(args):
            from tiers.s3 import check_credentials  # noqa: PLC0415 - boto3 only for commands that use S3

            check_credentials(settings.s3)
        handler: Handler = args.handler
        return handler(args, settings)
    except TierlakeError as exc:
        sys.stderr.write(f"tierlake: error: {exc}\n")
        return ExitCode.ERROR
    except KeyboardInterrupt:
        sys.stderr.write("tierlake: interrupted\n")
        return 130
    except Exception as exc:  # the last line of defence: a one-line message, the traceback in the log
        logger.exception("unexpected error")
        sys.stderr.write(
            f"tierlake: unexpected error: {type(exc).__name__}: {first_line(exc)} "
            f"(the whole message and the traceback in {log_file or 'no log yet'})\n"
        )
        return ExitCode.UNEXPECTED


def main(argv: list[str] | None = None) -> NoReturn:
    """The ``tierlake`` console entry point: :func:`run_command`, then exit without finalizing native threads.

    delta-rs and pyarrow keep native threads whose destructors can race when the interpreter finalizes, aborting
    a process that has already done its work and printed its result (SIGABRT, "terminate called without an active
    exception"; delta-io/delta-rs#2184). CI saw it once in a few hundred commands. So the exit handlers (log
    flushing, the edge cache's hit counters) run here, the streams are flushed, and the process ends at once.
    """
    try:
        code = run_command(argv)
    except SystemExit as exc:  # argparse: --help, or a usage error (already printed)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
