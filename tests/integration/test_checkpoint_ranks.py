"""Two ranks (torch.distributed, gloo on loopback, CPU) save through tierlake's DCP storage pair with ``dcp.save``
and ``dcp.async_save`` to a local folder tier and to Ceph RGW, and load back with ``dcp.load``: each tier's
manifest lists both ranks' shards, and each rank gets its own state back bit for bit (a DTensor sharded across the
ranks, a tensor only that rank holds, a replicated one, plain values)."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from tierlake.config import Settings
from training.manifest import MANIFEST_NAME
from training.tiers import RgwTier

from .checkpoint_ranks import run_rank, tiers

pytestmark = [pytest.mark.integration]
WORLD = 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_two_ranks_save_to_every_tier_and_each_restores_its_own_state_bit_for_bit(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, local, scratch = tmp_path / "out", tmp_path / "local", tmp_path / "scratch"
    for folder in (out, local, scratch):
        folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # the children's staging folders and restore copies go there
    bucket = settings.s3.lake_bucket
    prefix = f"test-ranks/{uuid.uuid4().hex[:8]}"
    args = (WORLD, _free_port(), (str(out), str(local), prefix), settings.s3, bucket)
    mp.start_processes(run_rank, args=args, nprocs=WORLD, join=True, start_method="spawn")  # type: ignore[attr-defined,no-untyped-call]
    found = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(WORLD)]
    shards = ["__0_0.distcp", "__1_0.distcp"]
    for tier in tiers(local, settings.s3, bucket, prefix):
        assert tier.steps("ranks") == [1, 2]
        for step in (1, 2):
            manifest = tier.manifest("ranks", step)
            assert sorted(s.name for s in manifest.shards) == [".metadata", *shards], (tier.name, step)
            assert tier.verify("ranks", step) == manifest
            if isinstance(tier, RgwTier):  # nothing but the manifest's files under the step
                keys = {k.rsplit("/", 1)[1] for k in tier._keys(tier.step_prefix("ranks", step))}
                assert keys == {".metadata", *shards, MANIFEST_NAME}
            for rank in found:
                assert rank[f"manifest/{tier.name}/{step}"] == [".metadata", *shards]
                saved, restored = rank["saved"][f"{tier.name}/{step}"], rank["restored"][f"{tier.name}/{step}"]
                assert restored == saved, (tier.name, step, rank["rank"])
    assert found[0]["saved"]["local/1"]["model.sharded"] != found[1]["saved"]["local/1"]["model.sharded"]
    assert "rank1.own" in found[1]["restored"]["rgw/2"]
    assert [p.name for p in scratch.iterdir() if p.name.startswith("tierlake-")] == []  # no staging folder left
