"""The LLM path: token rows packed into fixed-length int32 sequences, and several tables mixed by weight.

**Packing.** Within one row group, the documents' tokens are laid end to end (``eos_token`` after each document
when given) and cut into ``seq_len`` tokens per sequence; the last ``< seq_len`` tokens of each row group are not
served (at most ``seq_len - 1`` per row group; ``len(dataset)`` counts whole sequences). A sequence is a unit:
the order, ranks, resume and drop/pad rule of :mod:`loaders.order` apply to sequences unchanged. The number of
sequences per row group is computed once per table version from the token column and cached with the plan.

**Mixing.** :class:`MixedDataset` deals positions to tables in blocks of ``block`` positions: each block holds
exactly ``round(weight * block)`` positions of each table (largest remainder), placed by a hash of (seed, block).
A table's ``i``-th draw is its sample ``i mod len`` of its own epoch ``i div len``, so a small table simply runs
more epochs. Everything is a pure function of the position, so a mixed loader resumes from one integer too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from loaders.batches import TableSource, Units
from loaders.dataset import DeltaDataset, OrderOptions
from loaders.order import IntArray, derive_key, permutation
from loaders.plan import Plan, build_plan
from loaders.recall import Recall, with_recall
from loaders.table import ArrowFileSource, DataFile, FileSource, PartitionFilter, pin_snapshot
from tierlake.errors import SchemaMismatch, TierlakeError

logger = logging.getLogger(__name__)
_SALT_MIX = 0x4D6978  # "Mix"


@dataclass(frozen=True)
class TokenDecoder:
    """Row group -> ``{"tokens": int32[n, seq_len]}`` (packed); picklable."""

    column: str
    seq_len: int
    eos_token: int | None = None

    def flat(self, table: pa.Table) -> npt.NDArray[np.int32]:
        """The row group's tokens end to end, with ``eos_token`` after each document when set."""
        column = table.column(self.column).combine_chunks()
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)) and not (
            pa.types.is_fixed_size_list(column.type)
        ):
            raise SchemaMismatch(
                f"token column {self.column!r} has type {column.type}. Fix: store tokens as a list of integers"
            )
        values = column.flatten()
        if not pa.types.is_integer(values.type):
            raise SchemaMismatch(f"token column {self.column!r} holds {values.type}. Fix: store integer token ids")
        tokens: npt.NDArray[np.int32] = np.asarray(pc.cast(values, pa.int32()).to_numpy(), dtype=np.int32)
        if self.eos_token is None:
            return tokens
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
        ends = np.cumsum(lengths) + np.arange(1, len(lengths) + 1)  # exclusive end of each doc + its EOS
        out = np.full(len(tokens) + len(lengths), self.eos_token, dtype=np.int32)
        keep = np.ones(len(out), dtype=bool)
        keep[ends - 1] = False
        out[keep] = tokens
        return out

    def __call__(self, table: pa.Table, file: DataFile, rows: int) -> Units:
        flat = self.flat(table)
        count = len(flat) // self.seq_len
        return {"tokens": flat[: count * self.seq_len].reshape(count, self.seq_len)}


def _packed_counts(plan: Plan, source: FileSource, decoder: TokenDecoder, cache_dir: Path | None) -> IntArray:
    """Sequences per row group (and tokens left over), from the token column; cached beside the plan."""
    key = hashlib.sha256(json.dumps([plan.fingerprint, decoder.column, decoder.seq_len, decoder.eos_token]).encode())
    path = cache_dir / f"packing-{key.hexdigest()[:24]}.json" if cache_dir else None
    if path is not None and path.exists():
        return np.asarray(json.loads(path.read_text(encoding="utf-8")), dtype=np.int64)
    probe = TableSource(plan=plan, files=source, columns=(decoder.column,), decoder=decoder, units=plan.rows)
    counts = np.zeros(len(plan), dtype=np.int64)
    for rg in range(len(plan)):
        units, _ = probe.read_row_group(rg)
        counts[rg] = len(units["tokens"])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(counts.tolist()), encoding="utf-8")
    return counts


def token_dataset(
    table_uri: str | Path,
    *,
    seq_len: int,
    column: str = "tokens",
    eos_token: int | None = None,
    version: int | None = None,
    timestamp: datetime | str | None = None,
    partition_filters: Sequence[PartitionFilter] = (),
    storage_options: Mapping[str, str] | None = None,
    file_source: FileSource | None = None,
    plan_cache_dir: Path | None = None,
    order: OrderOptions | None = None,
    recall: Recall | None = None,
) -> DeltaDataset:
    """A dataset of packed ``seq_len``-token sequences (batches: ``{"tokens": int32[B, seq_len]}``)."""
    if seq_len < 1:
        raise TierlakeError(f"seq_len = {seq_len} is invalid. Fix: use 1 or more tokens per sequence")
    snapshot = pin_snapshot(
        table_uri,
        version=version,
        timestamp=timestamp,
        storage_options=storage_options,
        partition_filters=partition_filters,
    )
    if column not in snapshot.schema.names:
        raise SchemaMismatch(
            f"token column {column!r} is not in {snapshot.table_uri} (columns: {snapshot.schema.names}). "
            "Fix: pass column= with the name of the token-id list column"
        )
    files = with_recall(snapshot, file_source or ArrowFileSource(storage_options), recall)
    plan = build_plan(snapshot, files, filters=partition_filters, cache_dir=plan_cache_dir)
    decoder = TokenDecoder(column=column, seq_len=seq_len, eos_token=eos_token)
    counts = _packed_counts(plan, files, decoder, plan_cache_dir)
    source = TableSource(plan=plan, files=files, columns=(column,), decoder=decoder, units=counts)
    logger.info("packed %s into %d sequences of %d tokens", snapshot.table_uri, int(counts.sum()), seq_len)
    return DeltaDataset(source, order or OrderOptions())


def block_counts(weights: Sequence[float], block: int) -> IntArray:
    """Positions of each table in one block: ``weight * block`` rounded by largest remainder (sums to block)."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) == 0 or (w < 0).any() or w.sum() <= 0:
        raise TierlakeError(f"weights {list(weights)} are invalid. Fix: give one non-negative weight per table")
    exact = w / w.sum() * block
    counts: IntArray = np.floor(exact).astype(np.int64)
    short = block - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return counts


class MixedDataset:
    """Several datasets (e.g. token tables) mixed by weight; pure in the position like a single table."""

    def __init__(
        self,
        datasets: Sequence[DeltaDataset],
        weights: Sequence[float],
        *,
        seed: int = 0,
        block: int = 1024,
        samples_per_epoch: int | None = None,
    ) -> None:
        if len(datasets) != len(weights):
            raise TierlakeError(f"{len(datasets)} datasets but {len(weights)} weights. Fix: one weight per dataset")
        if block < 1:
            raise TierlakeError(f"block = {block} is invalid. Fix: use 1 or more positions per block")
        self._datasets = tuple(datasets)
        self._counts = block_counts(weights, block)
        if empty := [i for i, d in enumerate(datasets) if len(d) == 0 and self._counts[i]]:
            raise TierlakeError(f"datasets {empty} have no samples but a weight. Fix: drop them or give weight 0")
        self._block = block
        self._seed = seed
        self._base = np.repeat(np.arange(len(datasets), dtype=np.int64), self._counts)
        if samples_per_epoch is None:  # until the first table has served one full epoch of its own
            used = [len(d) * block // int(c) for d, c in zip(datasets, self._counts, strict=True) if c]
            samples_per_epoch = min(used)
        self._length = samples_per_epoch
        self._offsets = np.cumsum([0, *[len(d.sources) for d in datasets]])

    @property
    def sources(self) -> tuple[TableSource, ...]:
        return tuple(source for dataset in self._datasets for source in dataset.sources)

    @property
    def window_row_groups(self) -> int:
        return sum(d.window_row_groups for d in self._datasets)

    @property
    def fingerprint(self) -> str:
        parts: list[Any] = [d.fingerprint for d in self._datasets]
        parts += [self._counts.tolist(), self._block, self._seed, self._length]
        return "mix:" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]

    def __len__(self) -> int:
        return self._length

    def epoch_length(self, epoch: int) -> int:
        return self._length

    def draws(self, epoch: int, positions: IntArray) -> tuple[IntArray, IntArray]:
        """(table, draw index in that table) of each position; a table's draws run on across epochs."""
        mixed = epoch * self._length + np.asarray(positions, dtype=np.int64)
        blocks, within = np.divmod(mixed, self._block)
        tables = np.empty(len(mixed), dtype=np.int64)
        draws = np.empty(len(mixed), dtype=np.int64)
        for block in np.unique(blocks):
            pattern = self._base[permutation(derive_key(self._seed, _SALT_MIX, int(block)), self._block)]
            seen = np.cumsum(pattern[:, None] == np.arange(len(self._counts))[None, :], axis=0)
            mask = blocks == block
            picked = pattern[within[mask]]
            tables[mask] = picked
            draws[mask] = block * self._counts[picked] + seen[within[mask], picked] - 1
        return tables, draws

    def locate(self, epoch: int, positions: IntArray) -> tuple[IntArray, IntArray, IntArray]:
        tables, draws = self.draws(epoch, positions)
        sources = np.empty(len(tables), dtype=np.int64)
        rgs = np.empty(len(tables), dtype=np.int64)
        offsets = np.empty(len(tables), dtype=np.int64)
        for table in np.unique(tables):
            mask = tables == table
            dataset = self._datasets[int(table)]
            table_epochs, table_positions = np.divmod(draws[mask], len(dataset))
            for table_epoch in np.unique(table_epochs):
                sub = table_epochs == table_epoch
                src, rg, off = dataset.locate(int(table_epoch), table_positions[sub])
                idx = np.nonzero(mask)[0][sub]
                sources[idx] = src + self._offsets[int(table)]
                rgs[idx], offsets[idx] = rg, off
        return sources, rgs, offsets
