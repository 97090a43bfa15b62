"""What compliance teams do with the archive: select, locate, restore, verify, hold/release, retention, purge,
rebuild the catalog from a cartridge. Every action is written to the audit log.

Purging deletes only the object-store copy, and only of files whose two tape copies are verified, whose retention
has ended and that no legal hold covers; anything else in scope refuses the whole purge (RetentionViolation).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tierlake.errors import ConfigError, NotFound, RetentionViolation, TapeError
from tiers.archive import aggregate
from tiers.archive.archiver import catalog_rows, verify_aggregate
from tiers.archive.catalog import Catalog, quote
from tiers.archive.context import ArchiveContext
from tiers.archive.policy import is_cold, policy_for, snapshot
from tiers.archive.state import FileState
from tiers.store import S3Store, publish_atomically
from tiers.tape.library import Library

logger = logging.getLogger(__name__)
HEADER_PROBE = 1024 * 1024


def select(context: ArchiveContext, catalog: Catalog, table: str) -> list[dict[str, Any]]:
    """Cold partitions not yet archived, with the reason each is cold."""
    policy = policy_for(context.archive.tables, table)
    snap = snapshot(context.s3, table)
    archived = {r["path"] for r in catalog.rows().select(["table", "path"]).to_pylist() if r["table"] == table}
    now = datetime.now(UTC)
    chosen = []
    for partition, files in snap.partitions().items():
        if all(f.path in archived for f in files):
            continue
        cold, why = is_cold(policy, files, now=now, cache_index=context.cache_index)
        if cold:
            chosen.append(
                {"partition": partition, "files": len(files), "bytes": sum(f.size for f in files), "why": why}
            )
    return chosen


def _scope(table: str | None, partition: str | None = None, file: str | None = None, key: str | None = None) -> str:
    terms = []
    if table:
        terms.append(f'"table" = {quote(table.strip("/"))}')
    if partition:
        terms.append(f"partition = {quote(partition)}")
    if file:
        terms.append(f"(path = {quote(file)} OR key = {quote(file)})")
    if key:
        terms.append(f"key_min <= {quote(key)} AND {quote(key)} <= key_max")
    if not terms:
        raise ConfigError("name what to act on. Fix: give --table, --partition, --file or --key")
    return " AND ".join(terms)


def find(catalog: Catalog, predicate: str) -> list[dict[str, Any]]:
    from tiers.archive.catalog import query  # noqa: PLC0415

    sql = f'SELECT * FROM catalog WHERE {predicate} ORDER BY "table", path, copy'  # noqa: S608 - quoted literals
    found: list[dict[str, Any]] = query(sql, catalog=catalog.dataset(), audit=catalog.audit_dataset()).to_pylist()
    return found


def locate(catalog: Catalog, table: str, key: str) -> list[dict[str, Any]]:
    """Files whose record-key range holds ``key`` (min/max compare as strings), with their cartridge and extent."""
    rows = find(catalog, _scope(table, key=key))
    catalog.record("query", table=table, target=f"key={key}", matches=len(rows))
    columns = ["path", "partition", "copy", "site", "cartridge", "volume_uuid", "aggregate", "extent_partition"]
    columns += ["start_block", "byte_offset", "byte_count", "sha256", "state", "key_min", "key_max"]
    return [{c: r[c] for c in columns} for r in rows]


@dataclass(kw_only=True)
class RestoreReport:
    restored: list[dict[str, Any]] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)


def safe_destination(root: Path, bucket: str, key: str) -> Path:
    """``root/bucket/key``, refusing anything that would land outside ``root``."""
    parts = [bucket, *key.split("/")]
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ConfigError(f"restore destination {bucket}/{key!r} escapes {root}: '..', '.' or empty segments refused")
    target = (root / Path(*parts)).resolve()
    if not target.is_relative_to(root.resolve()):
        raise ConfigError(f"restore destination {target} escapes {root}. Fix: restore to a folder that holds it")
    return target


def _read_member(library: Library, row: dict[str, Any]) -> bytes:
    with library.mount(row["cartridge"]) as volume:
        return b"".join(volume.read(row["aggregate"], start=int(row["member_offset"]), length=int(row["size"])))


def restore(
    context: ArchiveContext, catalog: Catalog, predicate: str, destination: str, *, progress: bool = True
) -> RestoreReport:
    rows = find(catalog, predicate)
    if not rows:
        raise NotFound(f"nothing in the catalog matches {predicate}. Fix: `tierlake archive locate` or `query`")
    copies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        copies[row["file_id"]].append(row)
    library = Library(context.archive)
    store = S3Store(context.s3)
    report = RestoreReport()
    if destination not in ("s3", "cache"):
        root = Path(destination)
        for group in copies.values():
            safe_destination(root, group[0]["bucket"], group[0]["key"])  # refuse before reading any tape
    bar = tqdm(total=len(copies), unit="file", desc="restore", disable=not progress)
    for group in copies.values():
        data, used = None, None
        for row in sorted(group, key=lambda r: r["copy"]):
            try:
                candidate = _read_member(library, row)
            except TapeError as exc:
                logger.warning("restore: copy %s on %s unreadable: %s", row["copy"], row["cartridge"], exc)
                report.fallbacks.append(f"{row['path']}: copy {row['copy']} ({row['cartridge']}) unreadable")
                continue
            if hashlib.sha256(candidate).hexdigest() == row["sha256"]:
                data, used = candidate, row
                break
            report.fallbacks.append(f"{row['path']}: copy {row['copy']} ({row['cartridge']}) SHA-256 mismatch")
        if data is None or used is None:
            raise TapeError(f"no healthy copy of {group[0]['path']} ({len(group)} copies tried): {report.fallbacks}")
        where = _put(context, store, used, data, destination)
        report.restored.append(
            {"path": used["path"], "to": where, "copy": used["copy"], "cartridge": used["cartridge"]}
        )
        catalog.record("restore", table=used["table"], target=used["path"], to=where, copy=used["copy"])
        bar.update(1)
    bar.close()
    if destination in ("s3", "cache"):
        ids = ",".join(quote(i) for i in copies)
        catalog.update(f"file_id IN ({ids}) AND state = 'PURGED'", {"state": quote(FileState.VERIFIED.value)})
    return report


def _put(context: ArchiveContext, store: S3Store, row: dict[str, Any], data: bytes, destination: str) -> str:
    if destination in ("s3", "cache"):
        store.pipe_file(row["bucket"], row["key"], data)
        if destination == "cache":
            from tiers.cache import cache_from_settings  # noqa: PLC0415

            cache_from_settings(context.cache, context.s3).get_path(row["bucket"], row["key"])
        return f"s3://{row['bucket']}/{row['key']}"
    target = safe_destination(Path(destination), row["bucket"], row["key"])
    publish_atomically(target, data)
    return str(target)


def verify(
    context: ArchiveContext, catalog: Catalog, cartridge: str | None, *, progress: bool = True
) -> dict[str, Any]:
    """Re-read every aggregate of the cartridge(s) in the catalog; report the members that no longer match."""
    rows = catalog.rows().to_pylist()
    by_cartridge: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if cartridge is None or row["cartridge"] == cartridge:
            by_cartridge[row["cartridge"]][row["aggregate"]].append(row)
    if cartridge is not None and cartridge not in by_cartridge:
        raise NotFound(f"cartridge {cartridge!r} holds nothing in the catalog. Fix: `archive query` lists cartridges")
    library = Library(context.archive)
    bad: list[dict[str, Any]] = []
    checked = 0
    bar = tqdm(total=sum(len(a) for a in by_cartridge.values()), unit="aggregate", desc="verify", disable=not progress)
    for barcode, aggregates in sorted(by_cartridge.items()):
        with library.mount(barcode) as volume:
            for name, members in aggregates.items():
                try:
                    head = b"".join(volume.read(name, length=HEADER_PROBE))
                    data_offset, header = aggregate.parse_header(head[: aggregate.header_length(head)])
                    header["members"] = [
                        m | {"sha256": next((r["sha256"] for r in members if r["path"] == m["path"]), m["sha256"])}
                        for m in header["members"]
                    ]
                    failed = verify_aggregate(volume, name, header, data_offset)
                except TapeError as exc:
                    failed = [f"<unreadable: {exc}>"]
                checked += len(members)
                bad += [{"cartridge": barcode, "aggregate": name, "path": p} for p in failed]
                bar.update(1)
    bar.close()
    bad_cartridges = sorted({b["cartridge"] for b in bad})  # which ones: the operator's report judges each cartridge
    catalog.record(
        "verify",
        target=cartridge or "*",
        checked=checked,
        bad=len(bad),
        cartridges=sorted(by_cartridge),
        bad_cartridges=bad_cartridges,
    )
    return {"cartridges": sorted(by_cartridge), "files_checked": checked, "bad": bad}


def hold(catalog: Catalog, predicate: str, *, reason: str, on: bool) -> int:
    if on and not reason.strip():
        raise ConfigError("a legal hold needs a reason. Fix: --reason 'case 2026-17'")
    updates = {"legal_hold": "true" if on else "false", "hold_reason": quote(reason if on else "")}
    count = catalog.update(predicate, updates)
    if on:
        catalog.update(f"({predicate}) AND state = 'PURGEABLE'", {"state": quote(FileState.VERIFIED.value)})
    if count == 0:
        raise NotFound(f"nothing in the catalog matches {predicate}. Fix: check --table/--partition/--file")
    catalog.record("hold" if on else "release", target=predicate, reason=reason, rows=count)
    return count


def retention(catalog: Catalog, *, apply: bool = True) -> dict[str, Any]:
    """Holds, what expires when, and VERIFIED -> PURGEABLE for files whose retention ended (both copies, no hold)."""
    now = datetime.now(UTC)
    rows = catalog.rows().to_pylist()
    held = sorted({(r["table"], r["partition"], r["path"], r["hold_reason"]) for r in rows if r["legal_hold"]})
    expiring = sorted(
        {
            (r["table"], r["path"], r["retention_until"].isoformat())
            for r in rows
            if r["retention_until"] > now and not r["legal_hold"]
        }
    )
    copies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        copies[row["file_id"]].append(row)
    ready = [
        fid
        for fid, group in copies.items()
        if len(group) >= 2
        and all(
            r["state"] == FileState.VERIFIED.value and not r["legal_hold"] and r["retention_until"] <= now
            for r in group
        )
    ]
    if apply and ready:
        ids = ",".join(quote(i) for i in ready)
        catalog.update(f"file_id IN ({ids}) AND state = 'VERIFIED'", {"state": quote(FileState.PURGEABLE.value)})
        catalog.record("retention", target="*", purgeable=len(ready))
    return {
        "held": [{"table": t, "partition": p, "path": f, "reason": why} for t, p, f, why in held],
        "expiring": [{"table": t, "path": f, "retention_until": until} for t, f, until in expiring],
        "became_purgeable": len(ready),
    }


def purge(
    context: ArchiveContext, catalog: Catalog, predicate: str, *, execute: bool, only_due: bool = False
) -> dict[str, Any]:
    """Delete the object-store copy of the verified files matching ``predicate`` (a plan without ``execute``).

    A file under legal hold or retention refuses the whole purge, unless ``only_due``: then such files are kept
    (counted in ``kept``) and the rest purged, and nothing archived is no error (the tiering DAG's daily run).
    """
    rows = find(catalog, predicate)
    if not rows and not only_due:
        raise NotFound(f"nothing archived matches {predicate}. Fix: archive it first (`tierlake archive run`)")
    now = datetime.now(UTC)
    due = [r for r in rows if not r["legal_hold"] and r["retention_until"] <= now]
    kept = len({r["file_id"] for r in rows} - {r["file_id"] for r in due})
    if only_due:
        rows = due
    for row in rows:
        if row["legal_hold"]:
            raise RetentionViolation(
                f"{row['table']}/{row['path']} is under legal hold ({row['hold_reason']}): nothing purged. "
                "Fix: `tierlake archive release` first, or narrow --partition"
            )
        if row["retention_until"] > now:
            raise RetentionViolation(
                f"{row['table']}/{row['path']} is retained until {row['retention_until'].isoformat()}: nothing purged. "
                "Fix: wait for retention to end (`tierlake archive retention`) or narrow --partition"
            )
    copies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        copies[row["file_id"]].append(row)
    ok_states = {FileState.VERIFIED.value, FileState.PURGEABLE.value}
    candidates = [g[0] for g in copies.values() if len(g) >= 2 and all(r["state"] in ok_states for r in g)]
    already = sum(1 for g in copies.values() if all(r["state"] == FileState.PURGED.value for r in g))
    plan = [f"s3://{r['bucket']}/{r['key']}" for r in candidates]
    if execute and candidates:
        store = S3Store(context.s3)
        for row in tqdm(candidates, unit="file", desc="purge", disable=len(candidates) < 20):
            store.rm(row["bucket"], row["key"])
        ids = ",".join(quote(r["file_id"]) for r in candidates)
        catalog.update(f"file_id IN ({ids})", {"state": quote(FileState.PURGED.value)})
        catalog.record("purge", table=candidates[0]["table"], target=predicate, files=len(candidates))
    return {"dry_run": not execute, "files": plan, "already_purged": already, "kept": kept}


def rebuild(context: ArchiveContext, catalog: Catalog, barcode: str, *, into: Catalog | None = None) -> int:
    """Catalog rows for a cartridge from its own LTFS index and aggregate headers (hold state is not on tape)."""
    library = Library(context.archive)
    slot = library.find(barcode)
    copy = context.archive.sites.index(slot.site) + 1
    target = into or catalog
    existing = {(r["file_id"], r["copy"]) for r in target.rows().select(["file_id", "copy"]).to_pylist()}
    rows = []
    with library.mount(barcode) as volume:
        for written in volume.ls():
            head = b"".join(volume.read(written.name, length=HEADER_PROBE))
            try:
                data_offset, header = aggregate.parse_header(head[: aggregate.header_length(head)])
            except TapeError:
                logger.warning("%s: %s is not a tierlake aggregate; skipped", barcode, written.name)
                continue
            for row in catalog_rows(
                header,
                data_offset,
                written,
                site=slot.site,
                copy=copy,
                cartridge=barcode,
                blocksize=volume.block_size() or context.archive.block_size,  # extents in the label's records
            ):
                if (row["file_id"], row["copy"]) not in existing:
                    rows.append(row)
    target.append(rows)
    catalog.record("rebuild-catalog", target=barcode, rows=len(rows), into=target.catalog_uri)
    return len(rows)


def to_json(value: Any) -> str:
    return json.dumps(value, default=str)
