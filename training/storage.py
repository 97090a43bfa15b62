"""The ``torch.distributed.checkpoint`` storage pair over the tiers: ``dcp.save``, ``dcp.async_save`` and
``dcp.load`` work unchanged.

:class:`TierWriter` is DCP's own file writer (its shard layout, its ``.metadata``) pointed at a tier's step
folder, plus the commit: once DCP's metadata is written, it lists every file with its size and CRC-32C and
publishes the manifest last and exclusively. On a folder tier it writes in place; on RGW it stages the step in a
scratch folder and uploads it shards first, manifest last. :func:`open_checkpoint` gives DCP's reader over a
verified copy: a step that fails its manifest is refused before a single tensor is read.

With several ranks (torch.distributed), every rank writes its own files and DCP calls ``finish`` on the coordinator
only. On a folder tier the ranks share the folder (one node, or a shared file system): the coordinator's manifest
lists every file in it. On RGW each other rank uploads its staged files at the end of its ``write_data`` (before
DCP gathers the ranks' results), with their CRC-32C as object metadata, and removes its staging folder; the
coordinator lists them from that metadata, uploads its own and publishes the manifest. A folder tier local to each
node of several is not supported: the coordinator's node would hold every rank's files listed but not present.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner
from torch.distributed.checkpoint.staging import BlockingAsyncStager
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from tierlake.errors import ConfigError
from training.manifest import Manifest, build_manifest, describe_folder
from training.tiers import CheckpointTier, FaultHook, FolderTier, RgwTier, commit_manifest

logger = logging.getLogger(__name__)


class TierWriter(FileSystemWriter):
    """A DCP ``StorageWriter`` that writes one step of ``run`` to ``tier`` and commits it with a manifest.

    ``loader_state``, ``tables`` (Delta table URI -> version read) and ``code_version`` go into the manifest.
    ``fault`` is the test suite's fault-injection hook, called at named points (snapshot, write, manifest).
    After ``finish``, :attr:`manifest` is the published manifest.
    """

    def __init__(
        self,
        tier: CheckpointTier,
        run: str,
        step: int,
        *,
        loader_state: Mapping[str, Any] | None = None,
        tables: Mapping[str, int] | None = None,
        code_version: str = "",
        fault: FaultHook | None = None,
        thread_count: int = 1,
        background: bool = False,
    ) -> None:
        self.tier = tier
        self.run = run
        self.step = step
        self.staging: Path | None = None
        if isinstance(tier, FolderTier):
            folder = tier.step_dir(run, step)
        else:
            self.staging = Path(tempfile.mkdtemp(prefix=f"tierlake-stage-{run}-"))
            folder = self.staging
        super().__init__(folder, thread_count=thread_count, overwrite=True)
        self.folder = folder
        self.loader_state = dict(loader_state) if loader_state is not None else None
        self.tables = dict(tables or {})
        self.code_version = code_version
        self.fault = fault
        self.background = background
        self.manifest: Manifest | None = None
        self.is_coordinator = True  # DCP says otherwise on the other ranks (set_up_storage_writer)
        self.cpu_s = 0.0  # CPU seconds of this write on DCP's thread (write_data and finish): what it cost

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        super().set_up_storage_writer(is_coordinator, *args, **kwargs)
        self.is_coordinator = is_coordinator

    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """The device -> host snapshot of ``dcp.async_save``: the only part the train step waits for."""
        if self.fault is not None:
            self.fault("snapshot")
        return super().stage(state_dict)

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        if self.background:  # the checkpointer's writes run on DCP's thread: yield the CPU to the train step
            yield_cpu()
        started = time.thread_time()
        try:
            return self._write_and_upload(plan, planner)
        finally:
            self.cpu_s += time.thread_time() - started

    def _write_and_upload(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        written = super().write_data(plan, planner)
        if self.staging is None or self.is_coordinator:
            return written
        try:  # another rank, staging for RGW: its files go up now; the coordinator lists them (module docstring)
            results = written.wait()
            self._rgw().put_files(self.run, self.step, self.staging, _file_names([results]))
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
        uploaded: Future[list[WriteResult]] = Future()
        uploaded.set_result(results)
        return uploaded

    def _put(self, manifest: Manifest, uploaded: set[str]) -> None:
        """Upload the staged step (the other ranks' files are there already) and publish the manifest."""
        if self.staging is None:
            raise ValueError("_put is for a staged step")
        if uploaded:
            self._rgw().put_step(self.staging, manifest, fault=self.fault, uploaded=uploaded)
        else:
            self.tier.put_step(self.staging, manifest, fault=self.fault)

    def _rgw(self) -> RgwTier:
        if not isinstance(self.tier, RgwTier):
            raise ConfigError(
                f"tier {self.tier!r} with several ranks: only folder tiers and RGW are supported. "
                "Fix: write several ranks to a shared folder or to RGW"
            )
        return self.tier

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        started = time.thread_time()
        try:
            self._commit(metadata, results)
        finally:
            self.cpu_s += time.thread_time() - started

    def _commit(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        if self.fault is not None:
            self.fault("write")
        super().finish(metadata, results)
        shards = describe_folder(self.folder)
        others = _file_names(results) - {entry.name for entry in shards}  # files the other ranks uploaded
        if self.staging is not None and others:
            found = (*shards, *self._rgw().shard_entries(self.run, self.step, others))
            shards = tuple(sorted(found, key=lambda entry: entry.name))
        manifest = build_manifest(
            run=self.run,
            step=self.step,
            shards=shards,
            loader_state=self.loader_state,
            tables=self.tables,
            code_version=self.code_version,
        )
        try:
            if self.staging is None:
                commit_manifest(self.folder, manifest, fault=self.fault)
            else:
                self._put(manifest, others)
        finally:
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
        self.manifest = manifest
        logger.info(
            "checkpoint committed: run %s step %d on %s (%d files, %d bytes)",
            self.run,
            self.step,
            self.tier.name,
            len(manifest.shards),
            manifest.total_bytes,
            extra={"run": self.run, "step": self.step, "tier": self.tier.name},
        )


def _file_names(results: list[list[WriteResult]]) -> set[str]:
    """The files DCP's write results name (``_StorageInfo.relative_path``), every rank's."""
    return {str(getattr(result.storage_data, "relative_path", "")) for group in results for result in group} - {""}


def yield_cpu(nice: int = 19) -> None:
    """Raise the calling thread's nice value, so background checkpoint I/O gives way to the train step on a busy
    CPU. Linux keeps a nice value per thread (threads started from this one inherit it, such as boto3's upload
    threads); elsewhere (or when refused) nothing changes.

    19, not 10: on 2 busy cores (load 9-12), alternating 15-step windows of the bench's trainer with checkpoints
    at the 500 ms cadence kept 0.79 and 0.89 of the steps/s without at nice 19, 0.72 and 0.53 at nice 10 (fewer
    saves get written under load: 6 against 10-11, the back-pressure counts them)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class HostSnapshot(BlockingAsyncStager):
    """The device -> host snapshot into one reused host buffer: one copy of the state, no allocation per save.

    Reuse is safe because the checkpointer lets one write run at a time: the buffer is free again before the next
    snapshot. When the state's layout changes (the optimizer's state appears after the first step), the buffer is
    built anew. The buffer is pinned when CUDA is there, so the copy from the GPU is a DMA.

    The train step waits for this copy, so it runs on ``copy_threads`` threads (default: up to 4, one per core;
    the tensors split into groups of about equal bytes; tensor copies release the GIL). On 2 cores, 240 MiB of
    float32 tensors took 18 ms on 2 threads against 31 ms on one. A state with tensor subclasses (DTensor, ...) is
    copied by DCP's own ``_copy_state_dict``, on the calling thread.
    """

    def __init__(self, *, fault: FaultHook | None = None, copy_threads: int | None = None) -> None:
        super().__init__(cache_staged_state_dict=True)
        self.fault = fault
        self._layout: tuple[tuple[str, tuple[int, ...], str], ...] | None = None
        threads = copy_threads if copy_threads is not None else min(4, os.cpu_count() or 1)
        if threads < 1:
            raise ValueError(f"copy_threads = {threads} is invalid. Fix: pass 1 or more (or None: one per core)")
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tierlake-snapshot") if threads > 1 else None
        self._threads = threads

    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        if self.fault is not None:
            self.fault("snapshot")
        layout = _layout(state_dict)
        if layout != self._layout:
            self.state_dict_cache = None
            self._layout = layout
        if self.state_dict_cache is None:
            self.state_dict_cache = _create_cpu_state_dict(state_dict, pin_memory=torch.cuda.is_available())
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self._pool is None or not _tensor_pairs(state_dict, self.state_dict_cache, pairs):
            return _copy_state_dict(state_dict, self.state_dict_cache)
        list(self._pool.map(_copy_group, _balanced(pairs, self._threads)))
        if any(src.is_cuda for _, src in pairs):
            torch.cuda.synchronize()
        staged: dict[str, Any] = _staged(state_dict, self.state_dict_cache)
        return staged

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        super().close()


def _tensor_pairs(state: object, cache: object, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> bool:
    """Collect (buffer, source) of every tensor; False when one is a subclass (DTensor...) or the shapes differ."""
    if isinstance(state, torch.Tensor):
        if type(state) is not torch.Tensor or type(cache) is not torch.Tensor or cache.shape != state.shape:
            return False
        pairs.append((cache, state))
        return True
    if isinstance(state, Mapping) and isinstance(cache, Mapping):
        return all(_tensor_pairs(value, cache[key], pairs) for key, value in state.items())
    if isinstance(state, list | tuple) and isinstance(cache, list | tuple):
        return all(_tensor_pairs(value, twin, pairs) for value, twin in zip(state, cache, strict=True))
    return not isinstance(cache, torch.Tensor)


def _balanced(
    pairs: list[tuple[torch.Tensor, torch.Tensor]], groups: int
) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Split the copies into ``groups`` lists of about equal bytes (largest first, each to the lightest list)."""
    lists: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(groups)]
    loads = [0] * groups
    for pair in sorted(pairs, key=lambda p: p[1].numel() * p[1].element_size(), reverse=True):
        lightest = loads.index(min(loads))
        lists[lightest].append(pair)
        loads[lightest] += pair[1].numel() * pair[1].element_size()
    return [group for group in lists if group]


def _copy_group(group: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for buffer, source in group:
        buffer.copy_(source, non_blocking=source.is_cuda)


def _staged(state: object, cache: object) -> Any:
    """``state``'s structure with the buffer's tensors in place of its own, its other values as they are (what
    DCP's ``_copy_state_dict`` returns)."""
    if isinstance(state, torch.Tensor):
        return cache
    if isinstance(state, Mapping) and isinstance(cache, Mapping):
        return {key: _staged(value, cache[key]) for key, value in state.items()}
    if isinstance(state, list | tuple) and isinstance(cache, list | tuple):
        items = [_staged(value, twin) for value, twin in zip(state, cache, strict=True)]
        return tuple(items) if isinstance(state, tuple) else items
    return state


def _layout(state: object, prefix: str = "") -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """(path, shape, dtype) of every tensor, and the path of every other value: equal when the buffer fits."""
    if isinstance(state, torch.Tensor):
        return ((prefix, tuple(state.shape), str(state.dtype)),)
    if isinstance(state, Mapping):
        return tuple(item for key, value in state.items() for item in _layout(value, f"{prefix}/{key}"))
    if isinstance(state, list | tuple):
        return tuple(item for i, value in enumerate(state) for item in _layout(value, f"{prefix}/{i}"))
    return ((prefix, (), type(state).__name__),)


@contextlib.contextmanager
def open_checkpoint(tier: CheckpointTier, run: str, step: int) -> Iterator[tuple[FileSystemReader, Manifest]]:
    """DCP's reader over a copy of the step that passed its manifest (raises ``CheckpointCorrupt`` otherwise)."""
    with tier.local_copy(run, step) as (folder, manifest):
        yield FileSystemReader(folder), manifest
