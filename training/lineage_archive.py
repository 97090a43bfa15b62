"""Where a table version's files are on tape: the archive catalog's rows (cartridge, copy, site, extent) of the
data files a Delta table holds at one version."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
        (
            Archived(
                path=str(r["path"]),
                cartridge=str(r["cartridge"]),
                site=str(r["site"]),
                copy=int(r["copy"]),
                extent={k: r.get(k) for k in EXTENT_KEYS},
                state=str(r.get("state") or ""),
            )
            for r in mine
            if str(r["path"]) in paths
        ),
        key=lambda a: (a.path, a.copy),
    )
