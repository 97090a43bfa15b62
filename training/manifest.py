"""The commit record of one checkpoint: written last, it is what makes the shards beside it a checkpoint.

A step folder (or prefix) without ``MANIFEST.json`` is an unfinished write and is never loaded. The manifest lists
every file of the step with its size and CRC-32C, so a reader can refuse a tier whose copy was damaged (a flipped
byte, a truncated upload) and take the next tier instead. It also carries what ties the model to its data: the
loader's ``state_dict``, the Delta table versions it read, and the code version.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import crc32c

from tierlake.errors import StorageError

MANIFEST_NAME = "MANIFEST.json"
FORMAT = "tierlake.checkpoint/1"
_CHUNK = 8 * 1024 * 1024


class CheckpointCorrupt(StorageError):
    """A tier's copy of a checkpoint fails its manifest (missing file, wrong size or checksum)."""


@dataclass(frozen=True, kw_only=True)
class ShardEntry:
    """One file of a step: its name relative to the step, its size and its CRC-32C."""

    name: str
    size: int
    crc32c: int


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What one committed checkpoint holds and where its training stood."""

    run: str
    step: int
    created_unix: float
    shards: tuple[ShardEntry, ...]
    loader_state: Mapping[str, Any] | None = None
    tables: Mapping[str, int] = field(default_factory=dict)
    code_version: str = ""
    format: str = FORMAT

    @property
    def total_bytes(self) -> int:
        return sum(shard.size for shard in self.shards)

    def to_json(self) -> bytes:
        body = {
            "format": self.format,
            "run": self.run,
            "step": self.step,
            "created_unix": self.created_unix,
            "shards": [{"name": s.name, "size": s.size, "crc32c": s.crc32c} for s in self.shards],
            "loader_state": dict(self.loader_state) if self.loader_state is not None else None,
            "tables": dict(self.tables),
            "code_version": self.code_version,
        }
        return json.dumps(body, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Manifest:
        """Parse a manifest; a damaged one is a :class:`CheckpointCorrupt` naming ``where``."""
        try:
            body = json.loads(raw)
            if body.get("format") != FORMAT:
                raise CheckpointCorrupt(
                    f"{where}: manifest format {body.get('format')!r} is not {FORMAT!r}. Fix: restore it with the "
                    "tierlake version that wrote it"
                )
            shards = tuple(
                ShardEntry(name=s["name"], size=int(s["size"]), crc32c=int(s["crc32c"])) for s in body["shards"]
            )
            return cls(
                run=str(body["run"]),
                step=int(body["step"]),
                created_unix=float(body["created_unix"]),
                shards=shards,
                loader_state=body.get("loader_state"),
                tables={str(k): int(v) for k, v in body.get("tables", {}).items()},
                code_version=str(body.get("code_version", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointCorrupt(f"{where}: the manifest is not readable ({exc}). Fix: use another tier") from exc


def copy_counting(read: Callable[[int], bytes], write: Callable[[bytes], object] | None) -> tuple[int, int]:
    """Copy chunks from ``read`` to ``write`` (None: only count); returns (size, CRC-32C) of what passed."""
    size, crc = 0, 0
    while chunk := read(_CHUNK):
        if write is not None:
            write(chunk)
        size += len(chunk)
        crc = crc32c.crc32c(chunk, crc)
    return size, crc


def checksum_stream(stream: BinaryIO) -> tuple[int, int]:
    """(size, CRC-32C) of what ``stream`` holds from its position to its end."""
    return copy_counting(stream.read, None)


def describe_folder(folder: Path) -> tuple[ShardEntry, ...]:
    """The entries of every file in a step folder except the manifest (and temporaries), sorted by name."""
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name == MANIFEST_NAME or name.endswith(".tmp"):
            continue
        with path.open("rb") as stream:
            size, crc = checksum_stream(stream)
        entries.append(ShardEntry(name=name, size=size, crc32c=crc))
    return tuple(entries)


def build_manifest(
    *,
    run: str,
    step: int,
    shards: Iterable[ShardEntry],
    loader_state: Mapping[str, Any] | None,
    tables: Mapping[str, int],
    code_version: str,
) -> Manifest:
    return Manifest(
        run=run,
        step=step,
        created_unix=time.time(),
        shards=tuple(shards),
        loader_state=loader_state,
        tables=dict(tables),
        code_version=code_version,
    )


def check_shard(expected: ShardEntry, size: int, crc: int, where: str) -> None:
    """Raise :class:`CheckpointCorrupt` when a file's size or CRC-32C differs from its manifest entry."""
    if size != expected.size:
        raise CheckpointCorrupt(
            f"{where}/{expected.name}: size {size} bytes, the manifest says {expected.size}. "
            "Fix: this copy is damaged; restore from another tier (load_latest does so by itself)"
        )
    if crc != expected.crc32c:
        raise CheckpointCorrupt(
            f"{where}/{expected.name}: CRC-32C {crc:08x}, the manifest says {expected.crc32c:08x}. "
            "Fix: this copy is damaged; restore from another tier (load_latest does so by itself)"
        )


def verify_folder(folder: Path, manifest: Manifest) -> None:
    """Check every file of ``manifest`` in ``folder``: present, same size, same checksum."""
    for entry in manifest.shards:
        path = folder / entry.name
        try:
            with path.open("rb") as stream:
                size, crc = checksum_stream(stream)
        except FileNotFoundError as exc:
            raise CheckpointCorrupt(
                f"{path}: missing, though the manifest lists it. Fix: restore from another tier"
            ) from exc
        check_shard(entry, size, crc, str(folder))
