"""Checkpoint benchmark on a GPU: the GPU -> pinned-host snapshot and the step-time overhead of tiered checkpoints.

The example trainer's model (``training.example``) widened to about 256 MB of model and AdamW state on the GPU.
Figures: ``snapshot_s`` (what ``maybe_save`` holds the train step for: the copy into one reused pinned host buffer,
mean over ``--saves``), ``torch_save_local_s`` (the peer: ``torch.save`` of the GPU state dicts, blocking), and the
mean step time without checkpoints and with a checkpoint to the local folder every ``--every`` steps (promotion to
the edge folder behind it). RGW is left out here: the device machine reaches no object store. The last line
printed is the JSON result. Without CUDA it exits with status 2 and says so.

Usage: ``.venv/bin/python bench/checkpoint_gpu.py [--steps 60] [--every 5] [--saves 5]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HIDDEN, LAYERS = 2048, 6


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor) -> None:
    loss = model(batch).square().mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _timed_steps(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, after: Callable[[int], object] | None = None
) -> list[float]:
    batch = torch.randn(256, 8, device="cuda")
    times = []
    for step in range(1, steps + 1):
        torch.cuda.synchronize()
        started = time.perf_counter()
        _step(model, optimizer, batch)
        if after is not None:
            after(step)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=5, help="a local checkpoint every N steps")
    parser.add_argument("--saves", type=int, default=5)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        message = "bench/checkpoint_gpu.py needs a CUDA device and torch.cuda.is_available() is False on this machine"
        sys.stderr.write(message + "; run bench/checkpoint.py for the CPU figures\n")
        print(json.dumps({"bench": "checkpoint_gpu", "error": message}))
        return 2

    from torch.distributed.checkpoint.state_dict import get_state_dict  # noqa: PLC0415

    from training.checkpointer import TieredCheckpointer, state_bytes  # noqa: PLC0415
    from training.example import build_model  # noqa: PLC0415
    from training.policy import TierPolicy  # noqa: PLC0415
    from training.tiers import FolderTier  # noqa: PLC0415

    model = build_model(8, HIDDEN, LAYERS).cuda()
    optimizer = torch.optim.AdamW(model.parameters())
    _timed_steps(model, optimizer, 3)  # warm-up; creates the optimizer state

    def state() -> dict[str, object]:
        model_state, optim_state = get_state_dict(model, optimizer)
        return {"model": model_state, "optim": optim_state}

    workdir = Path(tempfile.mkdtemp(prefix="tierlake-bench-ckpt-gpu-"))
    figures: dict[str, float] = {"state_mb": round(state_bytes(state()) / 1e6, 1)}
    tiers = [FolderTier("local", workdir / "local"), FolderTier("edge", workdir / "edge")]
    snap = TieredCheckpointer("gpu-snapshot", tiers[:1], [TierPolicy(every_steps=1, keep_last=1)])
    for step in range(1, args.saves + 1):
        snap.maybe_save(step, state())
        snap.wait_written()
    snap.close()
    figures["snapshot_s"] = round(snap.stats.stall_s_total / max(1, snap.stats.saves_started), 4)
    torch.cuda.synchronize()
    started = time.perf_counter()
    torch.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, workdir / "state.pt")
    figures["torch_save_local_s"] = round(time.perf_counter() - started, 4)
    without = _timed_steps(model, optimizer, args.steps)
    policies = [TierPolicy(every_steps=args.every, keep_last=2), TierPolicy(every_steps=args.every * 4, keep_last=2)]
    checkpointer = TieredCheckpointer("gpu-steps", tiers, policies)
    with_checkpoints = _timed_steps(model, optimizer, args.steps, lambda step: checkpointer.maybe_save(step, state()))
    checkpointer.close()
    figures["step_s_without"] = round(sum(without) / len(without), 5)
    figures["step_s_with"] = round(sum(with_checkpoints) / len(with_checkpoints), 5)
    figures["checkpoints"] = checkpointer.stats.saves_committed
    ratios = {
        "snapshot_vs_torch_save": round(figures["snapshot_s"] / figures["torch_save_local_s"], 4),
        "step_time_with_vs_without": round(figures["step_s_with"] / figures["step_s_without"], 4),
    }
    setup = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "every": args.every}
    print(json.dumps({"bench": "checkpoint_gpu", "figures": figures, "ratios": ratios, "setup": setup}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
