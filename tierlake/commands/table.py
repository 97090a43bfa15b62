"""``tierlake table optimize|vacuum|checkpoint|history|stats|migrate|mirror``: Delta table maintenance without Airflow
(pipelines/lake/maintenance.py, pipelines/lake/mirror.py). The lake_maintenance and mirror DAGs call these commands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierlake.commands import ExitCode, Subparsers, positive_int, spark_for
from tierlake.config import Settings
from tierlake.errors import ConfigError

if TYPE_CHECKING:
    from pipelines.lake.maintenance import VacuumReport


def _tables(args: argparse.Namespace, settings: Settings, configured: tuple[str, ...]) -> list[str]:
    from pipelines.lake.maintenance import table_name  # noqa: PLC0415 - each subcommand imports only what it needs

    if args.all and args.tables:
        raise ConfigError("give table paths or --all, not both. Fix: drop one of them")
    if args.all:
        if not configured:
            raise ConfigError("--all found no tables in conf/. Fix: list them in conf/base.yaml or name the tables")
        return list(configured)
    if not args.tables:
        raise ConfigError("no table given. Fix: name one or more tables (e.g. silver/ev) or use --all")
    return [table_name(settings, text) for text in args.tables]


def _maintained(settings: Settings) -> tuple[str, ...]:
    return tuple(entry.table for entry in settings.maintenance.tables)


def _existing(settings: Settings, tables: list[str], *, skip_missing: bool) -> list[str]:
    """With --all, tables of conf/ that were never written yet are skipped (reported), not an error."""
    from pipelines.lake.maintenance import open_table  # noqa: PLC0415
    from tierlake.errors import NotFound  # noqa: PLC0415

    if not skip_missing:
        return tables
    kept = []
    for table in tables:
        try:
            open_table(settings, table)
        except NotFound:
            sys.stderr.write(f"skipped {table}: no Delta table there yet\n")
            continue
        kept.append(table)
    return kept


def _emit(args: argparse.Namespace, results: list[dict[str, Any]], line: Callable[[dict[str, Any]], str]) -> None:
    if args.json:
        sys.stdout.write(json.dumps(results) + "\n")
        return
    for result in results:
        sys.stdout.write(line(result) + "\n")


def _optimize(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.lake.maintenance import optimize  # noqa: PLC0415

    tables = _existing(settings, _tables(args, settings, _maintained(settings)), skip_missing=args.all)
    results = [asdict(optimize(settings, table)) for table in tables]
    _emit(
        args,
        results,
        lambda r: (
            f"{r['table']}: {r['mode']} {r['files_before']} -> {r['files_after']} files, "
            f"{r['rows_after']} rows, version {r['version_before']} -> {r['version_after']} ({r['seconds']} s)"
        ),
    )
    return 0


def _vacuum(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.lake.maintenance import check_retention, vacuum  # noqa: PLC0415

    hours = settings.maintenance.vacuum_retention_hours if args.retention_hours is None else args.retention_hours
    check_retention(hours, allow_short_retention=args.allow_short_retention)  # before any JVM
    tables = _existing(settings, _tables(args, settings, _maintained(settings)), skip_missing=args.all)
    results = []
    with spark_for(settings, "tierlake-vacuum") as spark:
        for table in tables:
            report = vacuum(
                spark,
                settings,
                table,
                retention_hours=hours,
                allow_short_retention=args.allow_short_retention,
                dry_run=not args.execute,
            )
            results.append(asdict(report) | {"deleted": report.deleted, "lineage": _vacuum_record(settings, report)})
    _emit(
        args,
        results,
        lambda r: (
            f"{r['table']}: {'would delete' if r['dry_run'] else 'deleted'} "
            f"{len(r['deletable']) if r['dry_run'] else r['deleted']} files older than {r['retention_hours']:g} h "
            f"({r['objects_after']} data objects left)"
        ),
    )
    return 0


def _vacuum_record(settings: Settings, report: VacuumReport) -> str | None:
    """Where the lineage record of an executed VACUUM went (``training.lineage_vacuum``); None for a dry run."""
    from pipelines.lake.maintenance import rust_uri  # noqa: PLC0415
    from tiers.s3 import s3_client  # noqa: PLC0415
    from training.lineage_vacuum import VacuumLog  # noqa: PLC0415

    if report.dry_run:
        return None
    return VacuumLog(s3_client(settings.s3), settings.s3.lake_bucket).record(
        uri=rust_uri(settings, report.table),
        version=report.version,
        deleted=report.deletable,
        finished_unix=report.finished_unix,
    )


def _checkpoint(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.lake.maintenance import checkpoint  # noqa: PLC0415

    tables = _existing(settings, _tables(args, settings, _maintained(settings)), skip_missing=args.all)
    results = [checkpoint(settings, table) for table in tables]
    _emit(args, results, lambda r: f"{r['table']}: checkpoint at version {r['version']}")
    return 0


def _history(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.lake.maintenance import history, table_name  # noqa: PLC0415

    table = table_name(settings, args.table)
    entries = history(settings, table, limit=args.limit)
    if args.json:
        sys.stdout.write(json.dumps(entries, default=str) + "\n")
        return 0
    for entry in entries:
        metrics = entry.get("operationMetrics") or {}
        shown = ", ".join(f"{k}={v}" for k, v in sorted(metrics.items())[:6])
        sys.stdout.write(f"{entry.get('version')}\t{entry.get('timestamp')}\t{entry.get('operation')}\t{shown}\n")
    return 0


def _stats(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.lake.maintenance import export_metrics, table_stats  # noqa: PLC0415

    tables = _existing(settings, _tables(args, settings, _maintained(settings)), skip_missing=args.all)
    stats = [table_stats(settings, table) for table in tables]
    path = export_metrics(stats, args.metrics_file or settings.maintenance.metrics_file)
    _emit(
        args,
        [asdict(s) | {"metrics_file": str(path)} for s in stats],
        lambda r: (
            f"{r['table']}: version {r['version']}, {r['files']} files ({r['small_files']} small), "
            f"{r['bytes'] / 1e6:.1f} MB, {r['rows']} rows"
            + (
                f", {r['partitions']} partitions, at most {r['max_files_per_partition']} files in one (files of the "
                + "newest: "
                + ", ".join(f"{p} {n}" for p, n in list(r["files_per_partition"].items())[-7:])
                + ")"
                if r["partitions"]
                else ""
            )
        ),
    )
    if not args.json:
        sys.stdout.write(f"metrics written to {path}\n")
    return 0


def _mirror(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.lake.mirror import mirror_prefix, mirror_table  # noqa: PLC0415

    if args.version is not None and (args.all or len(args.tables) != 1):
        raise ConfigError("--version pins one table. Fix: name exactly one table with --version")
    tables = [] if args.checkpoints_only else _tables(args, settings, settings.mirror.tables)
    tables = _existing(settings, tables, skip_missing=args.all)
    results: list[dict[str, Any]] = []
    for table in tables:
        report = mirror_table(settings, table, version=args.version)
        results.append(asdict(report) | {"ok": report.ok})
    prefixes = settings.mirror.checkpoint_prefixes if (args.checkpoints or args.checkpoints_only) else ()
    for prefix in prefixes:
        prefix_report = mirror_prefix(settings, prefix)
        results.append(asdict(prefix_report) | {"ok": prefix_report.ok})

    def line(r: dict[str, Any]) -> str:
        state = "verified" if r["ok"] else f"MISMATCH {r['mismatched'][:5]}"
        if "table" in r:
            return (
                f"{r['table']} version {r['version']}: {r['data_files_copied']} of {r['data_files']} data files and "
                f"{r['log_files_copied']} log files copied ({r['bytes_copied'] / 1e6:.1f} MB); rows "
                f"{r['rows_source']} = {r['rows_mirror']}; {state}"
            )
        return f"{r['prefix']}: {r['copied']} of {r['objects']} objects copied; {state}"

    _emit(args, results, line)
    return ExitCode.OK if all(r["ok"] for r in results) else ExitCode.DEGRADED


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.lake.layout import migrate, pipeline_tables  # noqa: PLC0415

    tables = _existing(settings, _tables(args, settings, tuple(pipeline_tables(settings))), skip_missing=args.all)
    results = []
    with spark_for(settings, "tierlake-migrate") as spark:
        for table in tables:
            report = migrate(spark, settings, table, execute=args.execute)
            results.append(asdict(report) | {"migrated": report.migrated})
    _emit(
        args,
        results,
        lambda r: (
            f"{r['table']}: partitioned by {r['partitioned_before']} -> [{r['partition_column']!r}]: "
            + (
                f"would rewrite {r['rows_before']} rows in {r['files_before']} files (add --execute)"
                if r["dry_run"] and r["version_after"] is None
                else f"version {r['version_before']} -> {r['version_after']}, rows {r['rows_before']} -> "
                f"{r['rows_after']}, checksum equal, files {r['files_before']} -> {r['files_after']}"
            )
        ),
    )
    return 0


def _add_tables(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("tables", nargs="*", metavar="TABLE", help="table path in the lake, e.g. silver/ev")
    parser.add_argument("--all", action="store_true", help=f"every table of {what} in conf/")
    parser.add_argument("--json", action="store_true")


def register(sub: Subparsers) -> None:
    table = sub.add_parser("table", help="Delta table maintenance: optimize, vacuum, history, mirror")
    actions = table.add_subparsers(dest="action", required=True)

    optimize = actions.add_parser("optimize", help="compact or Z-order a table as conf/ maintenance.tables says")
    _add_tables(optimize, "maintenance.tables")
    optimize.set_defaults(handler=_optimize)

    vacuum = actions.add_parser("vacuum", help="delete files removed from the table longer ago than the retention")
    _add_tables(vacuum, "maintenance.tables")
    vacuum.add_argument("--retention-hours", type=float, help="default maintenance.vacuum_retention_hours (168)")
    vacuum.add_argument(
        "--allow-short-retention",
        action="store_true",
        help="allow a retention under 168 hours (breaks readers of older snapshots)",
    )
    vacuum.add_argument(
        "--execute", action="store_true", help="delete the files (without it: a dry run listing what would go)"
    )
    vacuum.set_defaults(handler=_vacuum)

    checkpoint = actions.add_parser("checkpoint", help="write a checkpoint of the latest version")
    _add_tables(checkpoint, "maintenance.tables")
    checkpoint.set_defaults(handler=_checkpoint)

    history = actions.add_parser("history", help="the table's commits, newest first")
    history.add_argument("table", metavar="TABLE")
    history.add_argument("--limit", type=positive_int, help="at most this many commits")
    history.add_argument("--json", action="store_true")
    history.set_defaults(handler=_history)

    stats = actions.add_parser("stats", help="files, bytes, rows, small files per table; writes Prometheus metrics")
    _add_tables(stats, "maintenance.tables")
    stats.add_argument("--metrics-file", type=Path, help="default maintenance.metrics_file")
    stats.set_defaults(handler=_stats)

    migrate = actions.add_parser(
        "migrate", help="rewrite a table once, partitioned by day as the pipeline now lays it out (nothing lost)"
    )
    _add_tables(migrate, "the pipeline (bronze, silver, gold windows and anomalies of every entity)")
    migrate.add_argument("--execute", action="store_true", help="rewrite (without it: a dry run saying what would)")
    migrate.set_defaults(handler=_migrate)

    mirror = actions.add_parser("mirror", help="copy tables (consistent snapshots) and checkpoints to the 2nd site")
    _add_tables(mirror, "mirror.tables")
    mirror.add_argument("--version", type=int, help="mirror this version of the one table named (default latest)")
    mirror.add_argument("--checkpoints", action="store_true", help="also copy mirror.checkpoint_prefixes")
    mirror.add_argument("--checkpoints-only", action="store_true", help="copy only mirror.checkpoint_prefixes")
    mirror.set_defaults(handler=_mirror)
