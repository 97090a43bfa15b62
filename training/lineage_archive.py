"""Where a table version's files are: on tape (the archive catalog's rows: cartridge, copy, site, extent, of the
data files a Delta table holds at one version), and which of them a VACUUM deleted from the lake."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

from tierlake.errors import NotFound
from training.lineage_store import catalog_name

EXTENT_KEYS = ("aggregate", "member_offset", "extent_partition", "start_block", "byte_offset", "byte_count")


@dataclass(frozen=True, kw_only=True)
class Archived:
    """One archived copy of a file of the version: where on tape it is, and its catalog state (``PURGED``: the
    object store's copy is gone, tape holds the only ones)."""

    path: str
    cartridge: str
    site: str
    copy: int
    extent: Mapping[str, Any]
    state: str = ""


def snapshot_paths(uri: str, version: int, options: Mapping[str, str]) -> set[str]:
    """The data files (paths relative to the table) of ``uri`` at ``version``."""
    from deltalake import DeltaTable  # noqa: PLC0415
    from deltalake.exceptions import DeltaError, TableNotFoundError  # noqa: PLC0415

    try:
        actions = DeltaTable(uri, version=version, storage_options=dict(options)).get_add_actions(flatten=True)
    except (DeltaError, TableNotFoundError, OSError) as exc:
        raise NotFound(f"{uri} has no version {version}: {exc}. Fix: `tierlake table history` lists them") from exc
    return {str(p) for p in pa.table(actions).column("path").to_pylist()}


def archived_files(
    uri: str, version: int, catalog: Sequence[Mapping[str, Any]], options: Mapping[str, str], *, lake_bucket: str
) -> list[Archived]:
    """The archived copies (catalog rows) of the files ``uri`` holds at ``version``."""
    name = catalog_name(uri, lake_bucket)
    mine = [r for r in catalog if str(r["table"]) == name]
    if not mine:
        return []
    paths = snapshot_paths(uri, version, options)
    return sorted(
        (_archived(r, str(r["path"])) for r in mine if str(r["path"]) in paths), key=lambda a: (a.path, a.copy)
    )


def checkpoint_copies(catalog: Iterable[Mapping[str, Any]], bucket: str, step_prefix: str) -> list[Archived]:
    """The tape copies of one checkpoint step (``training.tape``): the catalog rows of the files under its key
    prefix in the lake bucket (``<prefix>/<run>/<step>/``), file by file, copy by copy."""
    folder = step_prefix.strip("/") + "/"
    return sorted(
        (
            _archived(r, str(r["key"])[len(folder) :])
            for r in catalog
            if str(r["bucket"]) == bucket and str(r["key"]).startswith(folder)
        ),
        key=lambda a: (a.copy, a.path),
    )


def _archived(row: Mapping[str, Any], path: str) -> Archived:
    """One catalog row as the copy of ``path`` it describes."""
    return Archived(
        path=path,
        cartridge=str(row["cartridge"]),
        site=str(row["site"]),
        copy=int(row["copy"]),
        extent={k: row.get(k) for k in EXTENT_KEYS},
        state=str(row.get("state") or ""),
    )


@dataclass(frozen=True, kw_only=True)
class Vacuumed:
    """A VACUUM that deleted files of the traced version: that version can no longer be read whole from the lake
    (its files may still be on tape, see ``archived``)."""

    run_id: str
    at: str  # ISO time the VACUUM finished
    version: int  # the table's version when it ran
    files: list[str]  # the traced version's files it deleted


def vacuumed_files(
    uri: str, version: int, rows: Iterable[Mapping[str, Any]], options: Mapping[str, str]
) -> list[Vacuumed]:
    """The VACUUMs (lineage rows of kind ``vacuum``, ``training.lineage_records.vacuum_rows``) that deleted files
    ``uri`` holds at ``version``, oldest first."""
    deleted: dict[str, tuple[str, int, set[str]]] = {}  # run id -> (time, version, files)
    for row in rows:
        if row["kind"] == "vacuum" and row["table_uri"] == uri and row["file_path"] is not None:
            at = row["event_time"]
            when = at.isoformat() if isinstance(at, datetime) else str(at)
            deleted.setdefault(str(row["run_id"]), (when, int(row["version"]), set()))[2].add(str(row["file_path"]))
    if not deleted:
        return []
    paths = snapshot_paths(uri, version, options)
    found = [
        Vacuumed(run_id=run, at=at, version=at_version, files=sorted(files & paths))
        for run, (at, at_version, files) in deleted.items()
        if files & paths
    ]
    return sorted(found, key=lambda v: (v.at, v.run_id))
