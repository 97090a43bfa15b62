"""``tierlake checkpoint`` and ``tierlake lineage trace`` on a real run of the example trainer (real RGW), and the
second-site mirror of its checkpoints: committed steps only, verified there."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from deltalake import CommitProperties, write_deltalake

from pipelines.ingest.silver import commit_metadata
from pipelines.lake.mirror import mirror_prefix
from tests.e2e.cli import tierlake
from tests.unit.loader_tables import token_rows
from tests.unit.test_docs import readme_block
from tierlake.config import Settings
from tiers.s3 import s3_client
from training.manifest import MANIFEST_NAME, Manifest, verify_folder
from training.tiers import FolderTier, RgwTier

pytestmark = pytest.mark.slow
BATCHES = {"corpus.docs": [{0: (0, 99), 1: (7, 120)}, {0: (100, 249), 2: (0, 40)}]}


def _env(root: Path, **cadence: int) -> dict[str, str]:
    env = dict(os.environ)
    for tier, every in {"LOCAL": 1, "EDGE": 1, "RGW": 1, **cadence}.items():
        env[f"TIERLAKE_CHECKPOINT__{tier}__EVERY_STEPS"] = str(every)
        env[f"TIERLAKE_CHECKPOINT__{tier}__INTERVAL_S"] = "0"
    env["TIERLAKE_CHECKPOINT__LOCAL_DIR"] = str(root / "local")
    env["TIERLAKE_CHECKPOINT__EDGE_DIR"] = str(root / "edge")
    env["TIERLAKE_CHECKPOINT__LINEAGE_DIR"] = str(root / "lineage")
    return env


def _tierlake(settings: Settings, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "tierlake"), *args]
    return subprocess.run(command, check=False, env=env, cwd=settings.root, capture_output=True, text=True, timeout=120)


def _train(settings: Settings, root: Path, run: str, *, steps: int, env: dict[str, str]) -> str:
    """The example trainer's run of ``steps`` over a table whose two commits carry the Kafka offsets of two ingest
    batches; returns the table."""
    table = str(root / "table")
    for batch, ranges in enumerate(BATCHES["corpus.docs"]):
        metadata = commit_metadata("corpus", batch, {"corpus.docs": ranges})
        props = CommitProperties(custom_metadata={"userMetadata": metadata})
        write_deltalake(table, token_rows(batch * 300, 300), mode="append", commit_properties=props)
    command = [sys.executable, "-m", "training.example", "--run", run, "--table", table, "--steps", str(steps)]
    command += ["--when-busy", "wait"]  # every step is saved: what the tiers hold does not hang on timing
    done = subprocess.run(command, check=False, env=env, cwd=settings.root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return table


@pytest.fixture(scope="module")
def trained(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str]:
    """A run of 20 steps (:func:`_train`)."""
    root = tmp_path_factory.mktemp("ckpt-cli")
    run = f"cli-{uuid.uuid4().hex[:8]}"
    return run, root, _train(settings, root, run, steps=20, env=_env(root))


def test_readme_trainer_block_runs_as_written(settings: Settings, tmp_path: Path) -> None:
    """The README's checkpoint commands, as written, on a run named as they name it (under a prefix of its own)."""
    env = {**_env(tmp_path), "TIERLAKE_CHECKPOINT__PREFIX": f"tests/readme-{uuid.uuid4().hex[:8]}/checkpoints"}
    _train(settings, tmp_path, "myrun", steps=4, env=env)
    lines = readme_block("## For trainers")
    assert [shlex.split(line)[:3] for line in lines] == [
        ["tierlake", "checkpoint", "verify"],
        ["tierlake", "lineage", "trace"],
    ], lines
    for line in lines:
        result = tierlake(shlex.split(line)[1:], env=env)
        assert result.returncode == 0, f"README line {line!r} exited {result.returncode}: {result.stderr[-2000:]}"
        assert result.stdout.strip(), f"README line {line!r} printed nothing"
    verified = tierlake(["checkpoint", "verify", "myrun"], env=env).stdout.splitlines()
    assert {line.split()[0] for line in verified} == {"local", "edge", "rgw"}, verified  # every tier's copies: ok
    assert all(line.endswith(": ok") for line in verified), verified


def test_list_show_verify_and_a_damaged_copy(settings: Settings, trained: tuple[str, Path, str]) -> None:
    run, root, table = trained
    env = _env(root)
    listing = json.loads(_tierlake(settings, env, "checkpoint", "list", "--run", run, "--json").stdout)
    committed = {item["tier"]: item["committed"] for item in listing}
    assert committed["local"]
    assert committed["local"][-1] == committed["edge"][-1] == committed["rgw"][-1]
    newest = committed["local"][-1]
    shown = json.loads(_tierlake(settings, env, "checkpoint", "show", run, "--json").stdout)
    assert (shown["step"], shown["tier"], shown["tables"]) == (newest, "local", {table: 1})
    assert shown["loader_state"]["samples_consumed"] == newest * 16
    assert _tierlake(settings, env, "checkpoint", "verify", run).returncode == 0
    shard = FolderTier("local", root / "local").step_dir(run, newest) / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    verify = _tierlake(settings, env, "checkpoint", "verify", run)
    assert verify.returncode == 4
    bad = [line for line in verify.stdout.splitlines() if "BAD" in line]
    assert len(bad) == 1
    assert f"local  step {newest}: BAD" in bad[0]
    assert "CRC-32C" in bad[0]
    target = root / "restored"
    restored = _tierlake(settings, env, "checkpoint", "restore", run, "--to", str(target), "--json")
    assert json.loads(restored.stdout) == {"run": run, "step": newest, "from": "edge", "to": str(target)}
    assert sorted(p.name for p in target.iterdir()) == [".metadata", MANIFEST_NAME, "__0_0.distcp"]


def test_lineage_trace_gives_table_versions_and_kafka_offsets(
    settings: Settings, trained: tuple[str, Path, str]
) -> None:
    run, root, table = trained
    traced = json.loads(_tierlake(settings, _env(root), "lineage", "trace", run, "--json").stdout)
    assert traced["tables"] == [
        {
            "uri": table,
            "version": 1,
            "ingest_commits": 2,
            "offsets": {"corpus.docs": {"0": [0, 249], "1": [7, 120], "2": [0, 40]}},
            "archived": [],  # not archived (tests/integration/test_lineage.py traces archived files)
            "vacuumed": [],  # a local table: no VACUUM record (tests/unit/test_lineage_records.py has one)
        }
    ]
    events = [json.loads(line) for line in (root / "lineage" / "checkpoints.jsonl").read_text().splitlines()]
    newest = traced["checkpoint"]["step"]
    mine = [e for e in events if e["outputs"][0]["name"].endswith(f"{run}/{newest:012d}/")]
    assert [e["inputs"][0]["facets"]["version"]["datasetVersion"] for e in mine] == ["1"]  # its RGW copy
    assert all(e["eventType"] == "COMPLETE" and e["job"]["name"] == f"checkpoint.{run}" for e in events)


def test_gc_is_a_dry_run_until_applied(settings: Settings, trained: tuple[str, Path, str]) -> None:
    run, root, _ = trained
    env = _env(root) | {"TIERLAKE_CHECKPOINT__EDGE__KEEP_LAST": "1"}
    edge, local = FolderTier("edge", root / "edge"), FolderTier("local", root / "local")
    before, local_before = edge.steps(run), local.steps(run)
    assert len(before) > 1
    dry = json.loads(_tierlake(settings, env, "checkpoint", "gc", run, "--json").stdout)
    assert dry["applied"] is False
    assert dry["remove"]["edge"] == before[:-1]
    assert dry["remove"].get("local", []) == local_before[:-3]  # keep_last 3; a step kept for a promotion goes now
    assert (edge.steps(run), local.steps(run)) == (before, local_before)  # a dry run removes nothing
    assert _tierlake(settings, env, "checkpoint", "gc", run, "--apply").returncode == 0
    assert edge.steps(run) == before[-1:]
    assert local.steps(run) == local_before[-3:]
    older = local.steps(run)[-2]  # gone from edge now: promote it back from local
    promoted = _tierlake(settings, env, "checkpoint", "promote", run, str(older), "--to", "edge")
    assert promoted.returncode == 0, promoted.stderr
    assert f"promoted step {older} of run {run} from local to edge" in promoted.stdout
    assert "copying" in promoted.stderr  # the progress bar
    assert older in edge.steps(run)
    edge.verify(run, older)


def test_the_mirror_holds_committed_checkpoints_only(settings: Settings, trained: tuple[str, Path, str]) -> None:
    run, _, _ = trained
    client = s3_client(settings.s3)
    prefix = f"{settings.checkpoint.prefix}/{run}/"
    client.put_object(Bucket=settings.s3.lake_bucket, Key=f"{prefix}{999:012d}/__0_0.distcp", Body=b"half")
    report = mirror_prefix(settings, prefix)
    assert report.ok
    source = RgwTier(client, settings.s3.lake_bucket, settings.checkpoint.prefix)
    second = RgwTier(client, settings.mirror.bucket, settings.checkpoint.prefix, name="mirror")
    assert second.steps(run) == source.steps(run)
    assert second.uncommitted(run) == []  # the unfinished step 999 stayed behind
    for step in second.steps(run):
        second.verify(run, step)


def _closed_port() -> int:
    """A loopback port nothing listens on: the lake's RGW, gone."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_restore_without_the_lakes_rgw_comes_from_the_second_site(
    settings: Settings, trained: tuple[str, Path, str], tmp_path: Path
) -> None:
    run, _, _ = trained
    assert mirror_prefix(settings, f"{settings.checkpoint.prefix}/{run}/").ok
    client = s3_client(settings.s3)
    second = RgwTier(client, settings.mirror.bucket, settings.checkpoint.prefix, name="mirror")
    newest = second.steps(run)[-1]
    dead = {"TIERLAKE_S3__ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "TIERLAKE_CEPH__MANAGED": "false"}
    gone = _env(tmp_path) | dead  # the lake's RGW gone, and the node with its local and edge folders
    target = tmp_path / "restored"
    refused = _tierlake(settings, gone, "checkpoint", "restore", run, "--to", str(target))
    assert refused.returncode == 2  # the second site on the same (dead) endpoint: nowhere to restore from
    assert "unreachable: rgw" in refused.stderr
    assert "mirror" in refused.stderr
    at_second_site = gone | {"TIERLAKE_MIRROR__ENDPOINT": settings.s3.endpoint}  # the second site answers
    restored = _tierlake(settings, at_second_site, "checkpoint", "restore", run, "--to", str(target), "--json")
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert json.loads(restored.stdout) == {"run": run, "step": newest, "from": "mirror", "to": str(target)}
    manifest = Manifest.from_json((target / MANIFEST_NAME).read_bytes(), str(target))
    verify_folder(target, manifest)  # every file, its size and CRC-32C
    primary = RgwTier(client, settings.s3.lake_bucket, settings.checkpoint.prefix).manifest(run, newest)
    assert manifest.to_json() == primary.to_json()
