"""Device prefetch: the next batches are on their way to the GPU while the current one trains.

``DevicePrefetcher(loader, device)`` keeps ``depth`` batches ahead of the one the caller holds (depth 1: the next
batch is fetched and on its way while the current one trains). On CUDA each batch is copied into a ring of
pinned host buffers (allocated once per column shape, reused after their copy has finished) and sent with
``non_blocking=True`` on a side stream; the training stream waits on the batch's event before using it and the
tensors are tied to that stream (``record_stream``) so the caching allocator never reuses them early. On the CPU the
same class yields the same batches in the same order, with the same look-ahead and the same resume state; only the
copies are skipped.

Resume stays exact: the prefetcher's ``state_dict()`` is the loader's state as it was right after the last batch
*delivered to the caller* was produced, so batches fetched ahead but not yet trained on are served again after a
restart instead of being lost (the trap of prefetching loaders, meta-pytorch/data#1520).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from tierlake.errors import TierlakeError

logger = logging.getLogger(__name__)
Batch = dict[str, torch.Tensor]


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class _Slot:
    """One pinned staging buffer per column, and the event that says its last copy has finished."""

    host: dict[str, torch.Tensor] = field(default_factory=dict)
    done: torch.cuda.Event | None = None


@dataclass
class CopyStats:
    batches: int = 0
    bytes: int = 0
    wait_s: float = 0.0  # time the caller waited for a batch (data not ready)


class DevicePrefetcher:
    """Wraps a batch iterable (a :class:`~loaders.loader.DeltaLoader`); yields batches on ``device``."""

    def __init__(self, batches: Iterable[Batch], device: torch.device | str, *, depth: int = 2) -> None:
        if depth < 1:
            raise TierlakeError(f"depth = {depth} is invalid. Fix: prefetch at least 1 batch")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise TierlakeError(f"device {self.device} asked for but CUDA is not available. Fix: use device='cpu'")
        self.batches = batches
        self.depth = depth
        self.stats = CopyStats()
        self._state: dict[str, Any] | None = None
        self._cuda = self.device.type == "cuda"
        # depth + 1 batches in flight and the one the caller holds each keep a slot until their copy is done.
        self._slots = [_Slot() for _ in range(depth + 2)] if self._cuda else []

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, Any]:
        """The wrapped loader's state after the last batch this prefetcher delivered (not the last it fetched)."""
        if self._state is not None:
            return dict(self._state)
        return self._stateful().state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._stateful().load_state_dict(state)
        self._state = None

    def _stateful(self) -> Stateful:
        if not hasattr(self.batches, "state_dict"):
            raise TierlakeError("the wrapped iterable has no state_dict(). Fix: wrap a DeltaLoader")
        stateful: Stateful = self.batches  # type: ignore[assignment]
        return stateful

    def __iter__(self) -> Iterator[Batch]:
        has_state = hasattr(self.batches, "state_dict")
        self._state = self._stateful().state_dict() if has_state else None
        stream = torch.cuda.Stream(self.device) if self._cuda else None  # type: ignore[no-untyped-call]
        in_flight: deque[tuple[Batch, torch.cuda.Event | None, dict[str, Any] | None]] = deque()
        source = iter(self.batches)
        exhausted = False
        fetched = 0
        while True:
            # depth + 1 before handing one out: while the caller holds that one, `depth` more are on their way.
            while not exhausted and len(in_flight) <= self.depth:
                batch = next(source, None)
                if batch is None:
                    exhausted = True
                    break
                state = self._stateful().state_dict() if has_state else None
                moved, event = self._send(batch, fetched, stream)
                in_flight.append((moved, event, state))
                fetched += 1
            if not in_flight:
                return
            moved, event, state = in_flight.popleft()
            if event is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(event)
                for tensor in moved.values():
                    tensor.record_stream(current)
            self._state = state
            self.stats.batches += 1
            yield moved

    def _send(
        self, batch: Batch, index: int, stream: torch.cuda.Stream | None
    ) -> tuple[Batch, torch.cuda.Event | None]:
        self.stats.bytes += sum(t.numel() * t.element_size() for t in batch.values())
        if stream is None:
            return {name: tensor.to(self.device) for name, tensor in batch.items()}, None
        slot = self._slots[index % len(self._slots)]
        if slot.done is not None:
            slot.done.synchronize()  # the slot's previous copy has left the pinned buffer
        for name, tensor in batch.items():
            staged = slot.host.get(name)
            if staged is None or staged.shape != tensor.shape or staged.dtype != tensor.dtype:
                staged = slot.host[name] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            staged.copy_(tensor)
        with torch.cuda.stream(stream):
            moved = {name: slot.host[name].to(self.device, non_blocking=True) for name in batch}
            slot.done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            slot.done.record(stream)
        return moved, slot.done
