"""Small Delta tables on the test stack's RGW, written by delta-rs, for the maintenance, CLI and DAG tests."""

from __future__ import annotations

import uuid

import pyarrow as pa
from deltalake import write_deltalake

from pipelines.lake import maintenance
from tierlake.config import Settings
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
