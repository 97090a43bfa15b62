"""``tierlake cache warm|stats|evict|verify|pin|serve``: the node's edge cache (tiers/cache)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

from tierlake.commands import ExitCode, Subparsers, positive_int
from tierlake.config import Settings
from tierlake.errors import ConfigError

if TYPE_CHECKING:
    from tiers.cache import EdgeCache


def _cache(settings: Settings) -> EdgeCache:
    from tiers.cache import cache_from_settings  # noqa: PLC0415 - each subcommand imports only what it needs

    return cache_from_settings(settings.cache.options, settings.s3)


def _object(uri: str, lake_bucket: str) -> tuple[str, str]:
    """``s3://bucket/key`` or a key in the lake bucket."""
    if uri.startswith(("s3://", "s3a://")):
        bucket, _, key = uri.split("://", 1)[1].partition("/")
        return bucket, key
    return lake_bucket, uri.lstrip("/")


def _warm(args: argparse.Namespace, settings: Settings) -> int:
    from tiers.cache.warm import warm  # noqa: PLC0415

    concurrency = args.concurrency or settings.cache.warm_concurrency
    try:
        report = warm(
            _cache(settings),
            settings.s3,
            args.table,
            version=args.version,
            concurrency=concurrency,
            pin=args.pin,
            progress=not args.json,
            partitions=tuple(args.partition or ()),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if args.json:
        sys.stdout.write(json.dumps(asdict(report)) + "\n")
    else:
        sys.stdout.write(
            f"{report.table} version {report.version}: {report.files} files, {report.bytes / 1e6:.1f} MB; "
            f"filled {report.filled}, already cached {report.already_cached}, failed {len(report.failed)}\n"
        )
        for failure in report.failed:
            sys.stdout.write(f"  failed: {failure}\n")
    return ExitCode.INCOMPLETE if report.failed else ExitCode.OK


def _stats(args: argparse.Namespace, settings: Settings) -> int:
    cache = _cache(settings)
    if args.prometheus:
        from tiers.cache.metrics import prometheus_text  # noqa: PLC0415

        sys.stdout.write(prometheus_text(cache).decode())
        return 0
    stats = cache.stats()
    if args.json:
        data = asdict(stats) | {"hit_ratio": round(stats.hit_ratio, 4), "directory": str(cache.root)}
        sys.stdout.write(json.dumps(data) + "\n")
        return 0
    c = stats.counters
    sys.stdout.write(
        f"cache {cache.root}\n"
        f"  used {stats.used_bytes / 1e6:.1f} MB of {stats.capacity_bytes / 1e6:.1f} MB in {stats.entries} entries, "
        f"{stats.pinned_objects} pinned objects\n"
        f"  hits {c['hits']} (waited on another fill {c['coalesced']}), misses {c['misses']}, "
        f"hit ratio {stats.hit_ratio:.3f}\n"
        f"  bytes served {c['bytes_hit'] / 1e6:.1f} MB, filled {c['bytes_filled'] / 1e6:.1f} MB; origin GETs "
        f"{c['backend_gets']}, HEADs {c['backend_heads']}\n"
        f"  evictions {c['evictions']} ({c['bytes_evicted'] / 1e6:.1f} MB), corrupt {c['corrupt']}, "
        f"dead fills recovered {c['stale_fills_recovered']}\n"
    )
    return 0


def _evict(args: argparse.Namespace, settings: Settings) -> int:
    from tiers.cache.maintain import evict  # noqa: PLC0415

    if not (args.all or args.prefix or args.to_bytes is not None):
        raise ConfigError("cache evict needs what to evict. Fix: --all, --prefix s3://bucket/prefix or --to-bytes N")
    prefix = None
    if args.prefix:
        bucket, key = _object(args.prefix, settings.s3.lake_bucket)
        prefix = f"{bucket}/{key}"
    report = evict(_cache(settings), prefix=prefix, to_bytes=args.to_bytes)
    sys.stdout.write(
        json.dumps(asdict(report)) + "\n"
        if args.json
        else f"evicted {report.entries} entries, {report.bytes / 1e6:.1f} MB; kept {report.pinned_skipped} pinned, "
        f"{report.in_use_skipped} in use\n"
    )
    return 0


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    from tiers.cache.maintain import verify  # noqa: PLC0415

    report = verify(_cache(settings), refetch=not args.no_refetch)
    if args.json:
        sys.stdout.write(json.dumps(asdict(report) | {"clean": report.clean}) + "\n")
    else:
        sys.stdout.write(
            f"checked {report.checked} entries: {report.ok} ok, {len(report.corrupt)} bad, refetched "
            f"{report.refetched}, skipped {report.in_use_skipped} in use, removed {report.orphans_removed} orphans\n"
        )
        for line in report.corrupt:
            sys.stdout.write(f"  bad: {line}\n")
    return ExitCode.OK if report.clean else ExitCode.INCOMPLETE


def _pin(args: argparse.Namespace, settings: Settings) -> int:
    cache = _cache(settings)
    for uri in args.objects:
        bucket, key = _object(uri, settings.s3.lake_bucket)
        (cache.unpin if args.remove else cache.pin)(bucket, key)
    sys.stdout.write(f"{'unpinned' if args.remove else 'pinned'} {len(args.objects)} objects\n")
    return 0


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from tiers.cache.site import load_or_create_keys, serve  # noqa: PLC0415

    keys = load_or_create_keys(settings.cache.site_credentials_file)
    host, port = args.host or settings.cache.site_host, args.port or settings.cache.site_port
    sys.stderr.write(
        f"site cache on http://{host}:{port} (origin {settings.s3.endpoint}); "
        f"keys in {settings.cache.site_credentials_file}\n"
    )
    serve(_cache(settings), settings.s3, keys, host=host, port=port)
    return 0


def register(sub: Subparsers) -> None:
    cache = sub.add_parser("cache", help="the edge cache on this node").add_subparsers(dest="action", required=True)
    warm = cache.add_parser("warm", help="prefetch a Delta snapshot's files into the cache")
    warm.add_argument("table", help="s3://bucket/path, s3a://bucket/path, or a path in the lake bucket")
    warm.add_argument("--version", type=int, help="the Delta version (default: the latest)")
    warm.add_argument("--concurrency", type=positive_int, help="parallel GETs (default: cache.warm_concurrency)")
    warm.add_argument("--pin", action="store_true", help="never evict these files until unpinned")
    warm.add_argument(
        "--partition", action="append", help="only this partition, e.g. event_date=2026-01-07 (repeatable)"
    )
    warm.add_argument("--json", action="store_true")
    warm.set_defaults(handler=_warm)
    stats = cache.add_parser("stats", help="hits, misses, bytes, evictions, hit ratio")
    stats.add_argument("--json", action="store_true")
    stats.add_argument("--prometheus", action="store_true", help="the Prometheus text format")
    stats.set_defaults(handler=_stats)
    evict = cache.add_parser("evict", help="drop entries (pinned ones and ones in use stay)")
    evict.add_argument("--all", action="store_true", help="every entry")
    evict.add_argument("--prefix", help="entries of s3://bucket/prefix")
    evict.add_argument("--to-bytes", type=int, help="through the eviction policy, down to this many bytes")
    evict.add_argument("--json", action="store_true")
    evict.set_defaults(handler=_evict)
    verify = cache.add_parser("verify", help="re-hash every entry; refetch bad ones (exit 1 if any stays bad)")
    verify.add_argument("--no-refetch", action="store_true", help="only drop bad entries")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(handler=_verify)
    pin = cache.add_parser("pin", help="never evict these objects (--remove: allow again)")
    pin.add_argument("objects", nargs="+", help="s3://bucket/key or a key in the lake bucket")
    pin.add_argument("--remove", action="store_true")
    pin.set_defaults(handler=_pin)
    serve = cache.add_parser("serve", help="serve the cache to other nodes as an S3 endpoint (site mode)")
    serve.add_argument("--host", help="listen address (default: cache.site_host)")
    serve.add_argument("--port", type=int, help="port (default: cache.site_port)")
    serve.set_defaults(handler=_serve)
