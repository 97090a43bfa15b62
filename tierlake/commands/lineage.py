"""``tierlake lineage trace <run>[@<step>] | <table>[@<version>]``, ``tierlake lineage sync`` and ``... send``.

A checkpoint traces to the table versions it read, the Kafka offsets behind them and the cartridges and extents of
their archived files; a table version to the Kafka offsets and upstream versions that made it, the checkpoints
that read it and its files on tape. ``sync`` keeps the lineage Delta table up to date from what the lake recorded
(and posts the new events to ``checkpoint.lineage_url`` when set); ``send`` posts the events of a JSON-lines file
there, again (those a failed post left in the file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Collection
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierlake import catalog
from tierlake.commands import ExitCode, Subparsers
from tierlake.config import Settings
from tierlake.errors import ConfigError

if TYPE_CHECKING:
    from training.lineage_archive import Archived, Vacuumed
    from training.lineage_trace import VersionTrace
    from training.lineage_vacuum import VacuumLog

CHECKPOINT_EVENTS = "checkpoints.jsonl"
LAKE_EVENTS = "lake.jsonl"
VACUUM_COLUMNS = ["kind", "run_id", "event_time", "table_uri", "version", "file_path"]  # what a trace reads of them


def _target(text: str) -> tuple[str, int | None]:
    name, _, number = text.rpartition("@") if "@" in text else (text, "", "")
    if number and not number.isdigit():
        raise ConfigError(
            f"trace target {text!r}: the number after @ must be a step or a version. "
            "Fix: e.g. myrun@1200, myrun, silver/ev@42 or silver/ev"
        )
    return name, int(number) if number else None


def _table_uri(name: str, settings: Settings) -> str | None:
    """The table a trace target names (a lake path such as silver/ev, an s3:// URI, a local folder), or None when
    it names a checkpoint run (a run name has no /)."""
    if "/" not in name:
        return None
    if name.startswith("/"):
        return name
    return catalog.parse_table(name, lake_bucket=settings.s3.lake_bucket, other_buckets=True).s3


def _store(args: argparse.Namespace, settings: Settings) -> Any:
    from tiers.s3 import delta_storage_options  # noqa: PLC0415
    from training.lineage_store import LineageStore, default_uri  # noqa: PLC0415

    return LineageStore(args.lineage_table or default_uri(settings.s3.lake_bucket), delta_storage_options(settings.s3))


def _vacuum_log(settings: Settings) -> VacuumLog:
    from tiers.s3 import s3_client  # noqa: PLC0415
    from training.lineage_vacuum import VacuumLog  # noqa: PLC0415

    return VacuumLog(s3_client(settings.s3), settings.s3.lake_bucket)


def _lake_vacuums(settings: Settings, uris: list[str], held: set[str]) -> list[dict[str, Any]]:
    """The VACUUM records of the lake tables among ``uris`` (none for a table outside the lake bucket), but those
    whose run id is in ``held`` (the lineage table has them)."""
    from training.lineage_vacuum import table_path  # noqa: PLC0415

    log = _vacuum_log(settings)
    lake = settings.s3.lake_bucket
    return [
        event
        for uri in uris
        if catalog.in_lake(uri, lake) and uri.startswith("s3://")
        for event in log.events(held, table=table_path(uri, log.bucket))
    ]


def _chosen_vacuums(settings: Settings, uris: list[str], held: Collection[str]) -> list[dict[str, Any]]:
    """The VACUUM records of the tables ``uris`` (for ``lineage sync --table``), but those ``held`` already."""
    return _lake_vacuums(settings, uris, set(held))


def _held_vacuums(store: Any, uris: list[str]) -> list[dict[str, Any]]:
    """The lineage table's VACUUM rows of ``uris`` (none when there is no lineage table yet)."""
    if not store.exists():
        return []
    rows: list[dict[str, Any]] = []
    for uri in uris:
        found = store.read(columns=VACUUM_COLUMNS, table_uri=uri).to_pylist()
        rows += [r for r in found if r["kind"] == "vacuum"]
    return rows


def _vacuum_lines(vacuumed: list[Vacuumed], indent: str) -> list[str]:
    return [
        f"{indent}-> VACUUM at {item.at} (table at version {item.version}) deleted {len(item.files)} of this "
        f"version's files from the lake: {', '.join(item.files[:3])}{' ...' if len(item.files) > 3 else ''}"
        for item in vacuumed
    ]


def _archive_lines(archived: list[Archived], indent: str) -> list[str]:
    lines = []
    for item in archived:
        extent = item.extent
        lines.append(
            f"{indent}-> tape {item.site}/{item.cartridge} copy {item.copy}: {item.path} (partition "
            f"{extent.get('extent_partition')}, block {extent.get('start_block')}, {extent.get('byte_count')} bytes "
            f"at {extent.get('byte_offset')})"
            + ("; purged from the lake, on tape only" if item.state == "PURGED" else "")
        )
    return lines


def _trace_checkpoint(args: argparse.Namespace, settings: Settings, run: str, step: int | None) -> int:
    from tiers.s3 import delta_storage_options  # noqa: PLC0415
    from training.lineage import trace  # noqa: PLC0415
    from training.lineage_archive import checkpoint_copies  # noqa: PLC0415
    from training.lineage_records import vacuum_rows  # noqa: PLC0415
    from training.lineage_store import catalog_rows  # noqa: PLC0415
    from training.operations import find_manifest  # noqa: PLC0415
    from training.setup import restore_tiers  # noqa: PLC0415
    from training.tiers import step_name  # noqa: PLC0415

    tier, manifest = find_manifest(restore_tiers(settings), run, step)  # tape last: a recall of the manifest alone
    options = delta_storage_options(settings.s3)
    tape = catalog_rows(settings.archive.catalog_uri, options)
    step_prefix = f"{settings.checkpoint.prefix}/{run}/{step_name(manifest.step)}/"
    copies = checkpoint_copies(tape, settings.s3.lake_bucket, step_prefix)  # the checkpoint's own tape copies
    held = _held_vacuums(_store(args, settings), sorted(manifest.tables))
    vacuums = held + vacuum_rows(_lake_vacuums(settings, sorted(manifest.tables), {r["run_id"] for r in held}))
    tables = trace(manifest, options, catalog=tape, lake_bucket=settings.s3.lake_bucket, vacuums=vacuums)
    where = tier.where(run, manifest.step)
    if args.json:
        body = {
            "checkpoint": {"run": run, "step": manifest.step, "tier": tier.name, "where": where}
            | {"tape": [asdict(copy) for copy in copies]},
            "loader_state": manifest.loader_state,
            "code_version": manifest.code_version,
            "tables": [asdict(table) for table in tables],
        }
        sys.stdout.write(json.dumps(body, default=str) + "\n")
        return ExitCode.OK
    lines = [f"checkpoint {run}@{manifest.step} ({tier.name}: {where}), code {manifest.code_version or '?'}"]
    if manifest.loader_state:
        state = manifest.loader_state
        lines.append(f"  loader: epoch {state.get('epoch')}, samples consumed {state.get('samples_consumed')}")
    cartridges = sorted({(c.copy, c.site, c.cartridge) for c in copies})
    lines += [
        f"  on tape: {site}/{cartridge} copy {number} "
        f"({sum(1 for c in copies if c.cartridge == cartridge and c.copy == number)} files)"
        for number, site, cartridge in cartridges
    ]
    for table in tables:
        lines.append(f"  -> {table.uri} @ version {table.version} ({table.ingest_commits} ingest commits)")
        lines += _offset_lines(table.offsets, "     ")
        lines += _archive_lines(table.archived, "     ")
        lines += _vacuum_lines(table.vacuumed, "     ")
    if not tables:
        lines.append("  (the manifest names no table)")
    sys.stdout.write("\n".join(lines) + "\n")
    return ExitCode.OK


def _offset_lines(offsets: dict[str, dict[str, list[int]]], indent: str) -> list[str]:
    return [
        f"{indent}-> kafka {topic} partition {partition}: offsets {first}..{last}"
        for topic, partitions in sorted(offsets.items())
        for partition, (first, last) in sorted(partitions.items(), key=lambda item: int(item[0]))
    ]


def _version_lines(found: VersionTrace) -> list[str]:
    lines = [f"table {found.uri} @ version {found.version}: {found.operation} (from the {found.source})"]
    if found.batch is not None:
        lines.append(f"  batch {found.batch['batch_id']} of {found.batch['query']}:")
        lines += _offset_lines(found.batch["offsets"], "    ")
    lines.append(f"  up to this version: {found.ingest_commits} ingest commits")
    lines += _offset_lines(found.offsets, "    ")
    lines += [f"  <- upstream {item}" for item in found.upstream]
    lines += [
        f"  -> read by {c['job']} at version {c['version']}{'' if c['exact'] else ' (a later one)'}: {c['output']}"
        for c in found.checkpoints
    ]
    return lines + _archive_lines(found.archived, "  ") + _vacuum_lines(found.vacuumed, "  ")


def _trace_table(args: argparse.Namespace, settings: Settings, uri: str, version: int | None) -> int:
    from tiers.s3 import delta_storage_options  # noqa: PLC0415
    from training.lineage_store import catalog_rows, read_events  # noqa: PLC0415
    from training.lineage_trace import as_json, latest_version, trace_version  # noqa: PLC0415

    options = delta_storage_options(settings.s3)
    store = _store(args, settings)
    found = trace_version(
        uri,
        latest_version(uri, options) if version is None else version,
        store=store,
        options=options,
        catalog=catalog_rows(settings.archive.catalog_uri, options),
        checkpoint_events=read_events(settings.checkpoint.lineage_dir / CHECKPOINT_EVENTS),
        lake_bucket=settings.s3.lake_bucket,
        vacuum_events=_lake_vacuums(settings, [uri], {r["run_id"] for r in _held_vacuums(store, [uri])}),
    )
    sys.stdout.write((as_json(found) if args.json else "\n".join(_version_lines(found))) + "\n")
    return ExitCode.OK


def _trace(args: argparse.Namespace, settings: Settings) -> int:
    name, number = _target(args.target)
    uri = _table_uri(name, settings)
    if uri is None:
        return _trace_checkpoint(args, settings, name, number)
    return _trace_table(args, settings, uri, number)


def _sync(args: argparse.Namespace, settings: Settings) -> int:
    from training.lineage_http import lineage_http_for  # noqa: PLC0415
    from training.lineage_store import LineageSources, sync  # noqa: PLC0415

    lake = settings.s3.lake_bucket
    tables = [catalog.parse_table(t, lake_bucket=lake, other_buckets=True).s3 for t in args.table]
    if not tables:
        for name, spec in sorted(settings.entities.items()):
            tables += [t.s3 for t in catalog.entity_tables(lake, name, spec.topic)]
    folder: Path = settings.checkpoint.lineage_dir
    sources = LineageSources(
        tables=list(dict.fromkeys(tables)),
        lake_bucket=lake,
        catalog_uri=settings.archive.catalog_uri,
        audit_uri=settings.archive.audit_uri,
        checkpoint_events=folder / CHECKPOINT_EVENTS,
        events_out=folder / LAKE_EVENTS,
        http=lineage_http_for(settings.checkpoint, os.environ),  # the API key's variable, if one is named
        # --table: those tables' VACUUM records only, as for their commits; none named: every record in the lake
        vacuum_events=partial(_chosen_vacuums, settings, tables) if args.table else _vacuum_log(settings).events,
    )
    report = sync(_store(args, settings), sources)
    if args.json:
        sys.stdout.write(json.dumps(asdict(report)) + "\n")
    else:
        added = ", ".join(f"{count} {kind}" for kind, count in sorted(report.rows.items())) or "nothing new"
        posted = f", {report.posted} posted to {settings.checkpoint.lineage_url}" if report.posted else ""
        sys.stdout.write(f"lineage table {report.uri}: {added} ({report.events} events{posted})\n")
        if report.missing_tables:
            sys.stdout.write(f"not Delta tables (yet): {', '.join(report.missing_tables)}\n")
    return ExitCode.OK


def _send(args: argparse.Namespace, settings: Settings) -> int:
    from training.lineage_http import events_in, lineage_http_for  # noqa: PLC0415

    url = args.url or settings.checkpoint.lineage_url
    if not url:
        raise ConfigError(
            "lineage send: no endpoint. Fix: set checkpoint.lineage_url (TIERLAKE_CHECKPOINT__LINEAGE_URL) or pass "
            "--url http://host:port"
        )
    if args.last is not None and args.last < 1:
        raise ConfigError(f"--last = {args.last} is invalid. Fix: pass 1 or more, or leave it out for every event")
    events = events_in(args.file)
    if args.last is not None:
        events = events[-args.last :]
    http = lineage_http_for(settings.checkpoint, os.environ, url)
    posted = http.send(events, kept_in=str(args.file)) if http is not None else 0
    if args.json:
        sys.stdout.write(json.dumps({"file": str(args.file), "posted": posted, "url": url}) + "\n")
    else:
        sys.stdout.write(f"{posted} lineage events of {args.file} posted to {url}\n")
    return ExitCode.OK


def register(sub: Subparsers) -> None:
    parser = sub.add_parser("lineage", help="lineage: what a checkpoint or a table version came from")
    actions = parser.add_subparsers(dest="action", required=True)
    trace = actions.add_parser(
        "trace", help="checkpoint or table version -> table versions -> Kafka offset ranges -> cartridges"
    )
    trace.add_argument(
        "target", help="<run>@<step> or <run> (a checkpoint); <table>@<version> or <table> (silver/ev, s3://...)"
    )
    trace.add_argument("--lineage-table", default="", help="the lineage table (default s3://<lake>/_lineage/events)")
    trace.add_argument("--json", action="store_true", help="one JSON document")
    trace.set_defaults(handler=_trace)
    sync = actions.add_parser("sync", help="add to the lineage table what the lake recorded since the last sync")
    sync.add_argument("--table", action="append", default=[], help="a table to follow (default: every ingest table)")
    sync.add_argument("--lineage-table", default="", help="the lineage table (default s3://<lake>/_lineage/events)")
    sync.add_argument("--json", action="store_true", help="one JSON document")
    sync.set_defaults(handler=_sync)
    send = actions.add_parser("send", help="post the events of a JSON-lines file to the OpenLineage endpoint")
    send.add_argument("file", type=Path, help="e.g. <run_dir>/lineage/lake.jsonl or checkpoints.jsonl")
    send.add_argument("--last", type=int, help="only the file's last N events (what a failed post names)")
    send.add_argument("--url", default="", help="the endpoint's base URL (default: checkpoint.lineage_url)")
    send.add_argument("--json", action="store_true", help="one JSON document")
    send.set_defaults(handler=_send)
