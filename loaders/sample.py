"""A few timed batches of a token table through the loader: the trainer's first look at the lake (``tierlake
demo`` prints it beside the command that trains on the same table)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from loaders.dataset import OrderOptions
from loaders.loader import DeltaLoader
from loaders.tokens import token_dataset


def time_token_batches(
    table_uri: str,
    *,
    storage_options: Mapping[str, str] | None = None,
    seq_len: int = 256,
    batch_size: int = 8,
    batches: int = 5,
) -> dict[str, Any]:
    """Read ``batches`` batches of ``batch_size`` x ``seq_len`` tokens; their shapes, and the seconds to the first
    batch and to the last (one process, no workers: what a notebook sees)."""
    began = time.monotonic()
    dataset = token_dataset(table_uri, seq_len=seq_len, storage_options=storage_options, order=OrderOptions(seed=7))
    loader = DeltaLoader(dataset, batch_size=batch_size, num_workers=0)
    shapes: list[list[int]] = []
    first_s = 0.0
    for batch in loader:
        shapes.append(list(batch["tokens"].shape))
        if len(shapes) == 1:
            first_s = time.monotonic() - began
        if len(shapes) == batches:
            break
    return {
        "table": table_uri,
        "version": dataset.version,
        "batches": len(shapes),
        "shape": shapes[0] if shapes else None,
        "first_batch_s": round(first_s, 2),
        "total_s": round(time.monotonic() - began, 2),
    }
