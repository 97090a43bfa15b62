"""One read of the source, several copies written at once: a producer thread reads the stream once and hands every
chunk (shared, not copied; the source never changes a chunk once handed on) to one bounded queue per copy and to a
hasher thread.

The hash is off the copies' path: writers get each chunk as soon as it is read, and the SHA-256 (hashlib releases
the GIL on large buffers) runs on another core at the same time; only :meth:`Tee.sha256` waits for it, which the
volume calls when it writes the index, after the records. A copy that stops early (its writer failed) cancels the
producer and the hasher, so no thread is left blocked on a full queue.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import cast

from tierlake.errors import TapeError

_DONE = object()


class Tee:
    def __init__(self, source: Iterable[bytes | bytearray], copies: int, *, depth: int = 8) -> None:
        self._source = source
        self._queues: list[queue.Queue[object]] = [queue.Queue(maxsize=depth) for _ in range(copies)]
        # The hasher may lag the writers by more chunks than the writers lag the reader (it catches up while they
        # wait for their records to be durable).
        self._to_hash: queue.Queue[object] = queue.Queue(maxsize=4 * depth)
        self._digest = hashlib.sha256()
        self._finished = threading.Event()
        self._hashed = threading.Event()
        self._whole = False  # the hasher saw the end of a stream read to its end
        self._hasher: threading.Thread | None = None
        self._cancelled = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._hasher = threading.Thread(target=self._hash, name="archive-tee-sha256", daemon=True)
                self._hasher.start()
                self._thread = threading.Thread(target=self._produce, name="archive-tee", daemon=True)
                self._thread.start()

    def _hash(self) -> None:
        try:
            while True:
                try:
                    item = self._to_hash.get(timeout=0.2)
                except queue.Empty:
                    if self._cancelled.is_set():
                        return
                    continue
                if item is _DONE:
                    self._whole = self._error is None
                    return
                self._digest.update(cast(bytes | bytearray, item))
        finally:
            self._hashed.set()

    def _put(self, target: queue.Queue[object], item: object) -> bool:
        while not self._cancelled.is_set():
            try:
                target.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for chunk in self._source:
                for target in (self._to_hash, *self._queues):
                    if not self._put(target, chunk):
                        return
        except BaseException as exc:  # handed to the consumers, raised in their threads
            self._error = exc
        finally:
            self._finished.set()
            for target in (self._to_hash, *self._queues):
                self._put(target, _DONE)

    def branch(self, copy: int) -> Iterator[bytes | bytearray]:
        self._start()
        target = self._queues[copy]
        complete = False
        try:
            while True:
                try:
                    item = target.get(timeout=0.2)
                except queue.Empty:
                    if self._cancelled.is_set():
                        raise TapeError("the other copy's writer failed; this copy was stopped") from None
                    continue
                if item is _DONE:
                    if self._error is not None:
                        raise self._error
                    complete = True
                    return
                yield cast(bytes | bytearray, item)
        finally:
            if not complete:
                self._cancelled.set()

    def cancel(self) -> None:
        self._cancelled.set()

    def sha256(self) -> str:
        """The digest of the whole stream; valid once a branch is exhausted (waits for the hasher to catch up)."""
        self._finished.wait()
        self._hashed.wait()
        if not self._whole:
            raise TapeError("the stream was not read to its end; it has no SHA-256")
        return self._digest.hexdigest()
