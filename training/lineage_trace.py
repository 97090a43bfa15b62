"""``trace table@version``: the Kafka offsets and upstream versions that made a Delta table version, the
checkpoints that read it, and the cartridges and extents holding its files where archived.

The answer comes from the lineage table (``training.lineage_store``) when it holds the version, else it is derived
on the spot from the table's Delta history (``source`` says which); the upstream versions of an ingest batch (the
other tables that batch wrote) are known only from the lineage table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tierlake.errors import NotFound, StorageError
from training.lineage import Offsets, merge_offsets
from training.lineage_archive import Archived, Vacuumed, archived_files, vacuumed_files
from training.lineage_records import HISTORY_KINDS, LINEAGE_SCHEMA, history_rows, to_table, vacuum_rows
from training.lineage_store import LineageStore

FROM_TABLE = "lineage table"
FROM_HISTORY = "delta history"
TRACE_COLUMNS = [name for name in LINEAGE_SCHEMA.names if name != "event"]


@dataclass(frozen=True, kw_only=True)
class VersionTrace:
    """What made ``uri`` at ``version`` and who read it."""

    uri: str
    version: int
    source: str
    operation: str
    batch: Mapping[str, Any] | None  # the version's own ingest batch: query, batch_id, offsets
    read_version: int | None  # a maintenance commit's starting version
    ingest_commits: int  # ingest commits up to the version
    offsets: Offsets  # their Kafka offset ranges, merged per topic and partition
    upstream: list[str] = field(default_factory=list)  # other tables' versions written by the same batch
    checkpoints: list[Mapping[str, Any]] = field(default_factory=list)
    archived: list[Archived] = field(default_factory=list)
    vacuumed: list[Vacuumed] = field(default_factory=list)  # VACUUMs that deleted files of this version


def _history_table(uri: str, options: Mapping[str, str]) -> pa.Table:
    from deltalake import DeltaTable  # noqa: PLC0415
    from deltalake.exceptions import DeltaError, TableNotFoundError  # noqa: PLC0415

    try:
        history = DeltaTable(uri, storage_options=dict(options)).history()
    except (DeltaError, TableNotFoundError, OSError) as exc:
        raise StorageError(f"reading the history of {uri} failed: {exc}. Fix: check the table URI") from exc
    return to_table(history_rows(uri, history))


def _own_rows(store: LineageStore | None, uri: str, version: int, options: Mapping[str, str]) -> tuple[pa.Table, str]:
    """The table's lineage rows: from the lineage table when it reaches ``version``, else from the history."""
    if store is not None and store.exists():
        rows = store.read(columns=TRACE_COLUMNS, table_uri=uri)  # not the events' JSON: most of the bytes
        kinds = rows.filter(pc.is_in(rows["kind"], value_set=pa.array(HISTORY_KINDS)))
        if kinds.num_rows and pc.max(kinds["version"]).as_py() >= version:
            return rows, FROM_TABLE
    return _history_table(uri, options), FROM_HISTORY


def _offsets_up_to(rows: pa.Table, version: int) -> tuple[int, Offsets]:
    ingest = rows.filter(pc.and_(pc.equal(rows["kind"], "ingest"), pc.less_equal(rows["version"], version)))
    ingest = ingest.filter(pc.is_valid(ingest["topic"]))
    grouped = ingest.group_by(["topic", "kafka_partition"]).aggregate([("offset_first", "min"), ("offset_last", "max")])
    merged: Offsets = {}
    for item in grouped.to_pylist():
        part = {str(item["kafka_partition"]): [int(item["offset_first_min"]), int(item["offset_last_max"])]}
        merge_offsets(merged, {str(item["topic"]): part})
    return len(set(ingest["version"].to_pylist())), merged


def _batch_of(own: list[dict[str, Any]]) -> dict[str, Any] | None:
    ingest = [r for r in own if r["kind"] == "ingest"]
    if not ingest:
        return None
    offsets: Offsets = {}
    for r in ingest:
        if r["topic"] is not None:
            merge_offsets(offsets, {r["topic"]: {str(r["kafka_partition"]): [r["offset_first"], r["offset_last"]]}})
    return {"query": ingest[0]["job"], "batch_id": ingest[0]["batch_id"], "offsets": offsets}


def _upstream(store: LineageStore | None, uri: str, batch: Mapping[str, Any] | None, read: int | None) -> list[str]:
    found = [f"{uri}@{read}"] if read is not None else []
    if batch is None or store is None or not store.exists():
        return found
    rows = store.read(columns=["kind", "job", "batch_id", "table_uri", "version"], batch_id=int(batch["batch_id"]))
    same = rows.filter(
        pc.and_(
            pc.and_(pc.equal(rows["kind"], "ingest"), pc.equal(rows["job"], batch["query"])),
            pc.not_equal(rows["table_uri"], uri),
        )
    )
    return found + sorted(
        {f"{u}@{v}" for u, v in zip(same["table_uri"].to_pylist(), same["version"].to_pylist(), strict=True)}
    )


def _checkpoints(rows: pa.Table, uri: str, version: int, events: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Checkpoints whose loader read this table at ``version`` or later (``exact``: at this version)."""
    read = rows.filter(pc.and_(pc.equal(rows["kind"], "checkpoint"), pc.greater_equal(rows["version"], version)))
    found = {(r["job"], r["output"], r["version"]) for r in read.select(["job", "output", "version"]).to_pylist()}
    for event in events:  # not synced yet: the checkpointer's own event file
        for dataset in event.get("inputs", []):
            read_at = dataset.get("facets", {}).get("version", {}).get("datasetVersion")
            if dataset.get("name") == uri and read_at is not None and int(read_at) >= version:
                found.add(
                    (event["job"]["name"], event["outputs"][0]["name"] if event.get("outputs") else "", int(read_at))
                )
    return [{"job": j, "output": o, "version": v, "exact": v == version} for j, o, v in sorted(found)]


def trace_version(
    uri: str,
    version: int,
    *,
    store: LineageStore | None,
    options: Mapping[str, str],
    catalog: Sequence[Mapping[str, Any]] | None = None,
    checkpoint_events: Sequence[Mapping[str, Any]] | None = None,
    lake_bucket: str = "",
    vacuum_events: Sequence[Mapping[str, Any]] | None = None,
) -> VersionTrace:
    """The trace of ``uri`` at ``version`` (see the module's docstring). ``vacuum_events``: VACUUM records not in
    the lineage table yet (``training.lineage_vacuum``); the lineage table's are read too."""
    rows, source = _own_rows(store, uri, version, options)
    own = rows.filter(
        pc.and_(pc.equal(rows["version"], version), pc.is_in(rows["kind"], value_set=pa.array(HISTORY_KINDS)))
    ).to_pylist()
    if not own:
        raise NotFound(f"{uri} has no commit {version} in its {source}. Fix: `tierlake table history` lists them")
    batch = _batch_of(own)
    read = own[0]["read_version"] if own[0]["kind"] == "maintenance" else None
    commits, offsets = _offsets_up_to(rows, version)
    return VersionTrace(
        uri=uri,
        version=version,
        source=source,
        operation=str(own[0]["operation"]),
        batch=batch,
        read_version=read,
        ingest_commits=commits,
        offsets=offsets,
        upstream=_upstream(store if source == FROM_TABLE else None, uri, batch, read),
        checkpoints=_checkpoints(rows, uri, version, list(checkpoint_events or [])),
        archived=archived_files(uri, version, list(catalog or []), options, lake_bucket=lake_bucket),
        vacuumed=vacuumed_files(uri, version, _vacuum_rows(store, rows, source, uri, vacuum_events or []), options),
    )


def _vacuum_rows(
    store: LineageStore | None, rows: pa.Table, source: str, uri: str, events: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The table's VACUUM rows: the lineage table's (read apart when the trace came from the history) and those of
    records not synced yet."""
    if source != FROM_TABLE and store is not None and store.exists():
        rows = store.read(columns=TRACE_COLUMNS, table_uri=uri)
    held: list[dict[str, Any]] = rows.filter(pc.equal(rows["kind"], "vacuum")).to_pylist()
    return held + vacuum_rows(events)


def as_json(trace: VersionTrace) -> str:
    from dataclasses import asdict  # noqa: PLC0415

    return json.dumps(asdict(trace), default=str)


def latest_version(uri: str, options: Mapping[str, str]) -> int:
    """The newest version of ``uri``."""
    from deltalake import DeltaTable  # noqa: PLC0415
    from deltalake.exceptions import DeltaError, TableNotFoundError  # noqa: PLC0415

    try:
        return int(DeltaTable(uri, storage_options=dict(options)).version())
    except (DeltaError, TableNotFoundError, OSError) as exc:
        raise NotFound(f"no Delta table at {uri}: {exc}. Fix: check the table's path or URI") from exc
