"""Lineage records derived from Delta history, the archive catalog, VACUUM records and checkpoint events; their
OpenLineage events
checked against the schema (and broken ones refused); a table version traced from a local Delta table, from its
history and from the lineage table alike."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, write_deltalake
from openlineage.client.serde import Serde

from pipelines.ingest.silver import commit_metadata
from tierlake.errors import SchemaMismatch
from training.lineage import checkpoint_event, trace
from training.lineage_archive import archived_files, snapshot_paths
from training.lineage_records import (
    archive_rows,
    checkpoint_rows,
    history_rows,
    purge_rows,
    vacuum_event,
    vacuum_rows,
    validate_event,
)
from training.lineage_store import LineageSources, LineageStore, sync
from training.lineage_trace import FROM_HISTORY, FROM_TABLE, trace_version
from training.manifest import Manifest

pytestmark = pytest.mark.unit
BATCHES = [{0: (0, 99), 1: (7, 120)}, {0: (100, 249), 2: (0, 40)}, {1: (121, 130)}]


def _ingest_entry(version: int, batch: int, ranges: dict[int, tuple[int, int]]) -> dict[str, Any]:
    return {
        "version": version,
        "timestamp": 1_760_000_000_000 + version,
        "operation": "WRITE",
        "userMetadata": commit_metadata("ev", batch, {"ev.telemetry": ranges}),
    }


def _catalog_row(path: str, copy_number: int, *, site: str, cartridge: str) -> dict[str, Any]:
    return {
        "table": "bronze/ev_telemetry",
        "path": path,
        "version_min": 1,
        "version_max": 3,
        "copy": copy_number,
        "site": site,
        "cartridge": cartridge,
        "aggregate": "agg-1",
        "member_offset": 512,
        "extent_partition": "b",
        "start_block": 7,
        "byte_offset": 0,
        "byte_count": 4096,
        "archived_at": None,
    }


def _events(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [json.loads(e) for e in dict.fromkeys(r["event"] for r in rows)]


def test_an_ingest_commit_is_one_row_per_partition_and_one_valid_event() -> None:
    rows = history_rows("s3://lake/bronze/ev_telemetry", [_ingest_entry(1, 0, BATCHES[0])])
    assert [(r["kind"], r["batch_id"], r["topic"], r["kafka_partition"]) for r in rows] == [
        ("ingest", 0, "ev.telemetry", 0),
        ("ingest", 0, "ev.telemetry", 1),
    ]
    assert [(r["offset_first"], r["offset_last"]) for r in rows] == [(0, 99), (7, 120)]
    (event,) = _events(rows)
    validate_event(event)
    assert event["job"]["name"] == "ingest_ev"
    assert [(d["namespace"], d["name"]) for d in event["inputs"]] == [("tierlake", "kafka://ev.telemetry")]
    assert event["outputs"][0]["facets"]["version"]["datasetVersion"] == "1"


def test_maintenance_and_plain_writes_name_their_operation_and_starting_version() -> None:
    history = [
        {"version": 0, "timestamp": 1, "operation": "CREATE TABLE"},
        {"version": 4, "timestamp": 2, "operation": "OPTIMIZE", "readVersion": 3},
        {"version": 5, "timestamp": 3, "operation": "VACUUM END", "readVersion": 4},
    ]
    rows = history_rows("s3://lake/silver/ev", history, after=0)  # version 0 already held
    assert [(r["kind"], r["job"], r["version"], r["read_version"]) for r in rows] == [
        ("maintenance", "maintenance.optimize", 4, 3),
        ("maintenance", "maintenance.vacuum_end", 5, 4),
    ]
    for event in _events(rows):
        validate_event(event)


def test_archive_and_checkpoint_records_carry_valid_events() -> None:
    catalog = [_catalog_row("day=1/a.parquet", 1, site="a", cartridge="A00001L9")]
    catalog.append(_catalog_row("day=1/a.parquet", 2, site="b", cartridge="B00001L9"))
    rows = archive_rows(catalog, {"bronze/ev_telemetry": "s3://lake/bronze/ev_telemetry"})
    assert [(r["output"], r["copy"], json.loads(r["extent"])["start_block"]) for r in rows] == [
        ("tape://a/A00001L9", 1, 7),
        ("tape://b/B00001L9", 2, 7),
    ]
    manifest = Manifest(run="r", step=5, created_unix=1.7e9, shards=(), tables={"s3://lake/gold/t": 9})
    event = json.loads(Serde.to_json(checkpoint_event(manifest, "s3://lake/ckpt/r/5/")))
    (row,) = checkpoint_rows([event])
    assert (row["kind"], row["table_uri"], row["version"], row["output"]) == (
        "checkpoint",
        "s3://lake/gold/t",
        9,
        "s3://lake/ckpt/r/5/",
    )
    for item in [*_events(rows), event]:
        validate_event(item)


def test_a_file_purged_from_the_lake_is_one_row_per_tape_copy_once_every_copy_is_purged() -> None:
    names = {"bronze/ev_telemetry": "s3://lake/bronze/ev_telemetry"}
    catalog = [
        {**_catalog_row("day=1/a.parquet", 1, site="a", cartridge="A00001L9"), "file_id": "f1", "state": "PURGED"},
        {**_catalog_row("day=1/a.parquet", 2, site="b", cartridge="B00001L9"), "file_id": "f1", "state": "PURGED"},
        {**_catalog_row("day=1/b.parquet", 1, site="a", cartridge="A00001L9"), "file_id": "f2", "state": "PURGED"},
        {**_catalog_row("day=1/b.parquet", 2, site="b", cartridge="B00001L9"), "file_id": "f2", "state": "VERIFIED"},
    ]
    when = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
    rows = purge_rows(catalog, names, {"bronze/ev_telemetry": when})
    assert [(r["kind"], r["file_path"], r["copy"], r["output"], r["event_time"]) for r in rows] == [
        ("purge", "day=1/a.parquet", 1, "tape://a/A00001L9", when),
        ("purge", "day=1/a.parquet", 2, "tape://b/B00001L9", when),
    ]  # b.parquet: its copy 2 is not PURGED yet, so the file is not purged
    (event,) = _events(rows)
    validate_event(event)
    assert event["job"]["name"] == "purge.bronze/ev_telemetry"
    assert [d["name"] for d in event["inputs"]] == ["s3://lake/bronze/ev_telemetry/day=1/a.parquet"]
    assert [d["name"] for d in event["outputs"]] == ["tape://a/A00001L9", "tape://b/B00001L9"]


def test_sync_adds_a_purge_once_with_the_time_of_the_audit_log(tmp_path: Path) -> None:
    archived = datetime(2026, 11, 1, tzinfo=UTC)
    catalog = [
        {**_catalog_row("day=1/a.parquet", n, site=site, cartridge=f"{site.upper()}00001L9"), "file_id": "f1"}
        for n, site in ((1, "a"), (2, "b"))
    ]
    catalog = [{**row, "archived_at": archived, "state": "VERIFIED"} for row in catalog]
    write_deltalake(str(tmp_path / "catalog"), pa.Table.from_pylist(catalog))
    purged = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
    audit = [{"at": purged, "action": "purge", "table": "bronze/ev_telemetry", "target": "day=1"}]
    write_deltalake(str(tmp_path / "audit"), pa.Table.from_pylist(audit))
    store = LineageStore(str(tmp_path / "lineage"))
    sources = LineageSources(
        tables=[], lake_bucket="lake", catalog_uri=str(tmp_path / "catalog"), audit_uri=str(tmp_path / "audit")
    )
    assert sync(store, sources).rows == {"archive": 2}  # verified on tape, still in the lake: no purge yet
    write_deltalake(
        str(tmp_path / "catalog"),
        pa.Table.from_pylist([{**row, "state": "PURGED"} for row in catalog]),
        mode="overwrite",
    )
    assert sync(store, sources).rows == {"purge": 2}
    assert sync(store, sources).rows == {}  # nothing twice
    kept = [r for r in store.read(columns=["kind", "event_time", "copy"]).to_pylist() if r["kind"] == "purge"]
    assert sorted(r["copy"] for r in kept) == [1, 2]
    assert {r["event_time"] for r in kept} == {purged}


def test_a_version_trace_says_which_archived_files_were_purged_from_the_lake(tmp_path: Path) -> None:
    uri = _local_table(tmp_path)
    version = DeltaTable(uri).version()
    (path, *_) = sorted(snapshot_paths(uri, version, {}))
    catalog = [
        {**_catalog_row(path, n, site=site, cartridge=f"{site.upper()}00001L9"), "table": uri, "state": state}
        for n, site, state in ((1, "a", "PURGED"), (2, "b", "PURGED"))
    ]
    archived = archived_files(uri, version, catalog, {}, lake_bucket="lake")
    assert [(a.path, a.copy, a.state) for a in archived] == [(path, 1, "PURGED"), (path, 2, "PURGED")]
    assert archived_files(uri, version, [{**catalog[0], "path": "gone.parquet"}], {}, lake_bucket="lake") == []


@pytest.mark.parametrize(
    ("breakage", "field"),
    [
        (lambda e: e["run"].pop("runId"), "run"),
        (lambda e: e["run"].update(runId="batch-7"), "run/runId"),
        (lambda e: e.update(eventType="DONE"), "eventType"),
        (lambda e: e.pop("producer"), "(the event)"),  # a required property is missing from the event itself
        (lambda e: e["job"].update(name=7), "job/name"),
        (lambda e: e["outputs"][0]["facets"]["version"].pop("datasetVersion"), "outputs/0/facets/version"),
        (
            lambda e: e["outputs"][0]["facets"]["version"].update(datasetVersion=1),
            "outputs/0/facets/version/datasetVersion",
        ),
        (
            lambda e: e["outputs"][0]["facets"]["version"].update(_schemaURL="https://x.invalid/F.json"),
            "outputs/0/facets/version",
        ),
        (
            lambda e: e.update(schemaURL="https://openlineage.io/spec/1-0-5/OpenLineage.json#/$defs/RunEvent"),
            "schemaURL",
        ),
        (lambda e: e.update(producer="not a uri"), "producer"),
        (lambda e: e["outputs"][0]["facets"]["version"].pop("_producer"), "outputs/0/facets/version"),
        (lambda e: e.update(eventTime="yesterday"), "eventTime"),
    ],
)
def test_a_broken_event_is_refused_naming_its_field(breakage: Any, field: str) -> None:
    (good,) = _events(history_rows("s3://lake/bronze/t", [_ingest_entry(1, 0, BATCHES[0])]))
    validate_event(good)
    broken = copy.deepcopy(good)
    breakage(broken)
    with pytest.raises(SchemaMismatch, match=re.escape(f"lineage event field '{field}'")):
        validate_event(broken)


def _local_table(folder: Path) -> str:
    uri = str(folder / "bronze")
    for batch, ranges in enumerate(BATCHES):
        props = CommitProperties(custom_metadata={"userMetadata": commit_metadata("ev", batch, {"ev.t": ranges})})
        write_deltalake(uri, pa.table({"n": list(range(10))}), mode="append", commit_properties=props)
    DeltaTable(uri).optimize.compact()
    return uri


def test_a_table_version_traces_the_same_from_history_and_from_the_lineage_table(tmp_path: Path) -> None:
    uri = _local_table(tmp_path)
    silver = str(tmp_path / "silver")  # batch 1 also wrote silver: bronze@1's upstream
    props = CommitProperties(custom_metadata={"userMetadata": commit_metadata("ev", 1, {"ev.t": BATCHES[1]})})
    write_deltalake(silver, pa.table({"n": [1]}), mode="append", commit_properties=props)
    derived = trace_version(uri, 1, store=None, options={})
    assert derived.source == FROM_HISTORY
    assert derived.batch == {"query": "ingest_ev", "batch_id": 1, "offsets": {"ev.t": {"0": [100, 249], "2": [0, 40]}}}
    assert (derived.ingest_commits, derived.offsets) == (2, {"ev.t": {"0": [0, 249], "1": [7, 120], "2": [0, 40]}})
    store = LineageStore(str(tmp_path / "lineage"))
    report = sync(store, LineageSources(tables=[uri, silver], lake_bucket="lake"))
    assert report.rows == {"ingest": 7, "maintenance": 1}  # bronze 2 + 2 + 1 partitions, silver 2
    assert sync(store, LineageSources(tables=[uri, silver], lake_bucket="lake")).rows == {}  # nothing twice
    kept = trace_version(uri, 1, store=store, options={})
    assert kept.source == FROM_TABLE
    assert (kept.batch, kept.ingest_commits, kept.offsets) == (derived.batch, derived.ingest_commits, derived.offsets)
    assert kept.upstream == [f"{silver}@0"]
    optimized = trace_version(uri, 3, store=store, options={})
    assert (optimized.operation, optimized.read_version, optimized.batch) == ("OPTIMIZE", 2, None)
    assert optimized.upstream == [f"{uri}@2"]
    assert optimized.offsets == {"ev.t": {"0": [0, 249], "1": [7, 130], "2": [0, 40]}}


def test_a_vacuum_is_one_row_per_deleted_file_synced_once_and_traced_to_the_versions_that_lost_them(
    tmp_path: Path,
) -> None:
    uri = str(tmp_path / "silver")
    for n in range(3):
        write_deltalake(uri, pa.table({"n": [n]}), mode="append")
    write_deltalake(uri, pa.table({"n": [9]}), mode="overwrite")  # version 3: versions 0-2's files left the table
    table = DeltaTable(uri)
    old = sorted(snapshot_paths(uri, 2, {}))
    deleted = table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    assert sorted(deleted) == old  # delta-rs really deleted them
    at = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
    event = vacuum_event(uri=uri, version=3, deleted=deleted, at=at)
    validate_event(event)
    assert event["job"]["name"] == "maintenance.vacuum"
    assert [d["name"] for d in event["outputs"]] == [f"{uri}/{path}" for path in old]
    rows = vacuum_rows([event])
    assert [(r["kind"], r["version"], r["file_path"], r["event_time"]) for r in rows] == [
        ("vacuum", 3, path, at) for path in old
    ]
    (nothing,) = vacuum_rows([vacuum_event(uri=uri, version=3, deleted=[], at=at)])  # ran, deleted nothing
    assert nothing["file_path"] is None
    asked: list[set[str]] = []

    def records(held: Any) -> list[dict[str, Any]]:
        asked.append(set(held))
        return [event]

    store = LineageStore(str(tmp_path / "lineage"))
    sources = LineageSources(tables=[uri], lake_bucket="lake", vacuum_events=records)
    # delta-rs logs VACUUM START and END (counts only: the maintenance rows); the record names the files
    assert sync(store, sources).rows == {"write": 4, "maintenance": 2, "vacuum": 3}
    assert sync(store, sources).rows == {}  # nothing twice
    assert asked == [set(), {event["run"]["runId"]}]  # the second sync says which records it holds
    for version in (0, 2):  # from the lineage table: the version's own files, deleted by the VACUUM at version 3
        (gone,) = trace_version(uri, version, store=store, options={}).vacuumed
        assert (gone.version, gone.files, gone.run_id) == (
            3,
            sorted(snapshot_paths(uri, version, {})),
            rows[0]["run_id"],
        )
    assert trace_version(uri, 3, store=store, options={}).vacuumed == []  # the live version lost nothing
    derived = trace_version(uri, 1, store=None, options={}, vacuum_events=[event])  # a record not synced yet
    assert derived.source == FROM_HISTORY
    assert [v.files for v in derived.vacuumed] == [sorted(snapshot_paths(uri, 1, {}))]
    assert trace_version(uri, 1, store=None, options={}).vacuumed == []
    read = Manifest(run="r", step=4, created_unix=1.7e9, shards=(), tables={uri: 2})  # a checkpoint that read v2
    (read_trace,) = trace(read, {}, vacuums=rows)
    assert [(v.version, v.files) for v in read_trace.vacuumed] == [(3, sorted(snapshot_paths(uri, 2, {})))]
