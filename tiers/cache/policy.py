"""Eviction policies as pure, in-memory state machines: S3-FIFO (the cache's default) and plain LRU (the baseline).

S3-FIFO (Yang et al., SOSP 2023) keeps three FIFO queues: a small probationary queue S (10 % of the bytes), a main
queue M, and a ghost queue G of keys only. A new key enters S, or M when G remembers it. Evicting from S moves an
entry that was read again while in S to M, and drops the others into G; evicting from M gives an entry with a
non-zero frequency another round (frequency - 1), and drops the rest. A training scan reads each file once, so
its entries leave through S without pushing the re-read working set out of M: that is the scan resistance LRU
lacks.

Both classes share one interface so the persistent cache (``tiers.cache.core``) and the trace simulator
(``simulate``) drive the same code: ``insert``, ``access``, ``remove``, ``evict(need, can_evict)``. ``can_evict``
lets the caller protect entries (pinned, or in use by a reader): a protected entry is never returned.
Entry states: ``SMALL`` → (``MAIN`` | ghost) and ``MAIN`` → ``MAIN`` (another round) | evicted.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

MAX_FREQ = 3


class Queue(enum.Enum):
    SMALL = "S"
    MAIN = "M"


@dataclass(kw_only=True)
class Node:
    key: str
    size: int
    queue: Queue
    freq: int = 0


class Policy(Protocol):
    """What the cache needs from an eviction policy."""

    capacity: int

    @property
    def used(self) -> int: ...

    def __contains__(self, key: object) -> bool: ...

    def insert(self, key: str, size: int) -> None: ...

    def access(self, key: str) -> None: ...

    def remove(self, key: str) -> None: ...

    def evict(self, need: int, can_evict: Callable[[str], bool] = ...) -> list[str]: ...


def _always(_key: str) -> bool:
    return True


class S3FIFO:
    """S3-FIFO over byte sizes. ``evict(need)`` frees until ``used + need <= capacity`` or nothing is evictable."""

    def __init__(self, capacity: int, *, small_fraction: float = 0.1, ghost_entries: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity = {capacity} is invalid: must be at least 1 byte")
        if not 0 < small_fraction < 1:
            raise ValueError(f"small_fraction = {small_fraction} is invalid: must be between 0 and 1")
        self.capacity = capacity
        self.small_capacity = max(1, int(capacity * small_fraction))
        self.ghost_entries = ghost_entries
        self.small: OrderedDict[str, Node] = OrderedDict()  # first = oldest (the FIFO's tail)
        self.main: OrderedDict[str, Node] = OrderedDict()
        self.ghost: OrderedDict[str, None] = OrderedDict()
        self.small_bytes = 0
        self.main_bytes = 0

    @property
    def used(self) -> int:
        return self.small_bytes + self.main_bytes

    def __contains__(self, key: object) -> bool:
        return key in self.small or key in self.main

    def nodes(self) -> list[Node]:
        """Every resident entry, S then M, each from oldest to newest (the order to persist)."""
        return [*self.small.values(), *self.main.values()]

    def load(self, nodes: Iterable[Node], ghosts: Iterable[str] = ()) -> None:
        """Restore persisted state (nodes in queue order, oldest first)."""
        for node in nodes:
            self._push(node)
        for key in ghosts:
            self.ghost[key] = None

    def _push(self, node: Node) -> None:
        if node.queue is Queue.SMALL:
            self.small[node.key] = node
            self.small_bytes += node.size
        else:
            self.main[node.key] = node
            self.main_bytes += node.size

    def insert(self, key: str, size: int) -> None:
        if key in self:
            self.remove(key)
        queue = Queue.MAIN if self.ghost.pop(key, 0) is None else Queue.SMALL
        self._push(Node(key=key, size=size, queue=queue))

    def access(self, key: str) -> None:
        node = self.small.get(key) or self.main.get(key)
        if node is not None:
            node.freq = min(node.freq + 1, MAX_FREQ)

    def remove(self, key: str) -> None:
        if (node := self.small.pop(key, None)) is not None:
            self.small_bytes -= node.size
        elif (node := self.main.pop(key, None)) is not None:
            self.main_bytes -= node.size

    def _to_ghost(self, key: str) -> None:
        self.ghost[key] = None
        limit = self.ghost_entries if self.ghost_entries is not None else max(len(self.main), 16)
        while len(self.ghost) > limit:
            self.ghost.popitem(last=False)

    def evict(self, need: int, can_evict: Callable[[str], bool] = _always) -> list[str]:
        victims: list[str] = []
        # Each entry may be looked at a bounded number of times (frequency rounds + one protection round).
        budget = (len(self.small) + len(self.main)) * (MAX_FREQ + 3) + 1
        while self.used + need > self.capacity and (self.small or self.main) and budget > 0:
            budget -= 1
            if self.small and (self.small_bytes >= self.small_capacity or not self.main):
                victim = self._evict_small(can_evict)
            else:
                victim = self._evict_main(can_evict)
            if victim is not None:
                victims.append(victim)
        return victims

    def _evict_small(self, can_evict: Callable[[str], bool]) -> str | None:
        key, node = self.small.popitem(last=False)
        self.small_bytes -= node.size
        if node.freq > 0 or not can_evict(key):
            node.queue, node.freq = Queue.MAIN, 0
            self._push(node)
            return None
        self._to_ghost(key)
        return key

    def _evict_main(self, can_evict: Callable[[str], bool]) -> str | None:
        key, node = self.main.popitem(last=False)
        self.main_bytes -= node.size
        if node.freq > 0 or not can_evict(key):
            node.freq = max(node.freq - 1, 0)
            self._push(node)
            return None
        return key


class LRU:
    """Plain least-recently-used over byte sizes: the baseline that a scan flushes."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity = {capacity} is invalid: must be at least 1 byte")
        self.capacity = capacity
        self.entries: OrderedDict[str, int] = OrderedDict()
        self._used = 0

    @property
    def used(self) -> int:
        return self._used

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def insert(self, key: str, size: int) -> None:
        self.remove(key)
        self.entries[key] = size
        self._used += size

    def access(self, key: str) -> None:
        if key in self.entries:
            self.entries.move_to_end(key)

    def remove(self, key: str) -> None:
        if (size := self.entries.pop(key, None)) is not None:
            self._used -= size

    def evict(self, need: int, can_evict: Callable[[str], bool] = _always) -> list[str]:
        victims: list[str] = []
        for key in list(self.entries):
            if self._used + need <= self.capacity:
                break
            if can_evict(key):
                self.remove(key)
                victims.append(key)
        return victims


POLICIES: dict[str, Callable[[int], Policy]] = {"s3fifo": S3FIFO, "lru": LRU}


@dataclass(frozen=True, kw_only=True)
class TraceResult:
    requests: int
    hits: int
    bytes_requested: int
    bytes_hit: int

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return self.bytes_hit / self.bytes_requested if self.bytes_requested else 0.0


def simulate(policy: Policy, trace: Iterable[tuple[str, int]]) -> TraceResult:
    """Replay ``(key, size)`` requests through a policy: a hit is an access, a miss evicts then inserts."""
    requests = hits = bytes_requested = bytes_hit = 0
    for key, size in trace:
        requests += 1
        bytes_requested += size
        if key in policy:
            hits += 1
            bytes_hit += size
            policy.access(key)
            continue
        if size > policy.capacity:
            continue
        policy.evict(size)
        policy.insert(key, size)
    return TraceResult(requests=requests, hits=hits, bytes_requested=bytes_requested, bytes_hit=bytes_hit)


def scan_heavy_trace(*, hot_keys: int, scan_keys: int, rounds: int, size: int, seed: int = 7) -> list[tuple[str, int]]:
    """A training-like trace: a hot working set read again and again, interleaved with one-pass scans."""
    import random  # noqa: PLC0415 - only the trace generator needs it

    rng = random.Random(seed)  # noqa: S311 - a reproducible trace, not a secret
    trace: list[tuple[str, int]] = []
    scan_counter = 0
    for _ in range(rounds):
        for _ in range(hot_keys):
            trace.append((f"hot-{rng.randrange(hot_keys)}", size))
        for _ in range(scan_keys):
            trace.append((f"scan-{scan_counter}", size))
            scan_counter += 1
    return trace
