"""Small Delta tables for the loader tests, written locally with delta-rs (no services)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
from deltalake import WriterProperties, write_deltalake

TOKENS = 8


def token_rows(first_id: int, count: int, width: int = TOKENS) -> pa.Table:
    """Rows ``id`` (int64) and ``tokens`` (int32 x width) where every token of a row equals its id."""
    ids = np.arange(first_id, first_id + count, dtype=np.int64)
    tokens = pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ids, width).astype(np.int32)), width)
    return pa.table({"id": ids, "tokens": tokens, "part": pa.array(ids % 3, pa.int64())})


def write_token_table(
    path: Path, file_rows: Sequence[int], *, row_group_rows: int = 37, partition: bool = False
) -> int:
    """One Delta commit per entry of ``file_rows`` (so several files and uneven row groups); returns the rows."""
    first = 0
    props = WriterProperties(max_row_group_size=row_group_rows, write_batch_size=row_group_rows)
    for rows in file_rows:
        write_deltalake(
            str(path),
            token_rows(first, rows),
            mode="append",
            partition_by=["part"] if partition else None,
            writer_properties=props,
        )
        first += rows
    return first
