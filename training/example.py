"""An example trainer: a small model that learns from a Delta table through the loader, with tiered checkpoints.

Used by the tests (killed at injected points, then resumed) and by ``bench/checkpoint.py``; runs on CPU and CUDA.
The model maps the ``tokens`` column of a token table (``gold/<entity>_tokens`` or a test table) to a scalar; what
it learns does not matter, only that its state, its optimizer's and the loader's change every step and are a pure
function of (seed, table version, step), so a resumed run can be compared bit for bit with an uninterrupted one.

Run it::

    python -m training.example --run demo --table s3://tierlake-lake/gold/corpus_tokens --steps 200 [--resume]

``TIERLAKE_CHECKPOINT_FAULT=<point>:<n>`` (point: snapshot, write, manifest, promotion) kills the process with
SIGKILL at the n-th time it reaches that point: the fault-injection hook of the crash tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from loaders.dataset import OrderOptions, delta_dataset
from loaders.loader import DeltaLoader
from tierlake.errors import TierlakeError
from training.checkpointer import WHEN_BUSY, TieredCheckpointer
from training.restore import Restored, load_latest
from training.tiers import CheckpointTier, FaultHook

if TYPE_CHECKING:
    from tierlake.config import Settings

logger = logging.getLogger(__name__)
FAULT_POINTS = ("snapshot", "write", "manifest", "promotion")
FAULT_ENV = "TIERLAKE_CHECKPOINT_FAULT"  # read by main() only; not a config key


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """The run: its name, the table read, batch size, seed, learning rate, width of the model, device."""

    run: str
    table_uri: str
    batch_size: int = 16
    seed: int = 0
    lr: float = 1e-2
    features: int = 8  # the first tokens of each row are the model's input
    hidden: int = 64
    layers: int = 2
    device: str = "cpu"
    storage_options: Mapping[str, str] | None = None


def build_model(columns: int, hidden: int, layers: int) -> nn.Module:
    blocks: list[nn.Module] = [nn.Linear(columns, hidden), nn.ReLU()]
    for _ in range(layers - 1):
        blocks += [nn.Linear(hidden, hidden), nn.ReLU()]
    return nn.Sequential(*blocks, nn.Linear(hidden, 1))


class ToyTrainer:
    """Model, optimizer and loader of one run; :meth:`train` runs steps with an optional checkpointer."""

    def __init__(self, options: TrainOptions) -> None:
        self.options = options
        dataset = delta_dataset(
            options.table_uri,
            columns=["tokens"],
            storage_options=options.storage_options,
            order=OrderOptions(seed=options.seed),
        )
        self.tables = {options.table_uri: dataset.version}
        self.loader = DeltaLoader(dataset, batch_size=options.batch_size, num_workers=0)
        torch.manual_seed(options.seed)
        self.device = torch.device(options.device)
        self.model = build_model(options.features, options.hidden, options.layers).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=options.lr)
        self.step = 0

    def state(self) -> dict[str, Any]:
        """The checkpointed state: model and optimizer (optimizer state created if still empty), and the step."""
        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        return {"model": model_state, "optim": optim_state, "trainer": {"step": self.step}}

    def restore(self, tiers: Sequence[CheckpointTier]) -> Restored:
        """Load the newest good checkpoint of the run: model, optimizer, step and the loader's position."""
        state = self.state()
        restored = load_latest(self.options.run, tiers, state, loader=self.loader)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        self.step = restored.step
        return restored

    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        tokens = batch["tokens"][:, : self.options.features].to(self.device, non_blocking=True).float()
        features = torch.remainder(tokens, 97.0) / 97.0
        target = features.mean(dim=1, keepdim=True)
        loss = nn.functional.mse_loss(self.model(features), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    def train(
        self,
        until_step: int,
        *,
        checkpointer: TieredCheckpointer | None = None,
        on_step: Callable[[ToyTrainer], None] | None = None,
    ) -> None:
        """Train until ``until_step``, offering a checkpoint after every step."""
        while self.step < until_step:
            for batch in self.loader:
                self.train_step(batch)
                if checkpointer is not None:
                    checkpointer.maybe_save(
                        self.step, self.state(), loader_state=self.loader.state_dict(), tables=self.tables
                    )
                if on_step is not None:
                    on_step(self)
                if self.step >= until_step:
                    break


def fault_hook(spec: str) -> FaultHook | None:
    """``<point>:<n>``: SIGKILL this process the n-th time it reaches ``point``; empty: no hook."""
    if not spec:
        return None
    point, _, count = spec.partition(":")
    if point not in FAULT_POINTS or not count.isdigit() or int(count) < 1:
        raise TierlakeError(
            f"TIERLAKE_CHECKPOINT_FAULT = {spec!r} is invalid. Fix: <point>:<n> with point one of {FAULT_POINTS}, "
            "n 1 or more, e.g. manifest:3"
        )
    seen = {"hits": 0}

    def hook(reached: str) -> None:
        if reached != point:
            return
        seen["hits"] += 1
        if seen["hits"] == int(count):
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The trainer's command line: the run, the table, the steps, the model's size, and how it checkpoints."""
    parser = argparse.ArgumentParser(prog="python -m training.example", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--table", required=True, help="Delta table URI (a folder or s3://...)")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resume", action="store_true", help="restore the newest good checkpoint first")
    parser.add_argument(
        "--when-busy",
        choices=WHEN_BUSY,
        default="skip",
        help="a save due during a write: skip it or wait for the write",
    )
    parser.add_argument("--final", help="torch.save the final model, optimizer and loader state to this file")
    return parser.parse_args(argv)


def _checkpointer(settings: Settings, args: argparse.Namespace, tiers: list[CheckpointTier]) -> TieredCheckpointer:
    """The run's checkpointer: the settings' cadence and budget, the fault hook, lineage events on each commit."""
    from training.lineage import LineageLog  # noqa: PLC0415 - the process edge
    from training.lineage_http import lineage_http_for  # noqa: PLC0415
    from training.setup import code_version, tier_policies  # noqa: PLC0415

    return TieredCheckpointer(
        args.run,
        tiers,
        tier_policies(settings),
        code_version=code_version(settings.root),
        fault=fault_hook(os.environ.get(FAULT_ENV, "")),
        on_commit=LineageLog(
            settings.checkpoint.lineage_dir, http=lineage_http_for(settings.checkpoint, os.environ)
        ).committed,
        when_busy=args.when_busy,
        overhead_budget=settings.checkpoint.overhead_budget,
    )


def main(argv: list[str] | None = None) -> int:
    """The example trainer as a process: settings from conf/ and the environment, tiers from the settings."""
    from tierlake.config import load_settings  # noqa: PLC0415 - the process edge
    from tierlake.logs import configure_logging  # noqa: PLC0415
    from tiers.s3 import delta_storage_options  # noqa: PLC0415
    from training.setup import checkpoint_tiers, restore_tiers  # noqa: PLC0415

    args = _parse_args(argv)
    settings = load_settings(env={name: value for name, value in os.environ.items() if name != FAULT_ENV})
    configure_logging(settings.run_dir / "logs" / f"trainer-{args.run}.log", verbose=False)
    torch.set_num_threads(1)
    storage = delta_storage_options(settings.s3) if args.table.startswith("s3://") else None
    options = TrainOptions(
        run=args.run,
        table_uri=args.table,
        batch_size=args.batch_size,
        hidden=args.hidden,
        layers=args.layers,
        device=args.device,
        storage_options=storage,
    )
    trainer = ToyTrainer(options)
    tiers = checkpoint_tiers(settings)
    if args.resume:  # the nearest good tier, down to the second site's copy
        restored = trainer.restore(restore_tiers(settings))
        _say({"event": "restored", "step": restored.step, "tier": restored.tier, "refused": list(restored.refused)})
    checkpointer = _checkpointer(settings, args, tiers)
    first = {"done": False}

    def announce(t: ToyTrainer) -> None:
        if not first["done"]:
            first["done"] = True
            _say({"event": "first_step", "step": t.step, "unix": time.time()})

    trainer.train(args.steps, checkpointer=checkpointer, on_step=announce)
    checkpointer.close()
    if args.final:
        torch.save({**trainer.state(), "loader": trainer.loader.state_dict()}, args.final)
    _say({"event": "done", "step": trainer.step, "stats": checkpointer.stats.__dict__})
    return 0


def _say(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, default=str) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
