"""``tierlake archive select|run|purge|retention|query|locate|restore|verify|hold|release|rebuild-catalog``:
the cold tier (tiers/archive over tiers/tape). ``--json`` prints one JSON document."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from tierlake import catalog
from tierlake.commands import ExitCode, Subparsers
from tierlake.config import Settings
from tierlake.errors import ConfigError

if TYPE_CHECKING:
    from tiers.archive.catalog import Catalog
    from tiers.archive.context import ArchiveContext


def _context(settings: Settings) -> ArchiveContext:
    """The archive tier's part of the settings: the tier never takes the whole ``Settings``."""
    from tiers.archive.context import ArchiveContext  # noqa: PLC0415

    return ArchiveContext(archive=settings.archive, s3=settings.s3, cache=settings.cache.options)


def _catalog(settings: Settings, uri: str | None = None) -> Catalog:
    from tiers.archive.catalog import Catalog  # noqa: PLC0415 - delta-rs and duckdb only for this area

    return Catalog(uri or settings.archive.catalog_uri, settings.archive.audit_uri, s3=settings.s3)


def _out(args: argparse.Namespace, document: Any, text: str) -> None:
    sys.stdout.write((json.dumps(document, default=str) if args.json else text) + "\n")


def _scope(args: argparse.Namespace) -> str:
    from tiers.archive.compliance import _scope as scope  # noqa: PLC0415

    return scope(
        getattr(args, "table", None),
        getattr(args, "partition", None),
        getattr(args, "file", None),
        getattr(args, "key", None),
    )


def _table_missing(args: argparse.Namespace, settings: Settings) -> bool:
    """With --if-exists, a table not written yet (a fresh install) is reported and skipped, not an error."""
    from tierlake.errors import NotFound  # noqa: PLC0415
    from tiers.archive.policy import snapshot  # noqa: PLC0415

    if not args.if_exists:
        return False
    try:
        snapshot(settings.s3, args.table)
    except NotFound:
        _out(args, {"table": args.table, "missing": True, "partitions": []}, f"{args.table}: no table yet")
        return True
    return False


def _select(args: argparse.Namespace, settings: Settings) -> int:
    from tiers.archive.compliance import select  # noqa: PLC0415

    if _table_missing(args, settings):
        return 0
    chosen = select(_context(settings), _catalog(settings), args.table)
    lines = [f"{c['partition']}: {c['files']} files, {c['bytes'] / 1e6:.1f} MB ({c['why']})" for c in chosen]
    _out(args, {"table": args.table, "partitions": chosen}, "\n".join(lines) or "no cold partitions")
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from tiers.archive.archiver import run  # noqa: PLC0415
    from tiers.archive.compliance import select  # noqa: PLC0415

    if _table_missing(args, settings):
        return 0
    catalog = _catalog(settings)
    context = _context(settings)
    partitions = args.partition or [c["partition"] for c in select(context, catalog, args.table)]
    report = run(context, catalog, args.table, partitions, progress=not args.json)
    document = asdict(report) | {"all_verified": report.all_verified}
    _out(
        args,
        document,
        f"{args.table}@{report.version}: {report.files} files ({report.bytes / 1e6:.1f} MB) in {report.aggregates} "
        f"aggregates to {report.cartridges}, {report.skipped} already archived; all verified: {report.all_verified}",
    )
    return ExitCode.OK if report.all_verified else ExitCode.INCOMPLETE


def _purge(args: argparse.Namespace, settings: Settings) -> int:
    from tiers.archive.compliance import purge  # noqa: PLC0415

    result = purge(_context(settings), _catalog(settings), _scope(args), execute=args.execute, only_due=args.only_due)
    verb = "purged" if args.execute else "would purge (dry run; --execute to delete)"
    _out(
        args,
        result,
        f"{verb} {len(result['files'])} files; already purged {result['already_purged']}; "
        f"kept {result['kept']} (legal hold or retention)",
    )
    return 0


def _retention(args: argparse.Namespace, settings: Settings) -> int:
    from tiers.archive.compliance import retention  # noqa: PLC0415

    result = retention(_catalog(settings), apply=not args.report_only)
    text = [f"held: {len(result['held'])}", f"retained: {len(result['expiring'])}"]
    text += [f"  hold {h['table']}/{h['path']}: {h['reason']}" for h in result["held"]]
    text += [f"  until {e['retention_until']}: {e['table']}/{e['path']}" for e in result["expiring"][:20]]
    text.append(f"became purgeable: {result['became_purgeable']}")
    _out(args, result, "\n".join(text))
    return 0


def _query(args: argparse.Namespace, settings: Settings) -> int:
    from tiers.archive.catalog import query  # noqa: PLC0415

    catalog = _catalog(settings)
    result = query(args.sql, catalog=catalog.dataset(), audit=catalog.audit_dataset())
    catalog.record("query", target=args.sql[:500], rows=result.num_rows)
    rows = result.to_pylist()
    if args.json:
        _out(args, {"columns": result.column_names, "rows": rows}, "")
        return 0
    widths = [max([len(c), *(len(str(r[c])) for r in rows)]) for c in result.column_names]
    lines = ["  ".join(c.ljust(w) for c, w in zip(result.column_names, widths, strict=True))]
    lines += ["  ".join(str(r[c]).ljust(w) for c, w in zip(result.column_names, widths, strict=True)) for r in rows]
    _out(args, None, "\n".join([*lines, f"({len(rows)} rows)"]))
    return 0


def _locate(args: argparse.Namespace, settings: Settings) -> int:
    from tiers.archive.compliance import locate  # noqa: PLC0415

    found = locate(_catalog(settings), args.table, args.key)
    lines = [
        f"{f['cartridge']} copy {f['copy']} ({f['site']}) {f['extent_partition']}:{f['start_block']}"
        f"+{f['byte_offset']} {f['byte_count']} B  {f['path']}  [{f['state']}]"
        for f in found
    ]
    _out(args, {"table": args.table, "key": args.key, "locations": found}, "\n".join(lines) or "not archived")
    return ExitCode.OK if found else ExitCode.NOT_RUNNING


def _restore(args: argparse.Namespace, settings: Settings) -> int:
    from tiers.archive.compliance import restore  # noqa: PLC0415

    if args.version is not None:
        return _restore_version(args, settings)
    report = restore(_context(settings), _catalog(settings), _scope(args), args.to, progress=not args.json)
    text = [f"restored {r['path']} -> {r['to']} (copy {r['copy']}, {r['cartridge']})" for r in report.restored]
    text += [f"fell back: {f}" for f in report.fallbacks]
    _out(args, asdict(report), "\n".join(text))
    return 0


def _restore_version(args: argparse.Namespace, settings: Settings) -> int:
    """Every purged file of one table version back (the loader's recall path: one mount per cartridge)."""
    from loaders.recall import Recall  # noqa: PLC0415
    from loaders.table import pin_snapshot  # noqa: PLC0415
    from tiers.s3 import delta_storage_options  # noqa: PLC0415

    targets = {"s3": "lake", "cache": "cache"}
    if not args.table or args.to not in targets:
        raise ConfigError(
            f"archive restore --version {args.version} needs --table and --to s3 or cache (got --table "
            f"{args.table!r}, --to {args.to!r}). Fix: e.g. --table silver/ev --version 3 --to s3"
        )
    uri = catalog.parse_table(args.table, lake_bucket=settings.s3.lake_bucket).s3
    snapshot = pin_snapshot(uri, version=args.version, storage_options=delta_storage_options(settings.s3))
    reason = args.reason or f"archive restore --version {args.version}"
    recall = Recall(context=_context(settings), mode="auto", to=targets[args.to], reason=reason, progress=not args.json)
    recall = replace(recall, requester="tierlake archive restore --version")
    plan = recall.plan([f.uri for f in snapshot.files])
    estimate = plan.estimate(drive_mb_s=settings.archive.drive_mb_s)
    report = recall.apply(plan, what=f"{uri} at version {args.version}") if plan.cartridges else None
    document = {"table": args.table, "version": args.version, "estimate": asdict(estimate)}
    document |= asdict(report) if report else {"recalled": [], "already": [], "fallbacks": [], "mounts": 0}
    text = [f"{args.table} v{args.version}: {estimate.files} file(s), {estimate.bytes} bytes on tape only"]
    text += [f"recalled {r['path']} -> {r['to']} (copy {r['copy']}, {r['cartridge']})" for r in document["recalled"]]
    text += [f"fell back: {f}" for f in document["fallbacks"]]
    _out(args, document, "\n".join(text))
    return 0


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    from tiers.archive.compliance import verify  # noqa: PLC0415

    result = verify(_context(settings), _catalog(settings), args.cartridge, progress=not args.json)
    text = [
        f"checked {result['files_checked']} file copies on {', '.join(result['cartridges'])}: {len(result['bad'])} bad"
    ]
    text += [f"  BAD {b['cartridge']} {b['aggregate']} {b['path']}" for b in result["bad"]]
    _out(args, result, "\n".join(text))
    return ExitCode.INCOMPLETE if result["bad"] else ExitCode.OK


def _hold(args: argparse.Namespace, settings: Settings) -> int:
    from tiers.archive.compliance import hold  # noqa: PLC0415

    on = args.archive_command == "hold"
    if not (args.table or args.partition or args.file):
        raise ConfigError(f"archive {args.archive_command} needs --table, --partition or --file")
    count = hold(_catalog(settings), _scope(args), reason=args.reason or "", on=on)
    _out(args, {"rows": count, "legal_hold": on}, f"{'held' if on else 'released'} {count} catalog rows")
    return 0


def _rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from tiers.archive.compliance import rebuild  # noqa: PLC0415

    catalog = _catalog(settings)
    into = _catalog(settings, args.into) if args.into else None
    count = rebuild(_context(settings), catalog, args.cartridge, into=into)
    _out(args, {"cartridge": args.cartridge, "rows_added": count}, f"{args.cartridge}: {count} catalog rows added")
    return 0


def register(sub: Subparsers) -> None:
    archive = sub.add_parser("archive", help="the cold tier: LTFS tape at two sites, catalog, compliance")
    commands = archive.add_subparsers(dest="archive_command", required=True)

    def command(name: str, handler: Any, text: str, *, table: bool = False) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=text)
        parser.add_argument("--json", action="store_true", help="print one JSON document")
        if table:
            parser.add_argument("--table", required=True, help="lake table path, e.g. silver/ev")
        parser.set_defaults(handler=handler)
        return parser

    command("select", _select, "cold partitions by policy", table=True)
    run = command("run", _run, "archive partitions to both sites and verify", table=True)
    run.add_argument("--partition", action="append", help="e.g. event_date=2026-01-01 (repeatable; default: selected)")
    for parser in (commands.choices["select"], run):
        parser.add_argument("--if-exists", action="store_true", help="a table not written yet is skipped, not an error")
    purge = command("purge", _purge, "delete object-store copies of verified files (dry run by default)", table=True)
    purge.add_argument("--partition")
    purge.add_argument("--execute", action="store_true", help="really delete (default: dry run)")
    purge.add_argument(
        "--only-due",
        action="store_true",
        help="purge what retention and holds allow and keep the rest (default: any retained file refuses all)",
    )
    retention = command("retention", _retention, "holds, retention dates; mark purgeable what expired")
    retention.add_argument("--report-only", action="store_true", help="change no state")
    query = command("query", _query, "SQL (DuckDB) over the tables `catalog` and `audit`")
    query.add_argument("sql")
    locate = command("locate", _locate, "which cartridge and extent hold a record key", table=True)
    locate.add_argument("--key", required=True)
    restore = command("restore", _restore, "restore from the first healthy copy")
    restore.add_argument("--table")
    what = restore.add_mutually_exclusive_group(required=True)
    what.add_argument("--key")
    what.add_argument("--file", help="a data file path (relative to its table) or object key")
    what.add_argument("--partition")
    what.add_argument("--version", type=int, help="every purged file of this table version (needs --table)")
    restore.add_argument("--to", required=True, help="s3 (same keys), cache, or a folder")
    restore.add_argument("--reason", default="", help="why (in the audit log)")
    verify = command("verify", _verify, "re-read copies and report bit-rot (exit 4 when any is bad)")
    verify.add_argument("--cartridge")
    for name in ("hold", "release"):
        parser = command(name, _hold, f"legal {name} by table, partition or file")
        parser.add_argument("--table")
        parser.add_argument("--partition")
        parser.add_argument("--file")
        parser.add_argument("--reason", required=name == "hold")
    rebuild = command("rebuild-catalog", _rebuild, "catalog rows from a cartridge's own index")
    rebuild.add_argument("--cartridge", required=True)
    rebuild.add_argument("--into", help="another catalog location (default: merge into the catalog)")
