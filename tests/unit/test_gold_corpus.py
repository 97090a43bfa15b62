"""Byte-level tokenizer and packing: exact round trips, fixed-length rows, every document once, deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.ingest.gold_corpus import BOS, EOS, PAD, VOCAB_SIZE, decode, encode, pack
from tierlake.errors import ConfigError


@given(st.text(max_size=300))
def test_encode_decode_round_trips_any_text(text: str) -> None:
    tokens = encode(text)
    assert tokens.dtype == np.int32
    assert tokens[0] == BOS
    assert tokens[-1] == EOS
    assert int(tokens.max()) < VOCAB_SIZE
    assert decode(tokens) == [text]


@settings(max_examples=60)
@given(st.lists(st.text(min_size=0, max_size=120), min_size=1, max_size=20), st.integers(8, 64))
def test_pack_is_fixed_length_lossless_and_pads_only_the_last_row(texts: list[str], seq_len: int) -> None:
    ids = [f"d{i}" for i in range(len(texts))]
    table = pack(ids, texts, seq_len=seq_len, batch_id=3)
    rows = [np.array(r, np.int32) for r in table["tokens"].to_pylist()]
    assert all(len(r) == seq_len for r in rows)
    flat = np.concatenate(rows)
    assert decode(flat) == texts
    pads = table["pad"].to_pylist()
    assert all(p == 0 for p in pads[:-1])
    assert pads[-1] == int((flat == PAD).sum())
    held = [d for docs in table["doc_ids"].to_pylist() for d in docs]
    assert sorted(set(held)) == sorted(ids)
    assert table["seq_id"].to_pylist()[0] == "0000000003-000000"
    assert pack(ids, texts, seq_len=seq_len, batch_id=3).equals(table)


def test_pack_rejects_a_useless_seq_len() -> None:
    with pytest.raises(ConfigError, match=r"seq_len=4 is too short.*Fix: use >= 8"):
        pack(["a"], ["text"], seq_len=4)
