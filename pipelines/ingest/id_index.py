"""On the driver, which event ids the duplicate check's history *may* hold: most batches then probe nothing.

The history itself (:class:`pipelines.ingest.recent_ids.RecentIds`) lives in the executors' memory, and a batch
looks its valid ids up there with one Spark job. In a healthy stream none of them is there, and that job (its
planning and its scan) was about a sixth of a live batch on 2 cores. :class:`IdIndex` keeps a 64-bit hash and the
event time of every id the history holds: an id whose hash is not in it is certainly not in the history, and only
the others (a repeated event, or a hash that happens to match) are looked up in Spark, which stays the answer.

16 bytes per id in numpy arrays: two hours of a 200 records/s stream is 23 MB. Past :data:`LIMIT` ids the index
gives up (:meth:`IdIndex.full`) and every id is looked up, as before. Hashes are Python's own, salted per process:
the index never leaves the driver that built it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

LIMIT = 20_000_000
"""Most ids the index holds (320 MB); a history larger than that is probed in full each batch."""


class IdIndex:
    """Hashes of the history's ids with their event times, in sorted chunks (one per batch, merged on compact)."""

    def __init__(self) -> None:
        self._chunks: list[
            tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]
        ] = []  # (sorted hashes, their event times in µs)
        self.full = False  # past LIMIT: it no longer answers

    def __len__(self) -> int:
        return sum(len(hashes) for hashes, _ in self._chunks)

    def add(self, ids: Sequence[str], times_us: Sequence[int]) -> None:
        """Ids that joined the history, with their event times (microseconds since the epoch)."""
        if self.full or not ids:
            return
        if len(self) + len(ids) > LIMIT:
            self.full, self._chunks = True, []
            return
        hashes = _hashes(ids)
        order = np.argsort(hashes, kind="stable")
        self._chunks.append((hashes[order], np.asarray(times_us, dtype=np.int64)[order]))

    def maybe(self, ids: Sequence[str]) -> list[str]:
        """The ids of ``ids`` the history may hold (all of them once the index is full)."""
        if self.full:
            return list(ids)
        if not ids or not self._chunks:
            return []
        hashes = _hashes(ids)
        hit = np.zeros(len(ids), dtype=bool)
        for sorted_hashes, _ in self._chunks:
            at = np.searchsorted(sorted_hashes, hashes).clip(max=len(sorted_hashes) - 1)
            hit |= sorted_hashes[at] == hashes
        return [value for value, found in zip(ids, hit.tolist(), strict=True) if found]

    def compact(self, start_us: int) -> None:
        """Merge the chunks into one, without the ids whose event time is before ``start_us`` (those the history
        prunes at the same mark: the index must never hold less than the history)."""
        if self.full or not self._chunks:
            return
        hashes = np.concatenate([chunk[0] for chunk in self._chunks])
        times = np.concatenate([chunk[1] for chunk in self._chunks])
        kept = times >= start_us
        hashes, times = hashes[kept], times[kept]
        order = np.argsort(hashes, kind="stable")
        self._chunks = [(hashes[order], times[order])] if len(order) else []


def _hashes(ids: Sequence[str]) -> npt.NDArray[np.int64]:
    return np.fromiter((hash(value) for value in ids), dtype=np.int64, count=len(ids))
