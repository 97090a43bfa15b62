"""Cross-process entry locks on ``fcntl.flock``: the kernel drops a lock when its holder dies (even by kill -9),
so a dead filler never wedges the others: that is the stale-lock recovery.

One lock file per cache entry. Readers hold it shared while they use the entry (so eviction, which needs it
exclusive and never blocks for it, skips entries in use); a filler holds it exclusive while it downloads, so every
other process asking for the same entry waits and then reads the published file: one backend GET.
An evictor unlinks the lock file of an entry it removes; an acquirer therefore checks, once it holds the lock,
that the file it locked is still the one at the path, and starts over if not.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from tierlake.errors import StorageError

_POLL_FIRST_S = 0.001
_POLL_MAX_S = 0.05


class LockTimeout(StorageError):
    """Another process held an entry's lock past the fill timeout (a hung, not a dead, filler)."""


class EntryLock:
    """A flock on one path. Not thread-safe itself: each thread and each use opens its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.shared = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, shared: bool, timeout_s: float) -> None:
        """Block (polling, so a deadline holds) until the lock is ours."""
        deadline = time.monotonic() + timeout_s
        pause = _POLL_FIRST_S
        while True:
            if self.try_acquire(shared=shared):
                return
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"waited {timeout_s:.0f} s for the cache lock {self.path} held by another process. "
                    "Fix: raise cache.fill_timeout_s for very large objects, or find the hung reader "
                    f"(`fuser {self.path}`)"
                )
            time.sleep(pause)
            pause = min(pause * 2, _POLL_MAX_S)

    def try_acquire(self, *, shared: bool) -> bool:
        if self._fd is not None:
            self.release()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the first lock in its folder
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # an evictor unlinked it between our open and our flock: that lock protects nothing
            os.close(fd)
            return False
        self._fd, self.shared = fd, shared
        return True

    def downgrade(self) -> None:
        """Exclusive -> shared (a filler that goes on to read what it published)."""
        if self._fd is None:
            raise RuntimeError(f"downgrade of {self.path}: the lock is not held")
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        self.shared = True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def unlink(self) -> None:
        """Remove the lock file while holding it exclusive (the entry is being deleted)."""
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> EntryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
