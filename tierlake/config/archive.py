"""Settings of the cold tier (tiers/tape, tiers/archive): the tape library, its two sites, the catalog and the
per-table archive policies."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tierlake.config.values import Values, positive


@dataclass(frozen=True, kw_only=True)
class ArchiveTable:
    """Cold-tier policy of one table: what goes cold when, its record key, how long the online copy stays."""

    table: str
    partition_column: str
    key_column: str
    cold_by: str  # "age" (the partition's date value) or "access" (last read through the edge cache)
    cold_after_days: int
    retention_days: int
    hold_reason: str = ""  # a legal hold put on every file archived ("" = none)


@dataclass(frozen=True, kw_only=True)
class ArchiveSettings:
    """The cold tier (tiers/tape, tiers/archive): the tape library, its sites and the catalog."""

    backend: str
    library_dir: Path
    sites: tuple[str, ...]
    cartridges_per_site: int
    drives_per_site: int
    cartridge_capacity_mb: int
    block_size: int
    aggregate_mb: int
    drive_mb_s: float
    verify_after_write: bool
    catalog_uri: str
    audit_uri: str
    staging_dir: Path
    changer_load: str
    changer_unload: str
    mount_command: str
    unmount_command: str
    tables: Mapping[str, ArchiveTable]
    recall: str = "never"  # a read of a version whose files were purged: never (NotFound), ask, auto (from tape)
    recall_to: str = "lake"  # where auto recalls put a file: lake (its original key) or cache (the edge cache only)


RECALL_MODES = ("never", "ask", "auto")
RECALL_TARGETS = ("lake", "cache")
_ARCHIVE_TABLE_KEYS = {"partition_column", "key_column", "cold_by", "cold_after_days", "retention_days"}
_ARCHIVE_TABLE_OPTIONAL = {"hold_reason"}


def build_archive_tables(values: Values) -> dict[str, ArchiveTable]:
    raw = values.get("archive.tables", dict, default={}, fix="a mapping of lake table path -> policy")
    tables = {}
    for name, policy in raw.items():
        fix = f"give archive.tables.{name} the keys {sorted(_ARCHIVE_TABLE_KEYS)} (optional: hold_reason)"
        if not isinstance(policy, dict) or not _ARCHIVE_TABLE_KEYS <= set(policy) <= (
            _ARCHIVE_TABLE_KEYS | _ARCHIVE_TABLE_OPTIONAL
        ):
            raise values.fail(
                "archive.tables", {name: policy}, "a table policy needs its five keys (and may have hold_reason)", fix
            )
        if policy["cold_by"] not in ("age", "access"):
            raise values.fail("archive.tables", {name: policy}, "cold_by must be age or access", fix)
        numbers = (policy["cold_after_days"], policy["retention_days"])
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
            raise values.fail("archive.tables", {name: policy}, "days must be integers >= 0", fix)
        tables[str(name).strip("/")] = ArchiveTable(
            table=str(name).strip("/"),
            partition_column=str(policy["partition_column"]),
            key_column=str(policy["key_column"]),
            cold_by=policy["cold_by"],
            cold_after_days=policy["cold_after_days"],
            retention_days=policy["retention_days"],
            hold_reason=str(policy.get("hold_reason") or ""),
        )
    return tables


def build_archive(values: Values, root: Path, run_dir: Path) -> ArchiveSettings:
    sites = values.get("archive.sites", list, fix="two site names, e.g. [site-a, site-b]")
    if len(sites) != 2 or len(set(sites)) != 2 or not all(re.fullmatch(r"[a-z0-9-]+", str(s)) for s in sites):
        raise values.fail(
            "archive.sites", sites, "two copies need two distinct sites named a-z, 0-9, '-'", "e.g. [site-a, site-b]"
        )
    folder = values.get("archive.library_dir", str, default="", fix="a folder; empty means <run_dir>/tape")
    staging = values.get("archive.staging_dir", str, default="", fix="a folder; empty means <run_dir>/archive/staging")
    catalog = values.get("archive.catalog_uri", str, default="", fix="a folder or s3:// URI; empty: <run_dir>/archive")
    audit = values.get("archive.audit_uri", str, default="", fix="a folder or s3:// URI; empty: <run_dir>/archive")
    drive_mb_s = values.number("archive.drive_mb_s", fix="0 (no limit) or MB/s, e.g. 360", minimum=0)
    command = "a command template with {barcode} {slot} {drive} {mount} {site}, or empty"
    return ArchiveSettings(
        backend=values.get(
            "archive.backend",
            str,
            fix="virtual (a tape library on disk) or ltfs (mounted LTFS volumes)",
            check=lambda b: None if b in ("virtual", "ltfs") else "must be virtual or ltfs",
        ),
        library_dir=(root / folder) if folder else run_dir / "tape",
        sites=tuple(str(s) for s in sites),
        cartridges_per_site=values.get("archive.cartridges_per_site", int, check=positive, fix="e.g. 4"),
        drives_per_site=values.get("archive.drives_per_site", int, check=positive, fix="e.g. 2"),
        cartridge_capacity_mb=values.get("archive.cartridge_capacity_mb", int, check=positive, fix="e.g. 3072"),
        block_size=values.get(
            "archive.block_size",
            int,
            fix="1048576 (1 MiB; mkltfs's default is 524288)",
            check=lambda n: None if 4096 <= n <= 4 * 1024 * 1024 else "LTFS blocks are 4 KiB to 4 MiB",
        ),
        aggregate_mb=values.get("archive.aggregate_mb", int, check=positive, fix="e.g. 256"),
        drive_mb_s=drive_mb_s,
        verify_after_write=values.get("archive.verify_after_write", bool, fix="true: read back and compare SHA-256"),
        catalog_uri=catalog or str(run_dir / "archive" / "catalog"),
        audit_uri=audit or str(run_dir / "archive" / "audit"),
        staging_dir=(root / staging) if staging else run_dir / "archive" / "staging",
        changer_load=values.get("archive.changer_load", str, default="", fix=command),
        changer_unload=values.get("archive.changer_unload", str, default="", fix=command),
        mount_command=values.get("archive.mount_command", str, default="", fix=command),
        unmount_command=values.get("archive.unmount_command", str, default="", fix=command),
        tables=build_archive_tables(values),
        recall=values.get(
            "archive.recall",
            str,
            default="never",
            fix="never (stop with NotFound), ask (confirm the recall plan) or auto (recall from tape)",
            check=lambda m: None if m in RECALL_MODES else f"must be one of {', '.join(RECALL_MODES)}",
        ),
        recall_to=values.get(
            "archive.recall_to",
            str,
            default="lake",
            fix="lake (back under the original keys) or cache (only into this node's edge cache)",
            check=lambda t: None if t in RECALL_TARGETS else f"must be one of {', '.join(RECALL_TARGETS)}",
        ),
    )
