"""The LLM path: packing documents into fixed-length int32 sequences, weighted mixing, resume of a mix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import WriterProperties, write_deltalake
from hypothesis import given, settings
from hypothesis import strategies as st

from loaders.dataset import OrderOptions
from loaders.loader import DeltaLoader
from loaders.tokens import MixedDataset, block_counts, token_dataset
from tierlake.errors import SchemaMismatch, TierlakeError

DOCS = 120


def doc_tokens(table_id: int, doc: int) -> list[int]:
    """Document ``doc`` of table ``table_id``: 1-13 tokens, each naming its table, doc and place."""
    return [table_id * 10_000_000 + doc * 100 + k for k in range(1 + (doc * 7) % 13)]


def write_docs(path: Path, table_id: int, docs: int = DOCS, row_group_rows: int = 16) -> None:
    tokens = pa.array([doc_tokens(table_id, d) for d in range(docs)], pa.list_(pa.int32()))
    props = WriterProperties(max_row_group_size=row_group_rows, write_batch_size=row_group_rows)
    write_deltalake(str(path), pa.table({"doc": np.arange(docs), "tokens": tokens}), writer_properties=props)


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("tokens")
    paths = [root / f"t{i}" for i in range(3)]
    for i, path in enumerate(paths):
        write_docs(path, i + 1, docs=DOCS * (i + 1))
    return paths


def expected_sequences(dataset_rows: list[list[list[int]]], seq_len: int, eos: int | None) -> list[tuple[int, ...]]:
    """Per row group: documents end to end (+EOS), cut into seq_len pieces, remainder dropped."""
    out: list[tuple[int, ...]] = []
    for docs in dataset_rows:
        flat = [t for doc in docs for t in ([*doc, eos] if eos is not None else doc)]
        out.extend(tuple(flat[i : i + seq_len]) for i in range(0, len(flat) - seq_len + 1, seq_len))
    return out


@pytest.mark.parametrize("eos", [None, -1])
def test_packing_serves_every_sequence_once_as_int32(tables: list[Path], eos: int | None) -> None:
    dataset = token_dataset(tables[0], seq_len=8, eos_token=eos, order=OrderOptions(seed=4, window=2))
    batches = list(DeltaLoader(dataset, batch_size=4, tail="pad", num_workers=2))
    assert all(b["tokens"].dtype.is_floating_point is False for b in batches)
    assert {str(b["tokens"].dtype) for b in batches} == {"torch.int32"}
    assert {tuple(b["tokens"].shape[1:]) for b in batches} == {(8,)}
    got = [tuple(row) for b in batches for row in b["tokens"].tolist()]
    row_groups = [[doc_tokens(1, d) for d in range(s, min(s + 16, DOCS))] for s in range(0, DOCS, 16)]
    expected = expected_sequences(row_groups, 8, eos)
    assert len(dataset) == len(expected)
    assert set(got) == set(expected)
    assert len(got) - len(expected) < 4


def test_weights_hold_exactly_per_block_and_draws_are_fresh(tables: list[Path]) -> None:
    datasets = [token_dataset(path, seq_len=4) for path in tables]
    mixed = MixedDataset(datasets, [0.5, 0.3, 0.2], seed=9, block=100)
    which, draws = mixed.draws(0, np.arange(len(mixed)))
    full_blocks = len(mixed) // 100
    for block in range(full_blocks):
        assert np.bincount(which[block * 100 : (block + 1) * 100], minlength=3).tolist() == [50, 30, 20]
    for table in range(3):
        mine = draws[which == table]
        assert sorted(mine.tolist()) == list(range(len(mine)))  # each table's draws: 0, 1, 2, ... no repeats
    assert len(mixed) <= len(datasets[0]) * 2  # ends when table 0 (weight 0.5) has served its epoch


def test_mixed_order_is_deterministic_and_resumes_on_another_world(tables: list[Path]) -> None:
    def mixed() -> MixedDataset:
        datasets = [token_dataset(path, seq_len=4, order=OrderOptions(seed=1)) for path in tables]
        return MixedDataset(datasets, [1, 1, 2], seed=3, block=64)

    reference = [row for b in DeltaLoader(mixed(), batch_size=6) for row in b["tokens"].tolist()]
    again = [row for b in DeltaLoader(mixed(), batch_size=6) for row in b["tokens"].tolist()]
    assert reference == again
    first = [DeltaLoader(mixed(), batch_size=3, rank=r, world_size=2) for r in range(2)]
    iterators = [iter(loader) for loader in first]
    before = []
    for _ in range(10):
        for it in iterators:
            before.extend(next(it)["tokens"].tolist())
    state = first[0].state_dict()
    second = [DeltaLoader(mixed(), batch_size=2, rank=r, world_size=3) for r in range(3)]
    for loader in second:
        loader.load_state_dict(state)
    after = []
    for batches in zip(*second, strict=True):
        for batch in batches:
            after.extend(batch["tokens"].tolist())
    assert before + after == reference[: len(before) + len(after)]
    assert len(reference) - len(before + after) < 6


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.floats(0, 10), min_size=1, max_size=6), block=st.integers(1, 2000))
def test_block_counts_sum_to_the_block(weights: list[float], block: int) -> None:
    if sum(weights) <= 0:
        with pytest.raises(TierlakeError, match="weights"):
            block_counts(weights, block)
        return
    counts = block_counts(weights, block)
    assert int(counts.sum()) == block
    exact = np.array(weights) / sum(weights) * block
    assert (np.abs(counts - exact) < 1 + 1e-9).all()


def test_bad_token_inputs_fail_with_the_fix(tables: list[Path], tmp_path: Path) -> None:
    with pytest.raises(SchemaMismatch, match="token column 'text'"):
        token_dataset(tables[0], seq_len=4, column="text")
    with pytest.raises(TierlakeError, match="seq_len = 0"):
        token_dataset(tables[0], seq_len=0)
    path = tmp_path / "floats"
    write_deltalake(str(path), pa.table({"tokens": pa.array([[1.5, 2.5]], pa.list_(pa.float32()))}))
    with pytest.raises(SchemaMismatch, match="holds float"):
        token_dataset(path, seq_len=1)
    with pytest.raises(TierlakeError, match="one weight per dataset"):
        MixedDataset([token_dataset(tables[0], seq_len=4)], [1, 2])
