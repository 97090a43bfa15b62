"""``tierlake stack up|down|status``: the local stack of real services."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tierlake.commands import ExitCode, Subparsers, non_negative_int
from tierlake.config import Settings


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from infra.stack import LocalStack  # noqa: PLC0415 - each subcommand imports only what it needs

    stack = LocalStack(settings, kafka_nodes=args.kafka_nodes, spark_workers=args.spark_workers)
    stack.up()
    print_status(stack.status(), as_json=False)
    return 0


def _down(args: argparse.Namespace, settings: Settings) -> int:
    from infra.stack import LocalStack  # noqa: PLC0415

    stopped = LocalStack(settings).down()
    sys.stdout.write(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}\n")
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from infra.stack import LocalStack  # noqa: PLC0415

    status = LocalStack(settings).status()
    print_status(status, as_json=args.json)
    return ExitCode.OK if status["healthy"] else ExitCode.NOT_RUNNING


def print_status(status: dict[str, Any], *, as_json: bool) -> None:
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


def register(sub: Subparsers) -> None:
    stack = sub.add_parser("stack", help="the local stack of real services").add_subparsers(
        dest="action", required=True
    )
    up = stack.add_parser("up", help="start Ceph RGW and Kafka (idempotent) and wait until healthy")
    up.add_argument("--kafka-nodes", type=int, choices=(1, 3), help="1 (demo) or 3 (RF 3, min ISR 2)")
    up.add_argument(
        "--spark-workers",
        type=non_negative_int,
        help="also start a Spark standalone master and this many workers (default: spark_cluster.workers)",
    )
    up.set_defaults(handler=_up)
    stack.add_parser("down", help="stop every process of the stack, by pid").set_defaults(handler=_down)
    status = stack.add_parser("status", help="each service with pid, port and health (exit 3 if unhealthy)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)
