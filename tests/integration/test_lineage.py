"""Lineage against the real stack: a bronze-shaped and a silver table on Ceph RGW written batch by batch with the
ingest commits' offset metadata, one day of bronze archived to two virtual tape sites, bronze compacted (OPTIMIZE);
the lineage table synced on RGW; traces of table versions and of a checkpoint give the offsets actually in bronze,
the other table the same batch wrote, the checkpoint that read the version, and the catalog's cartridges and
extents of exactly the files of that version; ``tierlake lineage trace`` prints the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import CommitProperties, DeltaTable, write_deltalake
from openlineage.client.serde import Serde

from pipelines.ingest.silver import commit_metadata
from tests.lake_tables import scratch_archive, small_table
from tierlake.config import ArchiveTable, Settings
from tiers.archive.archiver import run
from tiers.archive.catalog import Catalog
from tiers.archive.context import ArchiveContext
from tiers.s3 import delta_storage_options
from training.lineage import checkpoint_event, trace
from training.lineage_archive import snapshot_paths
from training.lineage_records import validate_event
from training.lineage_store import LineageSources, LineageStore, catalog_rows, sync
from training.lineage_trace import FROM_TABLE, trace_version
from training.manifest import Manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TOPIC = "ev.telemetry"
OLD_DAY, NEW_DAY = "2020-01-01", "2026-01-01"


def _batch_rows(batch: int) -> pa.Table:
    """40 records of a batch on 3 partitions, half of them on the old day (so each batch adds an old-day file)."""
    rows = [
        {"topic": TOPIC, "partition": p, "offset": 1000 * p + 20 * batch + i, "station_id": f"st-{p}-{i % 3}"}
        for p in range(3)
        for i in range(6 if (p, batch) == (2, 1) else 20)  # partition 2 gets fewer records in batch 1
    ]
    days = [OLD_DAY if int(str(r["offset"])) % 2 else NEW_DAY for r in rows]
    return pa.Table.from_pylist([r | {"day": day} for r, day in zip(rows, days, strict=True)])


def _ranges(rows: pa.Table) -> dict[int, tuple[int, int]]:
    """The Kafka offset ranges a batch's rows cover, per partition: what the ingest query records."""
    grouped = rows.group_by("partition").aggregate([("offset", "min"), ("offset", "max")]).to_pylist()
    return {int(g["partition"]): (int(g["offset_min"]), int(g["offset_max"])) for g in grouped}


def _write(uri: str, rows: pa.Table, batch: int, options: dict[str, str]) -> int:
    metadata = commit_metadata("ev", batch, {TOPIC: _ranges(rows)})
    props = CommitProperties(custom_metadata={"userMetadata": metadata})
    write_deltalake(uri, rows, mode="append", partition_by=["day"], storage_options=options, commit_properties=props)
    return int(DeltaTable(uri, storage_options=options).version())


def _offsets_in(uri: str, options: dict[str, str]) -> dict[str, dict[str, list[int]]]:
    """The offsets bronze actually holds, per partition: what a trace of its newest ingest version must say."""
    rows = DeltaTable(uri, storage_options=options).to_pyarrow_table(columns=["partition", "offset"])
    grouped = rows.group_by("partition").aggregate([("offset", "min"), ("offset", "max")]).to_pylist()
    return {TOPIC: {str(g["partition"]): [g["offset_min"], g["offset_max"]] for g in grouped}}


@pytest.fixture(scope="module")
def lake(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Bronze and silver written by three batches; bronze's old day archived, then bronze compacted; synced."""
    folder = tmp_path_factory.mktemp("lineage")
    base = f"test-lineage-{uuid.uuid4().hex[:8]}"
    bronze, silver = (f"s3://{settings.s3.lake_bucket}/{base}/{name}" for name in ("bronze", "silver"))
    options = delta_storage_options(settings.s3)
    versions: dict[str, list[int]] = {"bronze": [], "silver": []}
    for batch in range(3):
        rows = _batch_rows(batch)
        versions["bronze"].append(_write(bronze, rows, batch, options))
        if batch != 1:  # batch 1 had no valid record for silver: bronze only
            versions["silver"].append(_write(silver, rows.filter(pc.less(rows["partition"], 2)), batch, options))
    policy = ArchiveTable(
        table=f"{base}/bronze",
        partition_column="day",
        key_column="station_id",
        cold_by="age",
        cold_after_days=30,
        retention_days=1,
    )
    archive = scratch_archive(settings.archive, folder, {policy.table: policy})
    context = ArchiveContext(archive=archive, s3=settings.s3, cache=settings.cache.options)
    catalog = Catalog(archive.catalog_uri, archive.audit_uri, s3=settings.s3)
    report = run(context, catalog, policy.table, [f"day={OLD_DAY}"], progress=False)
    assert report.all_verified
    read = versions["bronze"][-1]
    DeltaTable(bronze, storage_options=options).optimize.compact()
    manifest = Manifest(run="trace-run", step=7, created_unix=1.7e9, shards=(), tables={bronze: read})
    events = folder / "checkpoints.jsonl"
    events.write_text(Serde.to_json(checkpoint_event(manifest, "s3://lake/ckpt/trace-run/7/")) + "\n")
    store = LineageStore(f"s3://{settings.s3.lake_bucket}/{base}/_lineage", options)
    sources = LineageSources(
        tables=[bronze, silver],
        lake_bucket=settings.s3.lake_bucket,
        catalog_uri=archive.catalog_uri,
        checkpoint_events=events,
        events_out=folder / "lake.jsonl",
    )
    synced = sync(store, sources)
    return {
        "bronze": bronze,
        "silver": silver,
        "versions": versions,
        "read": read,
        "options": options,
        "store": store,
        "catalog": catalog_rows(archive.catalog_uri, options),
        "synced": synced,
        "manifest": manifest,
        "folder": folder,
        "archive": archive,
    }


def test_sync_keeps_every_batch_the_compaction_the_archive_and_the_checkpoint(lake: dict[str, Any]) -> None:
    synced = lake["synced"]
    files = len({(r["path"], r["copy"]) for r in lake["catalog"]})
    assert files >= 6  # three batches' old-day files, two copies each
    assert synced.rows == {"ingest": 3 * 3 + 2 * 2, "maintenance": 1, "archive": files, "checkpoint": 1}
    events = [json.loads(line) for line in (lake["folder"] / "lake.jsonl").read_text().splitlines()]
    assert len(events) == synced.events
    for event in events:
        validate_event(event)
    again = sync(lake["store"], LineageSources(tables=[lake["bronze"], lake["silver"]], lake_bucket="x"))
    assert again.rows == {}  # nothing twice


def test_a_bronze_version_traces_to_its_offsets_upstream_checkpoint_and_tape(lake: dict[str, Any]) -> None:
    bronze, options, read = lake["bronze"], lake["options"], lake["read"]
    found = trace_version(
        bronze, read, store=lake["store"], options=options, catalog=lake["catalog"], lake_bucket=bronze.split("/")[2]
    )
    assert found.source == FROM_TABLE
    assert found.offsets == _offsets_in(bronze, options)  # every offset bronze holds, and no other
    assert found.ingest_commits == 3
    assert found.batch == {
        "query": "ingest_ev",
        "batch_id": 2,
        "offsets": {TOPIC: {str(p): list(r) for p, r in _ranges(_batch_rows(2)).items()}},
    }
    assert found.upstream == [f"{lake['silver']}@{lake['versions']['silver'][-1]}"]
    assert found.checkpoints == [
        {"job": "checkpoint.trace-run", "output": "s3://lake/ckpt/trace-run/7/", "version": read, "exact": True}
    ]
    snapshot = DeltaTable(bronze, version=read, storage_options=options).get_add_actions(flatten=True)
    old_day = {str(p) for p in pa.table(snapshot).column("path").to_pylist() if f"day={OLD_DAY}" in str(p)}
    assert {r["path"] for r in lake["catalog"]} == old_day
    on_tape = sorted(
        (r["path"], r["copy"], r["cartridge"], r["start_block"], r["byte_offset"]) for r in lake["catalog"]
    )
    traced = [(a.path, a.copy, a.cartridge, a.extent["start_block"], a.extent["byte_offset"]) for a in found.archived]
    assert sorted(traced) == on_tape


def test_the_compaction_traces_to_the_version_it_read_and_leaves_tape_behind(lake: dict[str, Any]) -> None:
    bronze, options, read = lake["bronze"], lake["options"], lake["read"]
    found = trace_version(
        bronze,
        read + 1,
        store=lake["store"],
        options=options,
        catalog=lake["catalog"],
        lake_bucket=bronze.split("/")[2],
    )
    assert (found.operation, found.read_version, found.batch) == ("OPTIMIZE", read, None)
    assert found.upstream == [f"{bronze}@{read}"]
    assert found.offsets == _offsets_in(bronze, options)  # compaction moves rows, adds no offset
    assert found.archived == []  # the old day's archived files were rewritten into a new, unarchived one
    assert found.checkpoints == []  # the checkpoint read the version before


def test_a_silver_batch_names_the_bronze_version_of_the_same_batch(lake: dict[str, Any]) -> None:
    silver, versions = lake["silver"], lake["versions"]
    found = trace_version(silver, versions["silver"][0], store=lake["store"], options=lake["options"])
    assert found.batch is not None
    assert found.batch["batch_id"] == 0
    assert found.upstream == [f"{lake['bronze']}@{versions['bronze'][0]}"]


def test_a_checkpoint_traces_down_to_cartridges_and_extents(lake: dict[str, Any]) -> None:
    bronze, options = lake["bronze"], lake["options"]
    (table,) = trace(lake["manifest"], options, catalog=lake["catalog"], lake_bucket=bronze.split("/")[2])
    assert (table.uri, table.version, table.ingest_commits) == (bronze, lake["read"], 3)
    assert table.offsets == _offsets_in(bronze, options)
    assert {(a.path, a.copy) for a in table.archived} == {(r["path"], r["copy"]) for r in lake["catalog"]}
    assert {a.cartridge for a in table.archived} == {r["cartridge"] for r in lake["catalog"]}


def test_the_cli_prints_the_table_trace(settings: Settings, lake: dict[str, Any]) -> None:
    bronze, read = lake["bronze"], lake["read"]
    path = bronze.split("/", 3)[3]
    env = dict(os.environ) | {"TIERLAKE_ARCHIVE__CATALOG_URI": lake["archive"].catalog_uri}
    command = [str(Path(sys.executable).parent / "tierlake"), "lineage", "trace", f"{path}@{read}"]
    command += ["--lineage-table", lake["store"].uri]
    done = subprocess.run([*command, "--json"], check=False, env=env, cwd=settings.root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = trace_version(
        bronze,
        read,
        store=lake["store"],
        options=lake["options"],
        catalog=lake["catalog"],
        lake_bucket=settings.s3.lake_bucket,
    )
    assert json.loads(done.stdout) == json.loads(json.dumps(asdict(expected), default=str))
    text = subprocess.run(command, check=True, env=env, cwd=settings.root, capture_output=True, text=True).stdout
    assert f"table {bronze} @ version {read}: WRITE (from the lineage table)" in text
    assert f"-> kafka {TOPIC} partition 2: offsets " in text
    assert text.count("-> tape ") == len(lake["catalog"])


def test_a_vacuum_is_recorded_synced_and_traced_with_the_files_it_deleted(settings: Settings, tmp_path: Path) -> None:
    """`tierlake table vacuum --execute` (Spark's VACUUM, which leaves no commit on S3) records the files it deleted
    in the lake; `lineage sync` adds them to the lineage table; `lineage trace` of a version that held them says so."""
    table = small_table(settings, "vacuum_lineage", appends=3, rows=10)
    uri, options = f"s3://{settings.s3.lake_bucket}/{table}", delta_storage_options(settings.s3)
    write_deltalake(uri, pa.table({"station_id": ["b"], "power_kw": [2.0]}), mode="overwrite", storage_options=options)
    old = sorted(snapshot_paths(uri, 2, options))
    tierlake = str(Path(sys.executable).parent / "tierlake")
    env = dict(os.environ)

    def cli(*args: str) -> Any:
        done = subprocess.run(
            [tierlake, *args, "--json"], check=False, env=env, cwd=settings.root, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])  # the last line, as the DAGs read it (Spark prints)

    dry = cli("table", "vacuum", table, "--retention-hours", "0", "--allow-short-retention")
    assert (dry[0]["deletable"], dry[0]["lineage"]) == (old, None)  # a dry run deletes nothing, records nothing
    (done,) = cli("table", "vacuum", table, "--retention-hours", "0", "--allow-short-retention", "--execute")
    assert (done["deletable"], done["version"]) == (old, 3)
    key = done["lineage"].removeprefix(f"s3://{settings.s3.lake_bucket}/")
    assert key.startswith(f"_lineage/vacuum/{table}/000000000003-")
    store = LineageStore(f"s3://{settings.s3.lake_bucket}/scratch/lineage_{uuid.uuid4().hex[:8]}", options)
    synced = cli("lineage", "sync", "--table", table, "--lineage-table", store.uri)
    assert (synced["rows"]["write"], synced["rows"]["vacuum"]) == (4, len(old))
    assert cli("lineage", "sync", "--table", table, "--lineage-table", store.uri)["rows"] == {}  # nothing twice
    rows = [r for r in store.read().to_pylist() if r["kind"] == "vacuum"]
    assert sorted(r["file_path"] for r in rows) == old
    assert {(r["table_uri"], r["version"], r["job"]) for r in rows} == {(uri, 3, "maintenance.vacuum")}
    validate_event(json.loads(rows[0]["event"]))
    traced = cli("lineage", "trace", f"{table}@1", "--lineage-table", store.uri)
    assert traced["source"] == FROM_TABLE
    assert [(v["version"], v["files"]) for v in traced["vacuumed"]] == [(3, sorted(snapshot_paths(uri, 1, options)))]
    assert cli("lineage", "trace", f"{table}@3", "--lineage-table", store.uri)["vacuumed"] == []
    command = [tierlake, "lineage", "trace", f"{table}@2", "--lineage-table", store.uri]
    text = subprocess.run(command, check=True, env=env, cwd=settings.root, capture_output=True, text=True).stdout
    assert "-> VACUUM at " in text
    assert f"(table at version 3) deleted {len(old)} of this version's files" in text
