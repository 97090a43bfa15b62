"""Checkpoint benchmark: tierlake's asynchronous tiered checkpoints and the peers a user would write, in one run.

The state: the example trainer's model (``training.example``) widened to about 256 MB of model and AdamW state on
the CPU (hidden 2048, 6 layers: 21 M parameters x 12 bytes). Paths, all on the same state:

- ``tierlake_stall_s``: what the train step waits for in ``TieredCheckpointer.maybe_save`` (the device -> host
  snapshot; the write runs in the background), mean over ``--saves`` saves;
- ``torch_save_local_s``: ``torch.save`` of the state dicts to a local file (blocking; no fsync, as users call it);
- ``sync_dcp_rgw_s``: ``dcp.save`` to a local folder, then every file uploaded to RGW with boto3 (blocking): the
  synchronous DCP save to RGW a user would write without tierlake;
- ``restore_<tier>_s``: ``load_latest`` from that tier alone (local, edge, rgw; RGW downloads and checks CRC-32C);
- ``steps_per_s_without`` / ``steps_per_s_with``: the trainer reading its Delta table without checkpoints and with the
  default cadence of ``conf/`` (500 ms / 15 s / 5 min) and its ``checkpoint.overhead_budget`` (the nearest tier's
  saves spaced by their measured cost: ``deferred_budget``, ``min_gap_s``, ``step_cost_s``), in alternating windows
  (without, with, with, without, ...: both sides see the same drift of a shared machine's load; ``round_ratios``: each
  round's pair, for the spread). The checkpointer's clock runs only in the windows with checkpoints (``WindowClock``),
  so its cadence and budget see them as one continuous run, as in a long one: a window starts with no checkpoint due
  that would not be due in a long run. A window lasts four of the write tier's spacings (``window_steps``: the spacing
  the budget asks for at the start, or the cadence's interval, at the pace of 15 steps without checkpoints); a window
  with checkpoints then trains on, timed and with no new checkpoint, until the background work it started is done, so
  it bears the whole cost of its checkpoints and none spills into the next window. Before them, one window of 15 steps
  takes the first checkpoint, which is due on every tier at once (a tier that never took one is due at once):
  ``steps_per_s_first_save`` is that window (it holds a whole-state upload to RGW, which the cadence does once in 5
  minutes), not part of the ratio; nor is the wait the budget then asks for (``settle_s``: trained through, untimed,
  until the next checkpoint starts);
- ``seconds_per_checkpoint`` (how often one landed: back-pressure skips the saves due while one is written, so a
  slow or starved writer checkpoints less often, which raises the ratio) and ``step_seconds_lost_per_checkpoint``
  (seconds the windows with checkpoints took beyond those without, per checkpoint): read the ratio with them;
- ``stack_cpu_s_with``: CPU seconds the local Ceph daemons (RGW, OSDs, mon, mgr) used during the windows with
  checkpoints: on this one machine the object store's server side competes with the train step for the same two
  cores, which a trainer on its own node would not see;
- ``recovery_s``: the trainer process killed with SIGKILL after its first committed checkpoint, restarted with
  ``--resume``: seconds from the kill to its first step after resuming (process start, imports, restore).

The local and edge folders sit on the same disk here (one machine). The last line printed is the JSON result; no
asserts on time. Usage: ``.venv/bin/python bench/checkpoint.py [--quick] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
from botocore.exceptions import BotoCoreError, ClientError  # noqa: E402
from torch.distributed.checkpoint.filesystem import FileSystemWriter  # noqa: E402
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save  # noqa: E402

from tierlake.config import Settings, load_settings  # noqa: E402
from tiers.s3 import s3_client  # noqa: E402
from training.checkpointer import CheckpointStats, TieredCheckpointer, state_bytes  # noqa: E402
from training.example import ToyTrainer, TrainOptions  # noqa: E402
from training.policy import TierPolicy  # noqa: E402
from training.restore import load_latest  # noqa: E402
from training.setup import tier_policies  # noqa: E402
from training.tiers import CheckpointTier, FolderTier, RgwTier  # noqa: E402

logger = logging.getLogger("bench.checkpoint")
HIDDEN, LAYERS = 2048, 6
SETTLE_MAX_S = 300.0


def write_table(path: Path, rows: int) -> str:
    from deltalake import write_deltalake  # noqa: PLC0415

    ids = np.arange(rows, dtype=np.int64)
    tokens = pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ids, 8).astype(np.int32)), 8)
    write_deltalake(str(path), pa.table({"id": ids, "tokens": tokens}))
    return str(path)


def tiers_in(settings: Settings, workdir: Path) -> list[CheckpointTier]:
    """The tiers of ``training.setup.checkpoint_tiers`` (its unsigned-payload RGW client), folders in ``workdir``."""
    client = s3_client(settings.s3, sign_payload=False)
    rgw = RgwTier(client, settings.s3.lake_bucket, settings.checkpoint.prefix)
    return [FolderTier("local", workdir / "local"), FolderTier("edge", workdir / "edge"), rgw]


def stall(trainer: ToyTrainer, tier: CheckpointTier, run: str, saves: int) -> float:
    """Mean seconds ``maybe_save`` holds the caller, each save written to ``tier`` before the next."""
    checkpointer = TieredCheckpointer(run, [tier], [TierPolicy(every_steps=1, keep_last=1)])
    for step in range(1, saves + 1):
        checkpointer.maybe_save(step, trainer.state(), loader_state=trainer.loader.state_dict())
        checkpointer.wait_written()
    checkpointer.close()
    return checkpointer.stats.stall_s_total / max(1, checkpointer.stats.saves_started)


def torch_save_local(trainer: ToyTrainer, folder: Path) -> float:
    started = time.perf_counter()
    torch.save({"model": trainer.model.state_dict(), "optim": trainer.optimizer.state_dict()}, folder / "state.pt")
    return time.perf_counter() - started


def sync_dcp_rgw(trainer: ToyTrainer, settings: Settings, folder: Path, run: str) -> float:
    """The peer: a blocking ``dcp.save`` to a local folder, then each file uploaded with boto3."""
    client = s3_client(settings.s3)
    started = time.perf_counter()
    dcp_save(trainer.state(), storage_writer=FileSystemWriter(folder))
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = f"{settings.checkpoint.prefix}/bench-peer-{run}/{path.relative_to(folder).as_posix()}"
        client.upload_file(str(path), settings.s3.lake_bucket, key)
    return time.perf_counter() - started


def restore_each(trainer: ToyTrainer, tiers: list[CheckpointTier], run: str) -> dict[str, float]:
    figures = {}
    for tier in tiers:
        state = trainer.state()
        started = time.perf_counter()
        load_latest(run, [tier], state)
        figures[f"restore_{tier.name}_s"] = round(time.perf_counter() - started, 3)
    return figures


def timed_steps(trainer: ToyTrainer, steps: int, checkpointer: TieredCheckpointer | None) -> tuple[float, float]:
    """Seconds for ``steps`` train steps, and seconds then spent waiting for the checkpointer's background work."""
    started = time.perf_counter()
    trainer.train(trainer.step + steps, checkpointer=checkpointer)
    elapsed = time.perf_counter() - started
    if checkpointer is not None:
        checkpointer.wait()
    return elapsed, time.perf_counter() - started - elapsed


def stack_cpu_s(settings: Settings) -> float:
    """CPU seconds used so far by the local Ceph daemons of ``settings.run_dir`` (their pid files)."""
    total = 0.0
    for pid_file in (settings.run_dir / "ceph" / "run").glob("*.pid"):
        try:
            fields = Path(f"/proc/{pid_file.read_text().strip()}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return total


def window_steps(rate: float, gap_s: float, gaps: int, least: int = 15, most: int = 400) -> int:
    """Steps in one timed window: long enough to hold ``gaps`` of the write tier's spacing at ``rate`` steps/s, so
    the windows with checkpoints hold them as often as a long run does (a window shorter than the spacing would
    hold one checkpoint each, more often than the budget allows in a long run)."""
    return max(least, min(most, math.ceil(gaps * gap_s * rate)))


class WindowClock:
    """The checkpointer's clock in the windows with checkpoints: it runs only while :meth:`running`, so the cadence
    and the budget see those windows as one continuous run (a window without checkpoints is no time to them)."""

    def __init__(self) -> None:
        self.total = 0.0
        self.since: float | None = None

    def __call__(self) -> float:
        return self.total + (time.monotonic() - self.since if self.since is not None else 0.0)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self.since = time.monotonic()
        try:
            yield
        finally:
            self.total = self()
            self.since = None


def window_with(trainer: ToyTrainer, steps: int, checkpointer: TieredCheckpointer) -> tuple[int, float]:
    """Steps and seconds of a window with checkpoints: ``steps`` steps, then trained on (no new checkpoint) until
    the background work the window started is done, so each window bears all of its checkpoints' cost."""
    started = time.perf_counter()
    trainer.train(trainer.step + steps, checkpointer=checkpointer)
    done = steps
    while checkpointer.busy():
        trainer.train(trainer.step + 1)
        done += 1
    return done, time.perf_counter() - started


def _first_save_and_settle(
    trainer: ToyTrainer, checkpointer: TieredCheckpointer, clock: WindowClock
) -> tuple[float, float, float]:
    """The window of the first checkpoint (seconds, drain seconds), trained on until the next starts (from when)."""
    with clock.running():
        first_s, first_drain_s = timed_steps(trainer, 15, checkpointer)
        # the budget spaces the next checkpoint by the first one's cost (its upload to RGW too, which the cadence
        # does once in 5 minutes): that wait is trained through, untimed, until the next checkpoint starts
        settle_from, started = time.perf_counter(), checkpointer.stats.saves_started
        while checkpointer.stats.saves_started == started and time.perf_counter() - settle_from < SETTLE_MAX_S:
            trainer.train(trainer.step + 5, checkpointer=checkpointer)
        checkpointer.wait()
    return first_s, first_drain_s, settle_from


def _alternating_windows(
    trainer: ToyTrainer,
    settings: Settings,
    checkpointer: TieredCheckpointer,
    clock: WindowClock,
    *,
    steps: int,
    rounds: int,
) -> tuple[dict[str, list[float]], list[list[float]], float]:
    """Steps and seconds per side, steps/s per round and side, and the stack's CPU seconds in the windows with."""
    totals: dict[str, list[float]] = {"without": [0, 0.0], "with": [0, 0.0]}  # steps, seconds
    pairs: list[list[float]] = [[0.0, 0.0] for _ in range(rounds)]  # per round: steps/s without, with
    stack_cpu = 0.0
    for window in range(2 * rounds):
        side = ("without", "with", "with", "without")[window % 4]
        before = stack_cpu_s(settings)
        if side == "with":
            with clock.running():
                done, elapsed = window_with(trainer, steps, checkpointer)
            stack_cpu += stack_cpu_s(settings) - before
        else:
            done, (elapsed, _) = steps, timed_steps(trainer, steps, None)
        totals[side][0] += done
        totals[side][1] += elapsed
        pairs[window // 2][side == "with"] = done / elapsed
    return totals, pairs, stack_cpu


def _stats_figures(stats: CheckpointStats) -> dict[str, Any]:
    """The checkpointer's own counters behind the ratio: promotions, skips, the budget's spacing, CPU and stalls."""
    return {
        "promotions": dict(stats.promotions),
        "skipped_busy": stats.skipped_busy,
        "deferred_budget": stats.deferred_budget,  # due by the cadence, spaced by the budget
        "min_gap_s": round(stats.min_gap_s, 3),
        "step_cost_s": round(stats.step_cost_s, 3),  # the last one's, on the steps' pace
        "step_s_baseline": round(stats.step_s_baseline, 3),
        "write_cpu_s_per_checkpoint": (
            round(stats.write_cpu_s_total / stats.saves_committed, 3) if stats.saves_committed else None
        ),
        "stall_s_max": round(stats.stall_s_max, 3),
    }


def steps_with_and_without(
    trainer: ToyTrainer, settings: Settings, tiers: list[CheckpointTier], run: str, *, rounds: int, gaps: int = 4
) -> dict[str, Any]:
    """Steps per second without checkpoints and with the default cadence, in alternating windows (see above)."""
    clock = WindowClock()
    checkpointer = TieredCheckpointer(
        run, tiers, tier_policies(settings), overhead_budget=settings.checkpoint.overhead_budget, clock=clock
    )
    first_s, first_drain_s, settle_from = _first_save_and_settle(trainer, checkpointer, clock)
    figures: dict[str, Any] = {"steps_per_s_first_save": round(15 / first_s, 3)}
    figures["settle_s"] = round(time.perf_counter() - settle_from, 1)
    probe_s, _ = timed_steps(trainer, 15, None)  # the pace without checkpoints sizes the windows
    spacing_s = max(checkpointer.stats.min_gap_s, settings.checkpoint.cadence[0].interval_s or 0.0)
    steps = window_steps(15 / probe_s, spacing_s, gaps)
    figures["window_steps"] = steps
    first_saves = checkpointer.stats.saves_committed
    totals, pairs, stack_cpu = _alternating_windows(trainer, settings, checkpointer, clock, steps=steps, rounds=rounds)
    figures["round_ratios"] = [round(with_ / without, 3) for without, with_ in pairs]  # steps/s with over without
    checkpointer.close()
    figures["steps_per_s_without"] = round(totals["without"][0] / totals["without"][1], 3)
    figures["steps_per_s_with"] = round(totals["with"][0] / totals["with"][1], 3)
    seconds = {side: totals[side][1] for side in totals}
    figures["first_save_drain_s"] = round(first_drain_s, 2)
    figures["stack_cpu_s_with"] = round(stack_cpu, 2)
    saved = checkpointer.stats.saves_committed - first_saves
    figures["checkpoints_during_steps"] = saved
    # the trade-off behind the ratio: how often a checkpoint landed, and what each cost the train step
    figures["seconds_per_checkpoint"] = round(seconds["with"] / saved, 2) if saved else None
    lost = seconds["with"] - totals["with"][0] / figures["steps_per_s_without"]  # beyond the pace without
    figures["step_seconds_lost_per_checkpoint"] = round(lost / saved, 3) if saved else None
    figures.update(_stats_figures(checkpointer.stats))
    return figures


def _trainer_command(run: str, table: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "training.example", "--run", run, "--table", table, "--steps", "1000000",
            "--hidden", str(HIDDEN), "--layers", str(LAYERS), *extra]  # fmt: skip


def recovery(settings: Settings, table: str, workdir: Path, run: str, timeout_s: float) -> float:
    """Kill the trainer after its first committed local checkpoint; seconds from the kill to its first step after
    resuming."""
    env = dict(os.environ)
    env["TIERLAKE_CHECKPOINT__LOCAL_DIR"] = str(workdir / "local")
    env["TIERLAKE_CHECKPOINT__EDGE_DIR"] = str(workdir / "edge")
    first = subprocess.Popen(_trainer_command(run, table), env=env, cwd=settings.root, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    local = FolderTier("local", workdir / "local")
    while not local.steps(run):
        if time.monotonic() > deadline or first.poll() is not None:
            first.kill()
            raise RuntimeError(f"the trainer committed no checkpoint in {timeout_s} s (exit {first.poll()})")
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    killed = time.time()
    first.wait()
    second = subprocess.Popen(
        _trainer_command(run, table, "--resume"), env=env, cwd=settings.root, stdout=subprocess.PIPE, text=True
    )
    try:
        assert second.stdout is not None
        for line in second.stdout:
            event = json.loads(line)
            if event.get("event") == "first_step":
                return float(event["unix"]) - killed
        raise RuntimeError(f"the resumed trainer ended before its first step (exit {second.wait()})")
    finally:
        second.kill()
        second.wait()


def clean_rgw(settings: Settings, runs: list[str]) -> None:
    client = s3_client(settings.s3)
    for run in runs:
        prefix = f"{settings.checkpoint.prefix}/{run}/"
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.s3.lake_bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=settings.s3.lake_bucket, Key=obj["Key"])


def run_bench(settings: Settings, workdir: Path, *, quick: bool) -> dict[str, Any]:
    torch.set_num_threads(1)
    tag = uuid.uuid4().hex[:6]
    run = f"bench-{tag}"
    table = write_table(workdir / "table", 20_000)
    trainer = ToyTrainer(TrainOptions(run=run, table_uri=table, hidden=HIDDEN, layers=LAYERS, batch_size=32))
    trainer.train(2)  # creates the optimizer state: the state is now its full size
    tiers = tiers_in(settings, workdir)
    figures: dict[str, Any] = {"state_mb": round(state_bytes(trainer.state()) / 1e6, 1)}
    saves = 2 if quick else 5
    cadence_run = f"{run}-cadence"
    try:
        figures["tierlake_stall_s"] = round(stall(trainer, tiers[0], run, saves), 3)
        (workdir / "peer-local").mkdir()
        figures["torch_save_local_s"] = round(torch_save_local(trainer, workdir / "peer-local"), 3)
        figures["sync_dcp_rgw_s"] = round(sync_dcp_rgw(trainer, settings, workdir / "peer-dcp", tag), 3)
        for tier in tiers[1:]:  # the step written to local, promoted to the other tiers, for the restores
            step = max(tiers[0].steps(run))
            with tiers[0].local_copy(run, step) as (folder, manifest):
                tier.put_step(folder, manifest)
        figures.update(restore_each(trainer, tiers, run))
        figures.update(steps_with_and_without(trainer, settings, tiers, cadence_run, rounds=2 if quick else 6))
        figures["recovery_s"] = round(recovery(settings, table, workdir, f"{run}-recovery", 300), 3)
    finally:  # a failed run leaves no 250 MB copies behind in the lake either
        try:
            clean_rgw(settings, [run, cadence_run, f"{run}-recovery", f"bench-peer-{tag}"])
        except (BotoCoreError, ClientError) as exc:
            logger.warning("bench checkpoints under %s/%s* not removed: %s", settings.checkpoint.prefix, run, exc)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer saves and steps; under 3 minutes on 2 cores")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one, removed after)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    settings = load_settings()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tierlake-bench-ckpt-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        figures = run_bench(settings, workdir, quick=args.quick)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    ratios = {
        "stall_vs_sync_rgw": round(figures["tierlake_stall_s"] / figures["sync_dcp_rgw_s"], 4),
        "stall_vs_torch_save_local": round(figures["tierlake_stall_s"] / figures["torch_save_local_s"], 4),
        "steps_with_vs_without_checkpoints": round(figures["steps_per_s_with"] / figures["steps_per_s_without"], 4),
    }
    setup = {
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cadence": [f"{c.tier}: every {c.every_steps} steps / {c.interval_s} s" for c in settings.checkpoint.cadence],
        "overhead_budget": settings.checkpoint.overhead_budget,
        "seconds": round(time.perf_counter() - started, 1),
        "trace_s": "measured by bench/lineage.py (figures.trace_s, 10,000 ingest batches)",
    }
    print(json.dumps({"bench": "checkpoint", "figures": figures, "ratios": ratios, "setup": setup}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
