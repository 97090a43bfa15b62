"""gold for the text corpus: documents tokenized and packed into fixed-length int32 sequences for training.

Tokenizer: byte-level (as ByT5): a token is a UTF-8 byte plus ``BYTE_OFFSET``, with ``PAD``/``BOS``/``EOS`` below
that. Its whole vocabulary (259 ids) is defined here, so nothing is downloaded at run time and every language and
script round-trips exactly; the price is ~4x longer sequences than a subword vocabulary.

Packing, per silver micro-batch (deterministic, so a replay writes the same rows): documents in (partition,
offset) order, each as ``BOS bytes EOS``, concatenated and cut into rows of ``SEQ_LEN`` tokens; the last row of a
batch is padded with ``PAD``. A row records which documents it holds and how much padding it carries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from tierlake import catalog
from tierlake.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

PAD, BOS, EOS = 0, 1, 2
BYTE_OFFSET = 3
VOCAB_SIZE = 256 + BYTE_OFFSET
SEQ_LEN = 2048


def encode(text: str) -> np.ndarray[Any, np.dtype[np.int32]]:
    """``BOS`` + the UTF-8 bytes of ``text`` shifted by ``BYTE_OFFSET`` + ``EOS``, as int32."""
    body = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) + BYTE_OFFSET
    return np.concatenate([np.array([BOS], np.int32), body, np.array([EOS], np.int32)])


def decode(tokens: np.ndarray[Any, np.dtype[np.int32]]) -> list[str]:
    """The documents in a token row (special tokens split them; padding is ignored)."""
    docs, current = [], bytearray()
    for token in tokens.tolist():
        if token == EOS:
            docs.append(current.decode("utf-8"))
            current = bytearray()
        elif token >= BYTE_OFFSET:
            current.append(token - BYTE_OFFSET)
    return docs


def pack(doc_ids: list[str], texts: list[str], *, seq_len: int = SEQ_LEN, batch_id: int = 0) -> pa.Table:
    """Pack documents into rows of ``seq_len`` tokens: seq_id, tokens (int32 list), doc_ids, pad."""
    if seq_len < 8:
        raise ConfigError(f"seq_len={seq_len} is too short to hold a document and its markers. Fix: use >= 8")
    pieces = [encode(text) for text in texts]
    stream = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    owners = np.repeat(np.arange(len(pieces)), [len(p) for p in pieces]) if pieces else np.zeros(0, np.int64)
    rows = max(1, -(-len(stream) // seq_len)) if len(stream) else 0
    padded = np.full(rows * seq_len, PAD, np.int32)
    padded[: len(stream)] = stream
    tokens = padded.reshape(rows, seq_len)
    ids, docs, pads = [], [], []
    for row in range(rows):
        held = owners[row * seq_len : (row + 1) * seq_len]
        ids.append(f"{batch_id:010d}-{row:06d}")
        docs.append([doc_ids[i] for i in np.unique(held)])
        pads.append(int(seq_len - len(held)))
    return pa.table(
        {
            "seq_id": pa.array(ids, pa.string()),
            "tokens": pa.ListArray.from_arrays(
                pa.array(np.arange(rows + 1) * seq_len, pa.int32()), pa.array(tokens.ravel(), pa.int32())
            ),
            "doc_ids": pa.array(docs, pa.list_(pa.string())),
            "pad": pa.array(pads, pa.int32()),
            "_batch_id": pa.array([batch_id] * rows, pa.int64()),
        }
    )


def gold_tokens_uri(lake_bucket: str, entity: str) -> str:
    return catalog.gold_tokens(lake_bucket, entity).s3a


def packed_rows(silver_rows: DataFrame, *, batch_id: int, seq_len: int = SEQ_LEN) -> pa.Table:
    """Collect a batch's documents in source order and pack them (batches are bounded by the stream's trigger)."""
    ordered = silver_rows.select("doc_id", "text", "partition", "offset").orderBy("partition", "offset").toArrow()
    return pack(ordered["doc_id"].to_pylist(), ordered["text"].to_pylist(), seq_len=seq_len, batch_id=batch_id)
