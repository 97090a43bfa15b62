"""``archive run``: stage a partition's files, pack them into aggregates, write both sites in parallel, verify.

Per run: every data file of the chosen partitions is copied to the staging folder (SHA-256, rows and the record
key's min/max computed there) -> STAGED; aggregates go to one cartridge per site, both sites at once, each a new
LTFS index generation -> WRITTEN; each copy is read back from tape and every member's SHA-256 compared ->
VERIFIED. Catalog rows are appended only then, so a killed run leaves no row claiming data that was not verified;
files already in the catalog with both copies are skipped, so re-running completes an interrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from tierlake.config import ArchiveSettings, ArchiveTable
from tierlake.errors import StorageError, TapeError
from tiers.archive import aggregate
from tiers.archive.aggregate import Member
from tiers.archive.catalog import Catalog
from tiers.archive.context import ArchiveContext
from tiers.archive.policy import DataFile, snapshot
from tiers.archive.state import FileState, advance
from tiers.archive.tee import Tee
from tiers.cache.retry import Retry, ShortBody, with_retries
from tiers.store import ObjectStore, S3Store, publish_atomically
from tiers.tape.library import Library
from tiers.tape.virtual import FileToWrite
from tiers.tape.volume import Volume, WrittenFile

logger = logging.getLogger(__name__)
CHUNK = 1024 * 1024
STAGE_RETRY = Retry()
"""Downloads of one data file while staging: 8 tries, about 16 s, enough for an RGW restart (tiers/cache/retry.py)."""


@dataclass(kw_only=True)
class RunReport:
    table: str
    version: int
    partitions: list[str]
    files: int = 0
    bytes: int = 0
    skipped: int = 0
    aggregates: int = 0
    cartridges: dict[str, str] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)

    @property
    def all_verified(self) -> bool:
        return all(s == FileState.VERIFIED.value for s in self.states.values())


def file_id(table: str, path: str) -> str:
    return hashlib.sha256(f"{table}\0{path}".encode()).hexdigest()[:32]


def _stage(
    store: ObjectStore, item: DataFile, folder: Path, policy: ArchiveTable, *, retry: Retry = STAGE_RETRY
) -> dict[str, Any]:
    """Download one data file; its SHA-256, row count and key range.

    An object store that restarts mid-download (connection refused or reset, a body cut short, a 5xx) costs a
    bounded number of fresh downloads (``retry``, the rule of tiers/cache/retry.py); each one asks, with If-Match,
    for the very version the first answer had, so a replaced object stops the run (ObjectChanged) instead of being
    staged as a mix. The staged file appears only complete (``publish_atomically``) and its size must be the one
    the Delta log records. When the budget runs out, OriginUnavailable names the key and the fix; nothing was
    written to tape or catalog yet.
    """
    target = folder / hashlib.sha256(item.key.encode()).hexdigest()[:24]
    pinned: list[str] = []  # the ETag of the first answer

    def download() -> tuple[int, str]:
        digest = hashlib.sha256()
        if pinned:
            body = store.open(item.bucket, item.key, etag=pinned[0])
        else:
            info, body = store.open_info(item.bucket, item.key)
            pinned.append(info.etag)

        def chunks() -> Iterator[bytes]:
            try:
                while piece := body.read(CHUNK):
                    digest.update(piece)
                    yield piece
            finally:
                body.close()

        size = publish_atomically(target, chunks())
        if size != item.size:
            target.unlink(missing_ok=True)
            error = ShortBody if size < item.size else StorageError  # a cut body is passing, a bigger one is not
            raise error(f"s3://{item.bucket}/{item.key}: {size} bytes read, the Delta log says {item.size}")
        return size, digest.hexdigest()

    size, sha256 = with_retries(
        f"staging s3://{item.bucket}/{item.key} for the archive",
        download,
        retry,
        fix="check that the object store answers (`tierlake stack status`), then run `tierlake archive run` "
        "again: files already in the catalog are skipped",
    )
    parquet = pq.ParquetFile(target)
    rows = parquet.metadata.num_rows
    key_min = key_max = ""
    if policy.key_column in parquet.schema_arrow.names and rows:
        column = parquet.read(columns=[policy.key_column]).column(0)
        bounds = pc.min_max(column)
        key_min, key_max = str(bounds["min"].as_py()), str(bounds["max"].as_py())
    return {"source": str(target), "size": size, "sha256": sha256, "row_count": rows} | {
        "key_min": key_min,
        "key_max": key_max,
    }


def _members(
    staged: list[tuple[DataFile, dict[str, Any]]], table: str, policy: ArchiveTable, version: int, *, now: datetime
) -> list[Member]:
    retention = now + timedelta(days=policy.retention_days)
    members = []
    for item, info in staged:
        fields = {
            "file_id": file_id(table, item.path),
            "table": table,
            "path": item.path,
            "bucket": item.bucket,
            "key": item.key,
            "partition": item.partition,
            "partition_values": json.dumps(item.partition_values, sort_keys=True),
            "version_min": item.version_added,
            "version_max": version,
            "sha256": info["sha256"],
            "row_count": info["row_count"],
            "key_column": policy.key_column,
            "key_min": info["key_min"],
            "key_max": info["key_max"],
            "archived_at": now.isoformat(),
            "retention_until": retention.isoformat(),
            "hold_reason": policy.hold_reason,  # the policy's default legal hold ("" = none), kept on tape too
        }
        members.append(Member(source=Path(info["source"]), size=info["size"], fields=fields))
    return members


def _pack(members: list[Member], limit: int) -> list[list[Member]]:
    groups: list[list[Member]] = [[]]
    total = 0
    for member in members:
        if groups[-1] and total + member.size > limit:
            groups.append([])
            total = 0
        groups[-1].append(member)
        total += member.size
    return [g for g in groups if g]


def catalog_rows(
    header: dict[str, Any],
    data_offset: int,
    written: WrittenFile,
    *,
    site: str,
    copy: int,
    cartridge: str,
    blocksize: int,
) -> list[dict[str, Any]]:
    """Catalog rows of one aggregate's members on one copy (also what rebuild-catalog derives from a cartridge)."""
    rows = []
    for member in header["members"]:
        offset = data_offset + int(member["offset"])
        fields = {k: v for k, v in member.items() if k not in ("offset",)}
        fields["archived_at"] = datetime.fromisoformat(fields["archived_at"])
        fields["retention_until"] = datetime.fromisoformat(fields["retention_until"])
        rows.append(
            fields
            | {
                "copy": copy,
                "site": site,
                "cartridge": cartridge,
                "volume_uuid": written.volume_uuid,
                "generation": written.generation,
                "aggregate": written.name,
                "member_offset": offset,
                "extent_partition": written.partition,
                "start_block": written.start_block + offset // blocksize if written.start_block >= 0 else -1,
                "byte_offset": offset % blocksize,
                "byte_count": int(member["size"]),
                "state": FileState.VERIFIED.value,
                "legal_hold": bool(fields.get("hold_reason")),
                "hold_reason": str(fields.get("hold_reason") or ""),
            }
        )
    return rows


def verify_aggregate(volume: Volume, name: str, header: dict[str, Any], data_offset: int) -> list[str]:
    """Read an aggregate back in one pass; the paths of members whose SHA-256 differs ("<aggregate>" if the header)."""
    members = sorted(header["members"], key=lambda m: int(m["offset"]))
    hashers = [hashlib.sha256() for _ in members]
    position = 0
    prefix = bytearray()
    for chunk in volume.read(name):
        lo, hi = position, position + len(chunk)
        if lo < data_offset:
            prefix += chunk[: data_offset - lo]
        for member, hasher in zip(members, hashers, strict=True):
            start = data_offset + int(member["offset"])
            end = start + int(member["size"])
            if start < hi and end > lo:
                hasher.update(chunk[max(start, lo) - lo : min(end, hi) - lo])
        position = hi
    bad = [m["path"] for m, h in zip(members, hashers, strict=True) if h.hexdigest() != m["sha256"]]
    try:
        if aggregate.parse_header(bytes(prefix))[1] != header:
            bad.insert(0, "<aggregate header>")
    except TapeError:
        bad.insert(0, "<aggregate header>")
    return bad


def _write_site(
    library: Library,
    site: str,
    copy: int,
    groups: list[tuple[str, bytes, list[Member]]],
    tees: list[Tee],
    *,
    verify: bool,
    blocksize: int,
    bar: tqdm[Any],
) -> tuple[str, list[dict[str, Any]]]:
    try:
        needed = sum(len(head) + sum(m.size for m in members) for _, head, members in groups)
        barcode = library.choose(site, needed)
        with library.mount(barcode) as volume:
            files = [
                FileToWrite(name=name, chunks=_counted(tee.branch(copy - 1), bar), sha256=tee.sha256)
                for (name, _, _), tee in zip(groups, tees, strict=True)
            ]
            written = {w.name: w for w in volume.write_files(files)}
            rows = _verified_rows(
                volume,
                groups,
                written,
                barcode=barcode,
                site=site,
                copy=copy,
                verify=verify,
                blocksize=volume.block_size() or blocksize,  # the cartridge's own, if formatted at another size
            )
            return barcode, rows
    except BaseException:
        for tee in tees:  # the other site's writer must not wait for this one
            tee.cancel()
        raise


def _verified_rows(
    volume: Volume,
    groups: list[tuple[str, bytes, list[Member]]],
    written: dict[str, WrittenFile],
    *,
    barcode: str,
    site: str,
    copy: int,
    verify: bool,
    blocksize: int,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, head, _members_of in groups:
        data_offset, parsed = aggregate.parse_header(head)
        if verify and (bad := verify_aggregate(volume, name, parsed, data_offset)):
            raise TapeError(f"verify after write failed on {barcode} ({site}): {name}: {bad[:3]}")
        rows += catalog_rows(
            parsed, data_offset, written[name], site=site, copy=copy, cartridge=barcode, blocksize=blocksize
        )
    return rows


def _counted(chunks: Iterator[bytes | bytearray], bar: tqdm[Any]) -> Iterator[bytes | bytearray]:
    for chunk in chunks:
        bar.update(len(chunk))
        yield chunk


def _stage_all(
    store: S3Store,
    todo: list[DataFile],
    staging: Path,
    policy: ArchiveTable,
    states: dict[str, FileState],
    *,
    progress: bool,
    label: str,
) -> list[tuple[DataFile, dict[str, Any]]]:
    """Copy every file of the run to the staging folder (with a progress bar); each becomes STAGED."""
    staged = []
    bar = tqdm(total=len(todo), unit="file", desc=f"stage {label}", disable=not progress)
    for item in todo:
        staged.append((item, _stage(store, item, staging, policy)))
        states[item.path] = FileState.STAGED
        bar.update(1)
    bar.close()
    return staged


def _write_both_sites(
    archive: ArchiveSettings,
    groups: list[tuple[str, bytes, list[Member]]],
    *,
    progress: bool,
    label: str,
) -> list[Any]:
    """Write the aggregates to a cartridge at each site at once, from one read of the staged files (a tee)."""
    total = sum(len(h) + sum(m.size for m in g) for _, h, g in groups)
    bar = tqdm(total=2 * total, unit="B", unit_scale=True, desc=f"write 2 sites {label}", disable=not progress)
    blocksize = archive.block_size
    tees = [Tee(aggregate.chunks(head, group, blocksize), len(archive.sites)) for _, head, group in groups]
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="archive-site") as pool:
        futures = [
            pool.submit(
                _write_site,
                Library(archive),
                site,
                copy,
                groups,
                tees,
                verify=archive.verify_after_write,
                blocksize=blocksize,
                bar=bar,
            )
            for copy, site in enumerate(archive.sites, start=1)
        ]
        results = [f.result() for f in futures]
    bar.close()
    return results


def run(
    context: ArchiveContext, catalog: Catalog, table: str, partitions: list[str], *, progress: bool = True
) -> RunReport:
    from tiers.archive.policy import policy_for  # noqa: PLC0415

    archive = context.archive
    policy = policy_for(archive.tables, table)
    snap = snapshot(context.s3, table)
    known = snap.partitions()
    if missing := [p for p in partitions if p not in known]:
        raise TapeError(
            f"partition(s) {missing} not in {snap.uri} at version {snap.version}. Fix: `archive select` lists them"
        )
    report = RunReport(table=table, version=snap.version, partitions=partitions)
    done = {row["file_id"] for row in catalog.rows().select(["file_id", "copy"]).to_pylist()}
    todo = [f for p in partitions for f in known[p] if file_id(table, f.path) not in done]
    report.skipped = sum(len(known[p]) for p in partitions) - len(todo)
    if not todo:
        return report
    run_id = uuid.uuid4().hex[:12]
    staging = archive.staging_dir / run_id
    journal = staging / "journal.json"
    states: dict[str, FileState] = {}
    store = S3Store(context.s3)
    try:
        staged = _stage_all(store, todo, staging, policy, states, progress=progress, label=table)
        _journal(journal, states)
        members = _members(staged, table, policy, snap.version, now=datetime.now(UTC))
        report.cartridges, report.aggregates = write_members(archive, catalog, members, run_id, progress=progress)
        for path, state in list(states.items()):
            states[path] = advance(advance(state, FileState.WRITTEN), FileState.VERIFIED)
        _journal(journal, states)
        report.files = len(todo)
        report.bytes = sum(m.size for m in members)
        catalog.record(
            "archive",
            table=table,
            target=",".join(partitions),
            files=len(todo),
            bytes=report.bytes,
            cartridges=report.cartridges,
            version=snap.version,
        )
    finally:
        report.states = {path: state.value for path, state in states.items()}
        shutil.rmtree(staging, ignore_errors=True)
    return report


def write_members(
    archive: ArchiveSettings, catalog: Catalog, members: list[Member], run_id: str, *, progress: bool = True
) -> tuple[dict[str, str], int]:
    """Pack staged ``members`` into aggregates (in their order: the last member is the last on tape), write them
    to a cartridge at each site at once, verify every copy, then append the catalog rows of both copies in one
    Delta commit: nothing is in the catalog before both sites verified. Returns the cartridge per site and the
    number of aggregates. ``archive run`` writes a table's files through it, ``training.tape`` a checkpoint's."""
    groups = _groups(members, run_id, archive.aggregate_mb * 1024 * 1024)
    label = str(members[0].fields["table"]) if members else run_id
    results = _write_both_sites(archive, groups, progress=progress, label=label)
    catalog.append([row for _, site_rows in results for row in site_rows])
    return {site: barcode for site, (barcode, _) in zip(archive.sites, results, strict=True)}, len(groups)


def _groups(members: list[Member], run_id: str, limit: int) -> list[tuple[str, bytes, list[Member]]]:
    groups: list[tuple[str, bytes, list[Member]]] = []
    for group in _pack(members, limit):
        name = f"tlk-{run_id}-{len(groups):04d}.agg"
        groups.append((name, aggregate.header(group, extra={"run": run_id, "name": name}), group))
    return groups


def _journal(path: Path, states: dict[str, FileState]) -> None:
    publish_atomically(path, json.dumps({p: s.value for p, s in states.items()}, indent=1).encode())
