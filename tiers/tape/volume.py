"""The tape volume protocol and its two backends, chosen from a table (``BACKENDS``).

- ``virtual``: :class:`VirtualVolume`, a cartridge directory in the LTFS file-backend layout (tiers/tape/virtual.py).
- ``ltfs``: :class:`LtfsVolume`, any directory where an LTFS volume is mounted. Extents and the volume identity come
  from the virtual extended attributes LTFS exposes (``ltfs.startblock``, ``ltfs.partition``, ``ltfs.volumeUUID``);
  the SHA-256 is stored as ``ltfs.hash.sha256sum``.

Extended attribute names: the bare name (``ltfs.startblock``) is tried first, as LTFS exposes it on macOS; when the
file system refuses a name without a namespace (Linux: ``EOPNOTSUPP``) or has no such attribute, the ``user.``
name (``user.ltfs.startblock``) is used, which is how LTFS exposes them through FUSE on Linux. On a plain directory
(no LTFS) the ``ltfs.*`` attributes that LTFS computes are absent: the extent is then recorded as unknown
(``start_block`` -1) and the volume UUID as empty, and a warning is logged.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tierlake.errors import TapeError
from tiers.tape import ltfs_format as fmt
from tiers.tape.names import check_name, check_names
from tiers.tape.virtual import FileToWrite, VirtualCartridge

logger = logging.getLogger(__name__)
HASH_XATTR = "ltfs.hash.sha256sum"
_NO_ATTR = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EINVAL})
READ_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class WrittenFile:
    """A file on a volume, with what the catalog records about where it is."""

    name: str
    length: int
    sha256: str
    volume_uuid: str
    partition: str
    start_block: int
    generation: int


class Volume(Protocol):
    """A mounted tape volume. Verbs follow fsspec: ``ls``, ``cat_file``-like ``read``."""

    barcode: str

    def volume_uuid(self) -> str: ...

    def generation(self) -> int: ...

    def free_bytes(self) -> int: ...

    def write_files(self, files: list[FileToWrite]) -> list[WrittenFile]: ...

    def ls(self) -> list[WrittenFile]: ...

    def read(self, name: str, *, start: int = 0, length: int | None = None) -> Iterator[bytes]: ...

    def recover(self) -> int | None: ...

    def block_size(self) -> int | None:
        """The volume's LTFS record size, from its label; None where the volume does not say (a plain folder)."""
        ...


def _written(entry: fmt.IndexFile, index: fmt.Index) -> WrittenFile:
    first = entry.extents[0] if entry.extents else None
    return WrittenFile(
        name=entry.name,
        length=entry.length,
        sha256=entry.xattr(HASH_XATTR) or "",
        volume_uuid=index.volume_uuid,
        partition=first.partition if first else fmt.DATA_PARTITION,
        start_block=first.start_block if first else -1,
        generation=index.generation,
    )


class VirtualVolume:
    """A virtual cartridge mounted in a virtual drive."""

    def __init__(self, cartridge: VirtualCartridge, barcode: str) -> None:
        self.cartridge = cartridge
        self.barcode = barcode
        self._index: fmt.Index | None = None  # read once per mount: no one else writes while it is mounted

    def volume_uuid(self) -> str:
        return self.cartridge.labels()[1].volume_uuid

    def generation(self) -> int:
        return self.cartridge.index().generation

    def free_bytes(self) -> int:
        return self.cartridge.capacity_bytes - self.cartridge.used_bytes()

    def write_files(self, files: list[FileToWrite]) -> list[WrittenFile]:
        self._index = None
        index = self.cartridge.append(files)
        names = {f.name for f in files}
        return [_written(entry, index) for entry in index.files if entry.name in names]

    def ls(self) -> list[WrittenFile]:
        index = self.cartridge.index()
        return [_written(entry, index) for entry in index.files]

    def read(self, name: str, *, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The bytes of a file; the index is read from the cartridge once per mount (finding it walks the data
        partition to its end: 30 ms a file on a small cartridge, a recall reads many files per mount)."""
        if self._index is None:
            self._index = self.cartridge.index()
        entry = next((f for f in self._index.files if f.name == name), None)
        if entry is None:
            raise TapeError(f"{self.barcode}: no file {name!r} in the volume's index")
        return self.cartridge.read_file(entry, start=start, length=length)

    def recover(self) -> int | None:
        self._index = None
        index = self.cartridge.recover()
        return None if index is None else index.generation

    def block_size(self) -> int | None:
        return self.cartridge.blocksize


# ---------------------------------------------------------------------------------------------------------
# A mounted LTFS volume (any directory)


def get_xattr(path: Path, name: str) -> str | None:
    """``name`` bare, then ``user.<name>`` (see the module docstring); None when neither exists."""
    for candidate in (name, f"user.{name}"):
        try:
            return os.getxattr(path, candidate).decode("utf-8")
        except OSError as exc:
            if exc.errno not in _NO_ATTR:
                raise TapeError(f"reading extended attribute {candidate} of {path} failed: {exc}") from exc
    return None


def set_xattr(path: Path, name: str, value: str) -> None:
    """Set ``name`` bare, or ``user.<name>`` where the file system needs a namespace."""
    try:
        os.setxattr(path, name, value.encode("utf-8"))
        return
    except OSError as exc:
        if exc.errno not in _NO_ATTR:
            raise TapeError(f"setting extended attribute {name} on {path} failed: {exc}") from exc
    try:
        os.setxattr(path, f"user.{name}", value.encode("utf-8"))
    except OSError as exc:
        raise TapeError(
            f"setting extended attribute user.{name} on {path} failed: {exc}. Fix: mount the volume with "
            "extended attributes enabled (LTFS always has them; for a plain directory use ext4/xfs/tmpfs)"
        ) from exc


class LtfsVolume:
    """A directory where LTFS mounted a cartridge (or, for tests, any directory)."""

    def __init__(self, mount: Path, barcode: str) -> None:
        if not mount.is_dir():
            raise TapeError(f"LTFS mount point {mount} is not a directory. Fix: mount the volume or create it")
        self.mount = mount
        self.barcode = barcode

    def _path(self, name: str) -> Path:
        return self.mount / check_name(name, parameter="name")

    def volume_uuid(self) -> str:
        return get_xattr(self.mount, "ltfs.volumeUUID") or ""

    def generation(self) -> int:
        value = get_xattr(self.mount, "ltfs.indexGeneration")
        return int(value) if value and value.isdigit() else 0

    def block_size(self) -> int | None:
        value = get_xattr(self.mount, "ltfs.volumeBlocksize")  # set by mkltfs, exposed by ltfs on the mount
        return int(value) if value and value.isdigit() else None

    def free_bytes(self) -> int:
        stat = os.statvfs(self.mount)
        return stat.f_bavail * stat.f_frsize

    def _describe(self, path: Path) -> WrittenFile:
        block = get_xattr(path, "ltfs.startblock")
        volume = self.volume_uuid() or (get_xattr(path, "ltfs.volumeUUID") or "")
        if block is None:
            logger.warning("%s has no ltfs.startblock attribute: not an LTFS mount, extent unknown", path)
        return WrittenFile(
            name=path.name,
            length=path.stat().st_size,
            sha256=get_xattr(path, HASH_XATTR) or "",
            volume_uuid=volume,
            partition=get_xattr(path, "ltfs.partition") or fmt.DATA_PARTITION,
            start_block=int(block) if block and block.lstrip("-").isdigit() else -1,
            generation=self.generation(),
        )

    def write_files(self, files: list[FileToWrite]) -> list[WrittenFile]:
        """Every name is checked (the rules of tiers/tape/names.py, against the mount's entries) before any byte
        is written, as the virtual backend does."""
        check_names([item.name for item in files], existing=os.listdir(self.mount))
        for item in files:
            for key, _value in item.xattrs:
                check_name(key, parameter=f"FileToWrite.xattrs key of {item.name!r}")
        written = []
        for item in files:
            final = self._path(item.name)
            digest = hashlib.sha256() if item.sha256 is None else None
            try:
                with final.open("wb") as out:
                    for chunk in item.chunks:
                        out.write(chunk)
                        if digest is not None:
                            digest.update(chunk)
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as exc:
                raise TapeError(f"writing {final} on the LTFS volume {self.barcode} failed: {exc}") from exc
            hexdigest = digest.hexdigest() if digest is not None else item.sha256() if item.sha256 else ""
            for key, value in (*item.xattrs, (HASH_XATTR, hexdigest)):
                set_xattr(final, key, value)
            written.append(self._describe(final))
        return written

    def ls(self) -> list[WrittenFile]:
        return [self._describe(p) for p in sorted(self.mount.iterdir()) if p.is_file()]

    def read(self, name: str, *, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        path = self._path(name)
        try:
            handle = path.open("rb")
        except FileNotFoundError as exc:
            raise TapeError(f"{self.barcode}: no file {name!r} on the volume mounted at {self.mount}") from exc

        def chunks() -> Iterator[bytes]:
            with handle:
                handle.seek(start)
                left = length
                while left is None or left > 0:
                    piece = handle.read(READ_CHUNK if left is None else min(READ_CHUNK, left))
                    if not piece:
                        return
                    if left is not None:
                        left -= len(piece)
                    yield piece

        return chunks()

    def recover(self) -> int | None:
        return None  # LTFS recovers its own volumes at mount (ltfsck); nothing to roll back here
