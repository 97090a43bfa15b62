"""GPU path of the loader: copy/compute overlap and GPU idle time while a toy model trains. Needs CUDA.

On a CUDA machine: writes a Delta table of int32 x 2048 token rows, then trains a toy model (embedding, MLP
blocks, bf16) for the same number of steps four ways and times each with CUDA events and the wall clock:

- ``compute_only``: one batch staged on the GPU, reused every step (the GPU's own speed; no data path at all);
- ``sync``: DeltaLoader batches moved with a blocking ``.to(device)`` from pageable memory, then the step;
- ``prefetch``: the same batches through ``DevicePrefetcher`` (pinned ring, side stream, ``non_blocking``);
- ``copy_only``: the prefetcher with no model (host-to-device throughput of the path).

``gpu_idle_fraction`` = 1 - (GPU time inside training steps, from events) / wall time. The last line printed is the
JSON result. Without CUDA it exits with status 2 and says so.

Usage: ``python bench/loader_gpu.py [--rows 65536] [--batch 64] [--steps 100] [--workers 4] [--dim 1024] [--layers 4]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WIDTH = 2048
VOCAB = 50257


def write_table(path: Path, rows: int) -> None:
    import pyarrow as pa  # noqa: PLC0415
    from deltalake import WriterProperties, write_deltalake  # noqa: PLC0415

    rng = np.random.default_rng(0)
    props = WriterProperties(compression="UNCOMPRESSED", max_row_group_size=4096, write_batch_size=1024)
    per_file = 16384
    for first in range(0, rows, per_file):
        count = min(per_file, rows - first)
        values = pa.array(rng.integers(0, VOCAB, size=count * WIDTH, dtype=np.int32))
        offsets = pa.array(np.arange(0, count * WIDTH + 1, WIDTH, dtype=np.int32))
        table = pa.table({"id": np.arange(first, first + count), "tokens": pa.ListArray.from_arrays(offsets, values)})
        write_deltalake(str(path), table, mode="append", writer_properties=props)


class ToyModel(torch.nn.Module):
    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, dim)
        self.blocks = torch.nn.Sequential(
            *[
                torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))
                for _ in range(layers)
            ]
        )
        self.head = torch.nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.blocks(self.embed(tokens.long()))
        loss: torch.Tensor = self.head(hidden).float().mean()
        return loss


def train(
    batches: Iterable[dict[str, torch.Tensor]], model: ToyModel | None, device: torch.device, steps: int, *, move: bool
) -> dict[str, float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4) if model is not None else None
    events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    count = 0
    moved_bytes = 0
    for batch in batches:
        tokens = batch["tokens"].to(device) if move else batch["tokens"]
        moved_bytes += tokens.numel() * tokens.element_size()
        if model is not None and optimizer is not None:
            begin = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            begin.record()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(tokens)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            end.record()
            events.append((begin, end))
        count += 1
        if count == steps:
            break
    torch.cuda.synchronize(device)
    wall = time.perf_counter() - started
    busy = sum(b.elapsed_time(e) for b, e in events) / 1000
    return {
        "steps": count,
        "wall_s": round(wall, 3),
        "step_ms": round(wall / max(count, 1) * 1000, 3),
        "gpu_busy_s": round(busy, 3),
        "gpu_idle_fraction": round(1 - busy / wall, 4) if events else 1.0,
        "gb_per_s": round(moved_bytes / wall / 1e9, 3),
    }


def repeat(batch: dict[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield batch


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; the help is the docstring's first paragraph, the usage line stays out of it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=65536)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--depth", type=int, default=3, help="batches the prefetcher keeps in flight")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    return parser.parse_args(argv)


def _runs(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The five timed runs, by name, on one table written for them; the loaders are imported only once CUDA is
    known to be there."""
    from loaders.dataset import OrderOptions, delta_dataset  # noqa: PLC0415
    from loaders.device import DevicePrefetcher  # noqa: PLC0415
    from loaders.loader import DeltaLoader  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="tierlake-bench-gpu-") as tmp:
        table = Path(tmp) / "tokens"
        write_table(table, args.rows)
        dataset = delta_dataset(table, columns=["tokens"], order=OrderOptions(seed=0))

        def loader() -> DeltaLoader:
            return DeltaLoader(dataset, batch_size=args.batch, num_workers=args.workers, prefetch_batches=8)

        model = ToyModel(args.dim, args.layers).to(device)
        staged = {"tokens": next(iter(loader()))["tokens"].to(device)}
        train(repeat(staged), model, device, 10, move=False)  # warm-up: kernels, allocator
        return {
            "compute_only": train(repeat(staged), model, device, args.steps, move=False),
            "sync": train(loader(), model, device, args.steps, move=True),
            "prefetch": train(
                DevicePrefetcher(loader(), device, depth=args.depth), model, device, args.steps, move=False
            ),
            "copy_only": train(
                DevicePrefetcher(loader(), device, depth=args.depth), None, device, args.steps, move=False
            ),
            "loader_only": train(loader(), None, device, args.steps, move=False),
        }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if not torch.cuda.is_available():
        message = "bench/loader_gpu.py needs a CUDA device and torch.cuda.is_available() is False on this machine"
        sys.stderr.write(message + "; run bench/loader.py for the CPU figures\n")
        print(json.dumps({"bench": "loader_gpu", "error": message}))
        return 2

    device = torch.device("cuda")
    runs = _runs(args, device)
    compute = runs["compute_only"]["step_ms"]
    ratios = {
        "prefetch_vs_sync_step_time": round(runs["prefetch"]["step_ms"] / runs["sync"]["step_ms"], 3),
        "prefetch_vs_compute_only_step_time": round(runs["prefetch"]["step_ms"] / compute, 3),
        "sync_vs_compute_only_step_time": round(runs["sync"]["step_ms"] / compute, 3),
    }
    setup = {
        "rows": args.rows,
        "batch": args.batch,
        "steps": args.steps,
        "workers": args.workers,
        "depth": args.depth,
        "model": f"embedding {VOCAB}x{args.dim} + {args.layers} MLP blocks, bf16 autocast, SGD",
        "gpu": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
    }
    print(json.dumps({"bench": "loader_gpu", "figures": runs, "ratios": ratios, "setup": setup}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
