"""``tierlake metrics serve``: one Prometheus endpoint for the whole lake (pipelines/observe/metrics.py) and the
node's edge cache (tiers/cache/metrics.py), ``tierlake_``-prefixed, in base units."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from functools import partial
from typing import TYPE_CHECKING

from tierlake.commands import Subparsers, positive_float
from tierlake.commands.report import (
    driver_running,
    duration_s,
    last_vacuums,
    maintenance_runs,
    training_checkpoints,
)
from tierlake.config import Settings

if TYPE_CHECKING:
    from pipelines.observe import LakeReport


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415

    from pipelines.observe import build_report  # noqa: PLC0415
    from pipelines.observe.metrics import LakeCollector  # noqa: PLC0415

    registry = CollectorRegistry()

    def gather() -> LakeReport:
        return build_report(
            settings,
            since_s=time.time() - args.since,
            grace_s=args.lag_grace_s,
            driver_running=driver_running(settings),
            extra_tables=args.table or [],
            training=partial(training_checkpoints, settings),
            vacuums=partial(last_vacuums, settings),
            maintenance=maintenance_runs,
        )

    lake = LakeCollector(gather, max_age_s=args.max_age_s)
    registry.register(lake)
    if (settings.cache.directory / "index.sqlite").exists():
        from tiers.cache import cache_from_settings  # noqa: PLC0415
        from tiers.cache.metrics import CacheCollector  # noqa: PLC0415

        registry.register(CacheCollector(cache_from_settings(settings.cache.options, settings.s3)))
    lake.start()  # gathers now and every --max-age-s in the background; scrapes answer from the last report
    server, thread = start_http_server(args.port, addr=args.host, registry=registry)
    sys.stderr.write(
        f"metrics on http://{args.host}:{args.port}/metrics (the lake gathered every {args.max_age_s:g} s in the "
        "background; tierlake_report_age_seconds says how old the figures are)\n"
    )
    try:
        threading.Event().wait()
    finally:
        server.shutdown()
        thread.join()
        lake.stop()
    return 0


def register(sub: Subparsers) -> None:
    metrics = sub.add_parser("metrics", help="Prometheus metrics of the whole lake")
    actions = metrics.add_subparsers(dest="action", required=True)
    serve = actions.add_parser("serve", help="serve /metrics until interrupted")
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=9464, help="port (default 9464)")
    serve.add_argument(
        "--max-age-s", type=positive_float, default=60.0, help="gather the lake in the background every this many s"
    )
    serve.add_argument(
        "--since",
        type=duration_s,
        default=duration_s("1h"),
        help="window of the per-window figures (as the report's --since)",
    )
    serve.add_argument("--lag-grace-s", type=positive_float, default=60.0, help="as `tierlake report --lag-grace-s`")
    serve.add_argument("--table", action="append", help="a table to export besides those of conf/ (repeatable)")
    serve.set_defaults(handler=_serve)
