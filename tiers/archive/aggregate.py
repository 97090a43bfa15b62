"""Aggregates: many small files packed into one large sequential object for tape, with its own index up front.

Layout: ``MAGIC (8) | header length (8, big-endian) | header JSON (UTF-8) | member bytes ...``. The header lists
every member (its catalog fields and its offset from the end of the header), so an aggregate read from a cartridge
describes itself without the catalog: ``archive rebuild-catalog`` reads only these headers and the LTFS index.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierlake.errors import TapeError

MAGIC = b"TLKAGG01"
PREFIX = 16


@dataclass(frozen=True, kw_only=True)
class Member:
    """One archived file inside an aggregate; ``fields`` are its catalog columns that do not depend on the copy."""

    source: Path
    size: int
    fields: dict[str, Any]


def header(members: list[Member], *, extra: dict[str, Any]) -> bytes:
    offset = 0
    listed = []
    for member in members:
        listed.append({**member.fields, "offset": offset, "size": member.size})
        offset += member.size
    body = json.dumps({"format": 1, **extra, "members": listed}, sort_keys=True).encode("utf-8")
    return MAGIC + struct.pack(">Q", len(body)) + body


def chunks(head: bytes, members: list[Member], chunk_bytes: int) -> Iterator[bytes | bytearray]:
    """The aggregate's bytes in ``chunk_bytes`` pieces (the volume's block size, so records need no re-slicing).

    Files are read with ``readinto`` straight into the block being filled, and a full block is handed on as it is
    (a fresh buffer is taken for the next one): no copy besides the read. The blocks are ``bytearray``; callers
    must not change them (several copies and the hasher share each one).
    """
    block = bytearray(chunk_bytes)
    view = memoryview(block)
    filled = 0
    for piece in _head_pieces(head, chunk_bytes):
        block[: len(piece)] = piece
        filled = len(piece)
        if filled == chunk_bytes:
            yield bytes(block)
            filled = 0
    for member in members:
        with member.source.open("rb", buffering=0) as source:
            while count := source.readinto(view[filled:]):
                filled += count
                if filled == chunk_bytes:
                    view.release()
                    yield block
                    block = bytearray(chunk_bytes)
                    view = memoryview(block)
                    filled = 0
    if filled:
        yield bytes(view[:filled])


def _head_pieces(head: bytes, chunk_bytes: int) -> Iterator[bytes]:
    for offset in range(0, len(head), chunk_bytes):
        yield head[offset : offset + chunk_bytes]


def parse_header(prefix: bytes) -> tuple[int, dict[str, Any]]:
    """(data offset, header) from the first bytes of an aggregate (at least ``PREFIX`` + the header)."""
    if prefix[:8] != MAGIC:
        raise TapeError(f"not a tierlake aggregate (starts {prefix[:8]!r})")
    (length,) = struct.unpack(">Q", prefix[8:16])
    if len(prefix) < PREFIX + length:
        raise TapeError(f"aggregate header truncated: {len(prefix) - PREFIX} of {length} bytes")
    parsed: dict[str, Any] = json.loads(prefix[PREFIX : PREFIX + length])
    return PREFIX + length, parsed


def header_length(prefix: bytes) -> int:
    if prefix[:8] != MAGIC:
        raise TapeError(f"not a tierlake aggregate (starts {prefix[:8]!r})")
    return PREFIX + int(struct.unpack(">Q", prefix[8:16])[0])
