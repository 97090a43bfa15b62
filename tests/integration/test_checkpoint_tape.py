"""Checkpoints on tape against the real stack: committed steps on Ceph RGW go to a virtual tape library (file-backed
LTFS layout, two sites) by the tape policy (`tierlake checkpoint archive`), are listed on tape, are deleted from
RGW, and come back bit for bit through the recall path, from the other site's copy when one copy has a flipped
byte; a restore falls back to tape past a damaged RGW copy and says so."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tests.lake_tables import scratch_archive
from tierlake.config import Settings
from tiers.archive.catalog import Catalog
from tiers.archive.context import ArchiveContext
from tiers.s3 import s3_client
from tiers.tape.library import Library
from training.checkpointer import TieredCheckpointer
from training.manifest import MANIFEST_NAME
from training.policy import TierPolicy
from training.restore import load_latest
from training.tape import TapeTier
from training.tiers import CheckpointTier, FolderTier, RgwTier

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

STEPS = (1, 2, 3)


def _state(seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(96, 96)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 96)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optim": optimizer.state_dict()}


def _env(tmp_path: Path) -> dict[str, str]:
    """The CLI's settings: this test's folders for the nearer tiers and the tape library (as scratch_archive)."""
    env = dict(os.environ)
    env["TIERLAKE_CHECKPOINT__LOCAL_DIR"] = str(tmp_path / "local")
    env["TIERLAKE_CHECKPOINT__EDGE_DIR"] = str(tmp_path / "edge")
    env["TIERLAKE_CHECKPOINT__LINEAGE_DIR"] = str(tmp_path / "lineage")
    archive = {"library_dir": "tape", "catalog_uri": "catalog", "audit_uri": "audit", "staging_dir": "staging"}
    env |= {f"TIERLAKE_ARCHIVE__{key.upper()}": str(tmp_path / folder) for key, folder in archive.items()}
    env |= {"TIERLAKE_ARCHIVE__BLOCK_SIZE": "65536", "TIERLAKE_ARCHIVE__CARTRIDGES_PER_SITE": "2"}
    return env


def _tierlake(settings: Settings, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "tierlake"), *args]
    return subprocess.run(command, check=False, env=env, cwd=settings.root, capture_output=True, text=True, timeout=300)


def _tape_steps(settings: Settings, env: dict[str, str], run: str) -> list[int]:
    listing = json.loads(_tierlake(settings, env, "checkpoint", "list", "--run", run, "--json").stdout)
    return next(item["committed"] for item in listing if item["tier"] == "tape")


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def _save_steps(run: str, rgw: RgwTier) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, str]]]:
    """Save every step to RGW; each step's state, and the digests of its files (manifest included) as committed."""
    saver = TieredCheckpointer(run, [rgw], [TierPolicy(every_steps=1, keep_last=10)], when_busy="wait")
    states = {step: _state(step) for step in STEPS}
    for step in STEPS:
        saver.maybe_save(step, states[step], loader_state={"samples_consumed": step * 16}, tables={})
    saver.close()
    assert rgw.steps(run) == list(STEPS)
    originals: dict[int, dict[str, str]] = {}
    for step in STEPS:
        with rgw.local_copy(run, step) as (folder, manifest):
            originals[step] = _digests(folder) | {MANIFEST_NAME: hashlib.sha256(manifest.to_json()).hexdigest()}
    return states, originals


def _assert_archived_once_then_collected(settings: Settings, env: dict[str, str], run: str) -> None:
    """`checkpoint archive` puts steps 1 and 2 on tape once; only then may `checkpoint gc` remove them from RGW."""

    def cli(*args: str) -> Any:
        done = _tierlake(settings, env, "checkpoint", *args, "--json")
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)

    assert cli("gc", run)["remove"].get("rgw", []) == []  # steps 1 and 2 wait for tape before gc may remove them
    dry = {item["run"]: item for item in cli("archive", "--dry-run")["runs"]}  # every run on RGW
    assert (dry[run]["steps"], dry[run]["archived"]) == ([1, 2], [])
    assert _tape_steps(settings, env, run) == []  # a dry run writes nothing
    assert cli("archive", run)["runs"][0]["archived"] == [{"step": 1, "from": "rgw"}, {"step": 2, "from": "rgw"}]
    again = cli("archive", run)["runs"][0]
    assert (again["steps"], again["on_tape"]) == ([], [1, 2])  # archived once
    assert cli("archive", run, "--older-than", "0") == {"older_than": 0, "runs": []}
    assert cli("gc", run)["remove"]["rgw"] == [1, 2]  # on tape now: keep_last 1 may remove them
    listing = json.loads(_tierlake(settings, env, "checkpoint", "list", "--run", run, "--json").stdout)
    committed = {item["tier"]: item["committed"] for item in listing}
    assert (committed["local"], committed["rgw"], committed["tape"]) == ([], [1, 2, 3], [1, 2])


def _flip_rgw_byte(client: S3Client, bucket: str, key: str) -> None:
    """Flip the middle byte of the object at ``key`` on RGW."""
    body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket=bucket, Key=key, Body=bytes(body))


def _flip_tape_byte(context: ArchiveContext, catalog: Catalog, key: str) -> None:
    """Flip a byte inside copy 1 of ``key``'s record on its cartridge (copy 2, on the other site, stays sound)."""
    rows = [r for r in catalog.rows().to_pylist() if r["key"] == key]
    bad = next(r for r in rows if r["copy"] == 1)
    record = Library(context.archive).cartridge_dir(bad["cartridge"]) / f"1_{bad['start_block']}_R"
    data = bytearray(record.read_bytes())
    data[bad["byte_offset"] + 100] ^= 0xFF
    record.write_bytes(bytes(data))


def test_rgw_checkpoints_go_to_tape_and_come_back_bit_for_bit(settings: Settings, tmp_path: Path) -> None:
    run = f"tape-{uuid.uuid4().hex[:8]}"
    client = s3_client(settings.s3, sign_payload=False)
    rgw = RgwTier(client, settings.s3.lake_bucket, settings.checkpoint.prefix)
    states, originals = _save_steps(run, rgw)

    env = _env(tmp_path) | {"TIERLAKE_CHECKPOINT__TAPE__OLDER_THAN": "1", "TIERLAKE_CHECKPOINT__RGW__KEEP_LAST": "1"}
    _assert_archived_once_then_collected(settings, env, run)

    context = ArchiveContext(
        archive=scratch_archive(settings.archive, tmp_path), s3=settings.s3, cache=settings.cache.options
    )
    catalog = Catalog(context.archive.catalog_uri, context.archive.audit_uri)
    tape = TapeTier(context, catalog, bucket=settings.s3.lake_bucket, prefix=settings.checkpoint.prefix)
    assert len(tape.cartridges(run, 1)) == 2  # one cartridge per site
    for step in (1, 2):
        rgw.remove(run, step)  # tape holds the only copies now
    traced = _tierlake(settings, env, "lineage", "trace", f"{run}@1", "--json")
    assert traced.returncode == 0, traced.stderr[-2000:]
    checkpoint = json.loads(traced.stdout)["checkpoint"]
    assert (checkpoint["step"], checkpoint["tier"]) == (1, "tape")  # its manifest recalled from tape
    assert {c["cartridge"] for c in checkpoint["tape"]} == set(tape.cartridges(run, 1))
    assert {c["copy"] for c in checkpoint["tape"]} == {1, 2}
    assert {c["path"] for c in checkpoint["tape"]} == set(originals[1])
    # Step 3's RGW copy gets a flipped byte: the restore refuses it and falls back to tape's newest, step 2.
    _flip_rgw_byte(client, settings.s3.lake_bucket, rgw.step_prefix(run, 3) + "__0_0.distcp")
    tiers: list[CheckpointTier] = [FolderTier("local", tmp_path / "local"), rgw, tape]
    target = _state(99)
    restored = load_latest(run, tiers, target)
    assert (restored.tier, restored.step) == ("tape", 2)
    assert "step 3 on tier rgw" in restored.refused[0]
    assert "CRC-32C" in restored.refused[0]
    assert restored.manifest.loader_state == {"samples_consumed": 32}
    assert torch.equal(target["model"]["weight"], states[2]["model"]["weight"])
    assert torch.equal(target["optim"]["state"][0]["exp_avg_sq"], states[2]["optim"]["state"][0]["exp_avg_sq"])

    # A flipped byte on copy 1 of step 1: the restore through the CLI reads copy 2, bit for bit.
    _flip_tape_byte(context, catalog, rgw.step_prefix(run, 1) + "__0_0.distcp")
    out = tmp_path / "restored"
    restore = _tierlake(settings, env, "checkpoint", "restore", run, "--step", "1", "--to", str(out), "--json")
    assert restore.returncode == 0, restore.stderr[-2000:]
    assert json.loads(restore.stdout) == {"run": run, "step": 1, "from": "tape", "to": str(out)}
    assert _digests(out) == originals[1]
    recalled = [e for e in catalog.audit().sort_by("at").to_pylist() if e["action"] == "recalled"]
    files = {f["path"]: f for f in json.loads(recalled[-1]["detail"])["files"]}
    assert files[f"{1:012d}/__0_0.distcp"]["copy"] == 2  # the other site's copy
    assert files[f"{1:012d}/{MANIFEST_NAME}"]["cartridge"] in tape.cartridges(run, 1)
