"""Small Delta tables on the test stack's RGW, written by delta-rs, for the maintenance, CLI and DAG tests."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from pipelines.lake import maintenance
from tierlake.config import ArchiveSettings, ArchiveTable, Settings
from tiers.s3 import delta_storage_options


def small_table(settings: Settings, prefix: str, *, appends: int, rows: int, stations: int = 3) -> str:
    """A fresh table ``scratch/<prefix>_<random>`` of ``appends`` files of ``rows`` rows (one commit each).

    Columns ``station_id`` (``stations`` distinct values) and ``power_kw`` (distinct across the table).
    Returns the table's path inside the lake bucket.
    """
    table = f"scratch/{prefix}_{uuid.uuid4().hex[:8]}"
    for i in range(appends):
        batch = pa.table(
            {"station_id": [f"st-{i % stations}"] * rows, "power_kw": [float(i * rows + j) for j in range(rows)]}
        )
        write_deltalake(
            maintenance.rust_uri(settings, table),
            batch,
            mode="append",
            storage_options=delta_storage_options(settings.s3),
        )
    return table


def scratch_archive(
    archive: ArchiveSettings, folder: Path, tables: Mapping[str, ArchiveTable] | None = None
) -> ArchiveSettings:
    """The archive section pointed at a test's own folder (tape library, catalog, audit log, staging), with small
    blocks and two cartridges per site; ``tables``: the archive policies, if the test sets its own."""
    return dataclasses.replace(
        archive,
        library_dir=folder / "tape",
        catalog_uri=str(folder / "catalog"),
        audit_uri=str(folder / "audit"),
        staging_dir=folder / "staging",
        block_size=65536,
        cartridges_per_site=2,
        tables=dict(tables) if tables is not None else archive.tables,
    )
