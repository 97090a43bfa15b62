"""The system calls that change a virtual cartridge, in one place, each announced to a fault hook first.

Every call that changes what is on disk goes through :class:`Syscalls`: ``create`` (an ``open`` with ``O_CREAT``),
``write``, ``fsync`` (also ``fdatasync`` and a directory's fsync), ``unlink`` and ``rename``. Before each one the
``before`` hook is called with the operation and the path. Production passes no hook. Tests pass one that counts
the calls of an append and kills the process at the K-th (``os.kill(os.getpid(), SIGKILL)``), which is how the
crash sweep in ``tests/unit/test_tape_crash.py`` proves that a kill at any call of a write leaves a cartridge that
recovery brings back to a consistent state. Announcements are serialised by a lock, so a hook sees one call at a
time even while helper threads flush records.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

Hook = Callable[[str, Path], None]
"""``hook(operation, path)``: called before every ``create``, ``write``, ``fsync``, ``unlink`` and ``rename``."""

CREATE, WRITE, FSYNC, UNLINK, RENAME = "create", "write", "fsync", "unlink", "rename"
FILE_MODE = 0o644
"""The reference backend opens every record read-write, so the checking user must be able to write it (mkltfs's
own 0200 records fail ``ltfsck`` as a non-root user)."""


class Syscalls:
    """The mutating file-system calls of a cartridge, each announced to ``before`` first."""

    def __init__(self, before: Hook | None = None) -> None:
        self._before = before
        self._lock = threading.Lock()

    def _announce(self, operation: str, path: Path) -> None:
        if self._before is not None:
            with self._lock:
                self._before(operation, path)

    def create(self, path: Path, data: bytes | bytearray = b"", *, sync: bool = False) -> None:
        """A new file with ``data`` (an existing one is truncated); ``sync``: fsync it before closing."""
        self._announce(CREATE, path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            view = memoryview(data)
            while view:
                self._announce(WRITE, path)
                view = view[os.write(fd, view) :]
            if sync:
                self._announce(FSYNC, path)
                os.fsync(fd)
        finally:
            os.close(fd)

    def fsync(self, path: Path, *, data_only: bool = False) -> None:
        """fsync (or fdatasync) a file, or a directory's entries."""
        self._announce(FSYNC, path)
        flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
        fd = os.open(path, flags)
        try:
            if data_only:
                os.fdatasync(fd)
            else:
                os.fsync(fd)
        finally:
            os.close(fd)

    def unlink(self, path: Path) -> None:
        """Remove a file; one that is already gone is no call at all."""
        if not path.exists():
            return
        self._announce(UNLINK, path)
        path.unlink(missing_ok=True)

    def rename(self, source: Path, target: Path) -> None:
        self._announce(RENAME, target)
        os.replace(source, target)

    def replace(self, path: Path, data: bytes) -> None:
        """Temp file, fsync, rename over ``path``: never a partial file under the final name. The caller fsyncs
        the directory once after a batch of these."""
        temp = path.with_name(f".{path.name}.tmp")
        try:
            self.create(temp, data, sync=True)
            self.rename(temp, path)
        finally:
            temp.unlink(missing_ok=True)  # only left when the write failed; not a change to announce
