"""One rank of the multi-rank checkpoint test (importable by ``torch.multiprocessing`` spawn children).

Each rank joins a gloo group on loopback, builds a state of its own (a DTensor sharded across the ranks, a tensor
only this rank holds, a replicated one, an int), saves it with ``dcp.save`` (step 1) and ``dcp.async_save`` (step 2)
through :class:`training.storage.TierWriter` to each tier, then restores each step from each tier through
:func:`training.storage.open_checkpoint` and ``dcp.load`` into zeroed tensors, and writes what it found as JSON.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import async_save as dcp_async_save
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard

from tierlake.config import S3Settings
from tiers.s3 import s3_client
from training.storage import TierWriter, open_checkpoint
from training.tiers import CheckpointTier, FolderTier, RgwTier

ROWS_PER_RANK = 64


def rank_state(rank: int, world: int, step: int, mesh: Any) -> dict[str, Any]:
    """The state rank ``rank`` holds at ``step``: different bits per rank and per step."""
    generator = torch.Generator().manual_seed(1000 * step + rank)
    local = torch.randn(ROWS_PER_RANK, 16, generator=generator)
    shared = torch.Generator().manual_seed(step)
    return {
        "model": {
            "sharded": DTensor.from_local(local, mesh, [Shard(0)], run_check=False),
            "replicated": torch.randn(8, generator=shared),
        },
        f"rank{rank}": {"own": torch.randn(32, generator=generator).to(torch.float64), "count": 10 * step + rank},
        "world": world,
    }


def zeroed(state: dict[str, Any]) -> dict[str, Any]:
    def zero(value: Any) -> Any:
        if isinstance(value, DTensor):
            return DTensor.from_local(torch.zeros_like(value.to_local()), value.device_mesh, value.placements)
        if isinstance(value, torch.Tensor):
            return torch.zeros_like(value)
        if isinstance(value, dict):
            return {key: zero(item) for key, item in value.items()}
        return -1

    return {key: zero(value) for key, value in state.items()}


def flat_bytes(state: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Every value as hex bytes (a DTensor by its local shard): equal means bit for bit."""
    found: dict[str, str] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        plain = value.to_local() if isinstance(value, DTensor) else value
        if isinstance(plain, torch.Tensor):
            found[name] = plain.contiguous().view(torch.uint8).numpy().tobytes().hex()
        elif isinstance(plain, dict):
            found |= flat_bytes(plain, f"{name}.")
        else:
            found[name] = repr(plain)
    return found


def tiers(local_root: Path, s3: S3Settings, bucket: str, prefix: str) -> list[CheckpointTier]:
    return [FolderTier("local", local_root), RgwTier(s3_client(s3, sign_payload=False), bucket, prefix)]


def run_rank(rank: int, world: int, port: int, places: tuple[str, str, str], s3: S3Settings, bucket: str) -> None:  # noqa: PLR0917
    """Rank ``rank``'s part; ``places``: where it writes its findings, the local tier's root, the RGW key prefix."""
    out, local_root, prefix = places
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        found: dict[str, Any] = {"rank": rank, "saved": {}, "restored": {}}
        for tier in tiers(Path(local_root), s3, bucket, prefix):
            for step in (1, 2):
                state = rank_state(rank, world, step, mesh)
                writer = TierWriter(tier, "ranks", step, loader_state={"rank": rank}, tables={"s3://lake/t": step})
                if step == 1:
                    dcp_save(state, storage_writer=writer)
                else:
                    pending = dcp_async_save(state, storage_writer=writer)
                    if not isinstance(pending, Future):
                        raise TypeError(f"dcp.async_save gave {type(pending).__name__}, not a Future")
                    pending.result()
                found["saved"][f"{tier.name}/{step}"] = flat_bytes(state)
            dist.barrier()
            for step in (1, 2):
                target = zeroed(rank_state(rank, world, step, mesh))
                with open_checkpoint(tier, "ranks", step) as (reader, manifest):
                    dcp_load(target, storage_reader=reader)
                found["restored"][f"{tier.name}/{step}"] = flat_bytes(target)
                found[f"manifest/{tier.name}/{step}"] = sorted(s.name for s in manifest.shards)
        Path(out, f"rank{rank}.json").write_text(json.dumps(found))
    finally:
        dist.destroy_process_group()
