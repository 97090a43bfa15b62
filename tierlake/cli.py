"""The ``tierlake`` command. Parses flags, loads settings once, calls one library function per subcommand.

Errors of ours (:class:`TierlakeError`) print as one line with the fix and exit 2; anything unexpected prints
one line naming the log file that holds the traceback, and exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tierlake.config import Settings, load_settings, masked
from tierlake.errors import TierlakeError
from tierlake.logs import configure_logging

logger = logging.getLogger("tierlake.cli")

Handler = Callable[[argparse.Namespace, Settings], int]


def _stack_up(args: argparse.Namespace, settings: Settings) -> int:
    from infra.stack import LocalStack  # noqa: PLC0415 - each subcommand imports only what it needs

    stack = LocalStack(settings, kafka_nodes=args.kafka_nodes)
    stack.up()
    _print_status(stack.status(), as_json=False)
    return 0


def _stack_down(args: argparse.Namespace, settings: Settings) -> int:
    from infra.stack import LocalStack  # noqa: PLC0415

    stopped = LocalStack(settings).down()
    sys.stdout.write(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}\n")
    return 0


def _stack_status(args: argparse.Namespace, settings: Settings) -> int:
    from infra.stack import LocalStack  # noqa: PLC0415

    status = LocalStack(settings).status()
    _print_status(status, as_json=args.json)
    return 0 if status["healthy"] else 3


def _print_status(status: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(status, indent=2) + "\n")
        return
    lines = [
        f"profile {status['profile']}  run dir {status['run_dir']}",
        f"kafka {status['kafka_bootstrap']}  s3 {status['s3_endpoint']}",
    ]
    for service in status["services"]:
        pid = service.get("pid") or "-"
        port = service.get("port") or "-"
        lines.append(f"  {service['service']:<20} pid {pid!s:<8} port {port!s:<6} {service['health']}")
    lines.append("healthy" if status["healthy"] else "NOT healthy: read the log named for the service")
    sys.stdout.write("\n".join(lines) + "\n")


def _config_show(args: argparse.Namespace, settings: Settings) -> int:
    data = masked(settings)
    text = json.dumps(data, indent=2) if args.json else yaml.safe_dump(data, sort_keys=False)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _produce(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.produce import produce_events  # noqa: PLC0415

    summary = produce_events(settings, dataset=args.dataset, events=args.events, rate=args.rate, progress=not args.json)
    sys.stdout.write((json.dumps(summary.as_dict()) if args.json else summary.describe()) + "\n")
    return 0 if summary.failed == 0 else 4


def _ingest_bronze(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.bronze import run_bronze_until_caught_up  # noqa: PLC0415
    from pipelines.session import spark_session  # noqa: PLC0415

    spark = spark_session(settings, app_name="tierlake-bronze")
    try:
        result = run_bronze_until_caught_up(spark, settings, topic=args.topic)
    finally:
        spark.stop()
    sys.stdout.write(
        (
            json.dumps(result)
            if args.json
            else f"bronze table {result['table']}: {result['rows']} rows (version {result['version']})"
        )
        + "\n"
    )
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.demo import run_demo  # noqa: PLC0415

    report = run_demo(settings, events=args.events)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tierlake", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--profile", help="config profile: local (default), ci or prod (or TIERLAKE_PROFILE)")
    parser.add_argument("--conf-dir", type=Path, help="folder with base.yaml and the profiles (default: ./conf)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG")
    sub = parser.add_subparsers(dest="command", required=True)

    stack = sub.add_parser("stack", help="the local stack of real services").add_subparsers(
        dest="action", required=True
    )
    up = stack.add_parser("up", help="start Ceph RGW and Kafka (idempotent) and wait until healthy")
    up.add_argument("--kafka-nodes", type=int, choices=(1, 3), help="1 (demo) or 3 (RF 3, min ISR 2)")
    up.set_defaults(handler=_stack_up)
    stack.add_parser("down", help="stop every process of the stack, by pid").set_defaults(handler=_stack_down)
    status = stack.add_parser("status", help="each service with pid, port and health (exit 3 if unhealthy)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_stack_status)

    config = sub.add_parser("config", help="configuration").add_subparsers(dest="action", required=True)
    show = config.add_parser("show", help="print the resolved configuration, secrets masked")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_config_show)

    produce = sub.add_parser("produce", help="send synthetic events to Kafka (idempotent, acks=all)")
    produce.add_argument("dataset", choices=("ev",), help="ev: EV charging telemetry")
    produce.add_argument("--events", type=int, default=1000)
    produce.add_argument("--rate", type=float, default=0.0, help="events per second; 0 = as fast as possible")
    produce.add_argument("--json", action="store_true")
    produce.set_defaults(handler=_produce)

    ingest = sub.add_parser("ingest", help="streaming ingestion").add_subparsers(dest="action", required=True)
    bronze = ingest.add_parser("bronze", help="Kafka topic -> Delta bronze table until caught up, then exit")
    bronze.add_argument("--topic", default="ev.telemetry")
    bronze.add_argument("--json", action="store_true")
    bronze.set_defaults(handler=_ingest_bronze)

    demo = sub.add_parser("demo", help="the main job end to end: stack up, produce, bronze on RGW, count")
    demo.add_argument("--events", type=int, default=5000)
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.profile, conf_dir=args.conf_dir)
        log_file = configure_logging(settings.run_dir / "logs" / "tierlake.log", verbose=args.verbose)
        handler: Handler = args.handler
        return handler(args, settings)
    except TierlakeError as exc:
        sys.stderr.write(f"tierlake: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("tierlake: interrupted\n")
        return 130
    except Exception as exc:  # the last line of defence: a one-line message, the traceback in the log
        logger.exception("unexpected error")
        where = locals().get("log_file", "the log")
        sys.stderr.write(f"tierlake: unexpected error: {type(exc).__name__}: {exc} (traceback in {where})\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
