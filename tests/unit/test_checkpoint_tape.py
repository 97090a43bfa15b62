"""Checkpoints on tape: the tape policy (pure), and the tape tier over a real virtual library (file-backed LTFS
layout, two sites) with a local catalog: archive, list, restore bit for bit, a flipped byte on one copy."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.lake_tables import scratch_archive
from tierlake.config import load_settings
from tierlake.errors import CommitConflict, ConfigError, NotFound, StorageError
from tiers.archive.catalog import Catalog
from tiers.archive.context import ArchiveContext
from tiers.tape.library import Library
from training.checkpointer import TieredCheckpointer
from training.lineage_archive import checkpoint_copies
from training.lineage_store import LineageSources, LineageStore, sync
from training.manifest import MANIFEST_NAME
from training.operations import copy_step, plan_archive, plan_gc
from training.policy import TierPolicy, to_archive
from training.restore import load_latest
from training.tape import TapeTier
from training.tiers import CheckpointTier, FolderTier

REPO = Path(__file__).resolve().parents[2]


@given(
    st.sets(st.integers(0, 500), max_size=30),
    st.sets(st.integers(0, 500), max_size=30),
    st.integers(0, 40),
)
def test_to_archive_takes_only_steps_older_than_the_newest_k_not_on_tape(
    committed: set[int], on_tape: set[int], older_than: int
) -> None:
    chosen = to_archive(committed, on_tape, older_than)
    assert chosen == sorted(chosen)
    assert set(chosen) <= committed - on_tape
    newest = set(sorted(committed, reverse=True)[:older_than])
    if older_than == 0:
        assert chosen == []
    else:
        assert not set(chosen) & newest
        assert set(chosen) == committed - newest - on_tape


def test_to_archive_refuses_a_negative_count() -> None:
    with pytest.raises(ConfigError, match="older_than = -1 is negative"):
        to_archive([1, 2], [], -1)


def test_gc_keeps_rgw_steps_the_tape_policy_still_wants(tmp_path: Path) -> None:
    tier = FolderTier("rgw", tmp_path)
    for step in (1, 2, 3, 4):
        tier.step_dir("r", step).mkdir(parents=True)
        (tier.step_dir("r", step) / MANIFEST_NAME).write_text("{}")
    policies = [TierPolicy(every_steps=1, keep_last=1)]
    assert plan_gc([tier], policies, "r").remove == {"rgw": [1, 2, 3]}
    assert plan_gc([tier], policies, "r", protected={"rgw": (1, 3)}).remove == {"rgw": [2]}


def _context(tmp_path: Path) -> ArchiveContext:
    base = load_settings("ci", conf_dir=REPO / "conf", env={"TIERLAKE_CACHE__DIR": str(tmp_path / "cache")})
    return ArchiveContext(archive=scratch_archive(base.archive, tmp_path), s3=base.s3, cache=base.cache.options)


def _tape(tmp_path: Path) -> TapeTier:
    context = _context(tmp_path)
    catalog = Catalog(context.archive.catalog_uri, context.archive.audit_uri)
    return TapeTier(context, catalog, bucket="lake", prefix="training/checkpoints", retention_days=7)


def _state(seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optim": optimizer.state_dict()}


def _saved(tmp_path: Path, step: int) -> tuple[FolderTier, dict[str, Any]]:
    local = FolderTier("local", tmp_path / "local")
    checkpointer = TieredCheckpointer("r", [local], [TierPolicy(every_steps=1)])
    state = _state(step)
    checkpointer.maybe_save(step, state, loader_state={"samples_consumed": step}, tables={"t": 3})
    checkpointer.close()
    return local, state


def _flip(tape: TapeTier, row: dict[str, Any]) -> None:
    """One byte of this copy of a file, on its cartridge's data record (as bit-rot would)."""
    record = Library(tape.context.archive).cartridge_dir(row["cartridge"]) / f"1_{row['start_block']}_R"
    data = bytearray(record.read_bytes())
    data[row["byte_offset"] + min(10, row["byte_count"] - 1)] ^= 0xFF
    record.write_bytes(bytes(data))


def test_a_step_archived_to_tape_is_listed_restored_bit_for_bit_and_survives_one_bad_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tape = _tape(tmp_path)
    assert tape.steps("r") == []  # no catalog yet: nothing on tape, and listing creates none
    assert not Path(tape.catalog.catalog_uri).exists()
    local, state = _saved(tmp_path, 7)
    tiers: list[CheckpointTier] = [local, tape]
    assert plan_archive(local, tape, "r", 0).steps == ()
    assert plan_archive(local, tape, "r", 1).steps == ()  # the newest step stays off tape
    source, refused = copy_step(tiers, "r", 7, tape)
    assert (source, refused) == ("local", [])
    assert tape.steps("r") == [7]
    assert tape.uncommitted("r") == []
    assert tape.runs() == ["r"]
    rows = tape.catalog.rows().to_pylist()
    manifest = local.manifest("r", 7)
    assert {r["path"].split("/", 1)[1] for r in rows} == {s.name for s in manifest.shards} | {MANIFEST_NAME}
    assert {r["site"] for r in rows} == set(tape.context.archive.sites)
    assert len(tape.cartridges("r", 7)) == 2
    for copy in (1, 2):  # the manifest is the last file on tape of each copy
        mine = sorted((r for r in rows if r["copy"] == copy), key=lambda r: (r["aggregate"], r["member_offset"]))
        assert mine[-1]["path"].endswith(MANIFEST_NAME)
    assert all(r["key"].startswith("training/checkpoints/r/000000000007/") for r in rows)
    with pytest.raises(CommitConflict, match="already on tape"):
        tape.put_step(local.step_dir("r", 7), manifest)
    assert tape.manifest("r", 7) == manifest
    copies = checkpoint_copies(rows, "lake", tape.step_prefix("r", 7))
    assert {(c.copy, c.cartridge) for c in copies} == {(r["copy"], r["cartridge"]) for r in rows}
    assert sorted(c.path for c in copies if c.copy == 1) == sorted([s.name for s in manifest.shards] + [MANIFEST_NAME])
    assert checkpoint_copies(rows, "lake", tape.step_prefix("r", 8)) == []
    # lineage sync turns the checkpoint's catalog rows into valid archive events of its run's folder
    report = sync(
        LineageStore(str(tmp_path / "lineage")),
        LineageSources(tables=[], lake_bucket="lake", catalog_uri=tape.catalog.catalog_uri),
    )
    assert report.rows == {"archive": len(rows)}

    local.remove("r", 7)
    target = _state(99)
    restored = load_latest("r", tiers, target, loader=None)
    assert (restored.tier, restored.step, restored.refused) == ("tape", 7, ())
    assert restored.where.startswith("tape:s3://lake/training/checkpoints/r/000000000007/ (cartridges ")
    assert torch.equal(target["model"]["weight"], state["model"]["weight"])
    assert torch.equal(target["optim"]["state"][0]["exp_avg"], state["optim"]["state"][0]["exp_avg"])
    actions = [e["action"] for e in tape.catalog.audit().sort_by("at").to_pylist()]
    assert actions[-2:] == ["recall", "recalled"]

    shard = next(r for r in rows if r["copy"] == 1 and r["path"].endswith(".distcp"))
    _flip(tape, shard)
    target = _state(98)
    with caplog.at_level(logging.WARNING, logger="training.tape"):
        assert load_latest("r", tiers, target).tier == "tape"  # copy 2, at the other site
    assert f"copy 1 ({shard['cartridge']}) SHA-256 mismatch" in caplog.text
    assert torch.equal(target["model"]["bias"], state["model"]["bias"])
    _flip(tape, next(r for r in rows if r["copy"] == 2 and r["path"] == shard["path"]))
    with pytest.raises(NotFound, match=r"step 7 on tier tape: .*no healthy copy"):
        load_latest("r", tiers, _state(97))
    with pytest.raises(StorageError, match="not removed by checkpoint commands"):
        tape.remove("r", 7)


def test_a_damaged_copy_is_never_archived(tmp_path: Path) -> None:
    tape = _tape(tmp_path)
    local, _ = _saved(tmp_path, 3)
    shard = next(p for p in local.step_dir("r", 3).iterdir() if p.suffix == ".distcp")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="CRC-32C"):
        tape.put_step(local.step_dir("r", 3), local.manifest("r", 3))
    assert tape.steps("r") == []
