"""One read of the source, several copies written at once: a producer thread reads and hashes the stream once and
hands every chunk (immutable ``bytes``, shared, not copied) to one bounded queue per copy.

hashlib releases the GIL on large buffers, so hashing overlaps the copies' writes on another core. A copy that
stops early (its writer failed) cancels the producer, so no thread is left blocked on a full queue.
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
    def __init__(self, source: Iterable[bytes], copies: int, *, depth: int = 8) -> None:
        self._source = source
        self._queues: list[queue.Queue[object]] = [queue.Queue(maxsize=depth) for _ in range(copies)]
        self._digest = hashlib.sha256()
        self._finished = threading.Event()
        self._cancelled = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._produce, name="archive-tee", daemon=True)
                self._thread.start()

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
                self._digest.update(chunk)
                for target in self._queues:
                    if not self._put(target, chunk):
                        return
        except BaseException as exc:  # handed to the consumers, raised in their threads
            self._error = exc
        finally:
            self._finished.set()
            for target in self._queues:
                self._put(target, _DONE)

    def branch(self, copy: int) -> Iterator[bytes]:
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
                yield cast(bytes, item)
        finally:
            if not complete:
                self._cancelled.set()

    def cancel(self) -> None:
        self._cancelled.set()

    def sha256(self) -> str:
        """The digest of the whole stream; valid once a branch is exhausted."""
        self._finished.wait()
        return self._digest.hexdigest()
