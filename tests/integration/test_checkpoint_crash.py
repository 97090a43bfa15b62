"""Tiered checkpoints against the real RGW and real processes: the example trainer killed with SIGKILL at injected
points (the snapshot, a tier write, the manifest, a promotion), a byte flipped in a shard, the local disk full.

Every restore must land on the newest committed step found on any tier (listed here by looking for manifests,
independently of the restore code), from the nearest tier holding it; the restored model, optimizer and loader
state must equal, bit for bit, those of an uninterrupted run at that step; and training on from there must end
in the same state as the uninterrupted run, so the resumed run served exactly the same samples.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from infra import procs
from infra.stack import LocalStack
from tests.unit.loader_tables import write_token_table
from tierlake.config import Settings
from tiers.s3 import s3_client
from training.checkpointer import TieredCheckpointer
from training.example import ToyTrainer, TrainOptions
from training.manifest import MANIFEST_NAME
from training.policy import TierPolicy
from training.tiers import CheckpointTier, FolderTier, RgwTier

STEPS = 30
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ckpt-table")
    write_token_table(path, [300, 200], row_group_rows=50)
    return str(path)


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """The trainer process runs torch on one thread; the reference must too, to be comparable bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _snapshot(trainer: ToyTrainer) -> dict[str, Any]:
    return copy.deepcopy({**trainer.state(), "loader": trainer.loader.state_dict()})


@pytest.fixture(scope="module")
def reference(table: str, single_thread: None) -> dict[int, dict[str, Any]]:
    """The uninterrupted run: its full state after every step."""
    trainer = ToyTrainer(TrainOptions(run="reference", table_uri=table))
    states: dict[int, dict[str, Any]] = {}
    trainer.train(STEPS, on_step=lambda t: states.__setitem__(t.step, _snapshot(t)))
    return states


def _tiers(settings: Settings, root: Path) -> list[CheckpointTier]:
    rgw = RgwTier(s3_client(settings.s3), settings.s3.lake_bucket, settings.checkpoint.prefix)
    return [FolderTier("local", root / "local"), FolderTier("edge", root / "edge"), rgw]


def _trainer_env(root: Path, *, fault: str = "", local_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    cadence = {"LOCAL": 1, "EDGE": 2, "RGW": 4}
    for tier, every in cadence.items():
        env[f"TIERLAKE_CHECKPOINT__{tier}__EVERY_STEPS"] = str(every)
        env[f"TIERLAKE_CHECKPOINT__{tier}__INTERVAL_S"] = "0"
    env["TIERLAKE_CHECKPOINT__LOCAL_DIR"] = str(local_dir or root / "local")
    env["TIERLAKE_CHECKPOINT__EDGE_DIR"] = str(root / "edge")
    env["TIERLAKE_CHECKPOINT_FAULT"] = fault
    return env


def _run_trainer(
    settings: Settings, run: str, table: str, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "training.example", "--run", run, "--table", table, "--steps", str(STEPS)]
    command += ["--when-busy", "wait", *extra]  # every due step is saved: the fault counts do not hang on timing
    return subprocess.run(command, check=False, env=env, cwd=settings.root, capture_output=True, text=True, timeout=240)


def _committed(tiers: list[CheckpointTier], run: str, settings: Settings) -> dict[str, set[int]]:
    """Which steps hold a manifest on each tier, looked up directly (files and keys), not through tier.steps()."""
    found: dict[str, set[int]] = {}
    for tier in tiers:
        if isinstance(tier, FolderTier):
            found[tier.name] = {int(p.parent.name) for p in (tier.root / run).glob(f"*/{MANIFEST_NAME}")}
        else:
            client = s3_client(settings.s3)
            listing = client.list_objects_v2(
                Bucket=settings.s3.lake_bucket, Prefix=f"{settings.checkpoint.prefix}/{run}/"
            )
            keys = [obj["Key"] for obj in listing.get("Contents", [])]
            found[tier.name] = {int(key.split("/")[-2]) for key in keys if key.endswith(MANIFEST_NAME)}
    return found


def _assert_same(restored: dict[str, Any], expected: dict[str, Any]) -> None:
    for key, tensor in expected["model"].items():
        assert torch.equal(restored["model"][key], tensor), f"model {key} differs"
    for param, slots in expected["optim"]["state"].items():
        for slot, value in slots.items():
            assert torch.equal(torch.as_tensor(restored["optim"]["state"][param][slot]), torch.as_tensor(value)), (
                f"optimizer {param}.{slot} differs"
            )
    assert restored["loader"] == expected["loader"]


def _restore_and_finish(
    table: str, run: str, tiers: list[CheckpointTier], reference: dict[int, dict[str, Any]]
) -> tuple[str, int, tuple[str, ...]]:
    trainer = ToyTrainer(TrainOptions(run=run, table_uri=table))
    restored = trainer.restore(tiers)
    _assert_same(_snapshot(trainer), reference[restored.step])
    trainer.train(STEPS)
    _assert_same(_snapshot(trainer), reference[STEPS])
    return restored.tier, restored.step, restored.refused


@pytest.mark.parametrize("fault", ["snapshot:3", "write:2", "manifest:3", "promotion:2", "promotion:4"])
def test_kill_at_an_injected_point_restores_the_newest_committed_step(
    settings: Settings, table: str, reference: dict[int, dict[str, Any]], tmp_path: Path, fault: str
) -> None:
    run = f"crash-{uuid.uuid4().hex[:8]}"
    tiers = _tiers(settings, tmp_path)
    done = _run_trainer(settings, run, table, _trainer_env(tmp_path, fault=fault))
    assert done.returncode == -9, f"the trainer was not killed at {fault}: {done.stdout[-800:]} {done.stderr[-800:]}"
    committed = _committed(tiers, run, settings)
    newest = max(set().union(*committed.values()))
    nearest = next(tier.name for tier in tiers if newest in committed[tier.name])
    tier, step, refused = _restore_and_finish(table, run, tiers, reference)
    assert (tier, step) == (nearest, newest)
    assert refused == ()


def test_flipped_bytes_refuse_a_tier_and_the_next_one_is_used(
    settings: Settings, table: str, reference: dict[int, dict[str, Any]], tmp_path: Path
) -> None:
    run = f"flip-{uuid.uuid4().hex[:8]}"
    tiers = _tiers(settings, tmp_path)
    trainer = ToyTrainer(TrainOptions(run=run, table_uri=table))
    checkpointer = TieredCheckpointer(run, tiers, [TierPolicy(every_steps=1)] * 3)
    trainer.train(12, checkpointer=checkpointer)
    checkpointer.close()
    newest = max(tiers[0].steps(run))
    assert all(newest in tier.steps(run) for tier in tiers)  # the last checkpoint reached every tier
    for damaged in tiers[:2]:
        assert isinstance(damaged, FolderTier)
        shard = damaged.step_dir(run, newest) / "__0_0.distcp"
        data = bytearray(shard.read_bytes())
        data[len(data) // 3] ^= 0x01
        shard.write_bytes(bytes(data))
    tier, step, refused = _restore_and_finish(table, run, tiers, reference)
    assert (tier, step) == ("rgw", newest)
    assert [reason.split(":")[0] for reason in refused] == [
        f"step {newest} on tier local",
        f"step {newest} on tier edge",
    ]
    assert all("CRC-32C" in reason and "the manifest says" in reason for reason in refused)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: the node's SSD, full after the first checkpoint starts."""
    mount = tmp_path / "ssd"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True, capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"mounting a tmpfs needs root: {exc}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_local_disk_full_is_a_clear_error_and_training_goes_on(
    settings: Settings, table: str, tmp_path: Path, small_disk: Path
) -> None:
    run = f"full-{uuid.uuid4().hex[:8]}"
    tiers = _tiers(settings, tmp_path)
    env = _trainer_env(tmp_path, local_dir=small_disk)
    done = _run_trainer(settings, run, table, env, "--hidden", "512")  # ~3 MiB of model and optimizer state
    assert done.returncode == 0, done.stderr[-2000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last["event"] == "done"
    assert last["step"] == STEPS
    stats = last["stats"]
    assert stats["save_failures"] == 1
    assert "No space left on device" in stats["errors"][0]
    assert "to tier local" in stats["errors"][0]
    assert "Fix:" in stats["errors"][0]
    assert "No space left on device" in done.stderr  # logged too, not only counted
    assert FolderTier("local", small_disk).steps(run) == []
    assert FolderTier("local", small_disk).uncommitted(run) == []  # the partial step was removed
    assert tiers[1].steps(run)  # the edge tier took over
    assert tiers[2].steps(run)
    trainer = ToyTrainer(TrainOptions(run=run, table_uri=table, hidden=512))
    restored = trainer.restore(tiers)
    assert restored.tier == "edge"
    assert restored.step == max(tiers[1].steps(run))


def test_rgw_killed_during_a_promotion_is_counted_and_the_next_promotion_lands(
    stack: LocalStack, table: str, tmp_path: Path
) -> None:
    """RGW killed (kill -9) when a promotion has uploaded its shards, before its manifest: the promotion fails and
    is counted, training goes on, and once RGW is started again the next checkpoint reaches it, committed and whole."""
    settings = stack.settings
    run = f"rgw-{uuid.uuid4().hex[:8]}"
    tiers = _tiers(settings, tmp_path)
    rgw_daemon = next(d for d in stack.ceph.daemons() if d.name == "ceph-client.rgw.gw")
    killed: list[int] = []

    def kill_rgw_once(point: str) -> None:
        if point == "promotion" and not killed:
            killed.append(1)
            procs.kill9(rgw_daemon)

    policies = [TierPolicy(every_steps=1), TierPolicy(every_steps=1)]
    checkpointer = TieredCheckpointer(run, [tiers[0], tiers[2]], policies, fault=kill_rgw_once)
    trainer = ToyTrainer(TrainOptions(run=run, table_uri=table))
    try:
        trainer.train(1, checkpointer=checkpointer)
        checkpointer.wait()
    finally:
        stack.up()
    assert killed
    assert checkpointer.stats.promotion_failures == {"rgw": 1}
    assert "promoting step 1" in checkpointer.stats.errors[-1]
    assert tiers[2].steps(run) == []  # shards uploaded, no manifest: not a checkpoint
    trainer.train(2, checkpointer=checkpointer)
    checkpointer.close()
    assert tiers[2].steps(run) == [2]
    assert tiers[2].uncommitted(run) == []  # the half promotion of step 1 was cleared
    tiers[2].verify(run, 2)
