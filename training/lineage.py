"""Lineage of a checkpoint: the Delta table versions its loader read and the Kafka offsets behind those versions.

Each committed checkpoint is emitted as an OpenLineage run event (``COMPLETE``; job ``checkpoint.<run>``; inputs:
the tables with their versions; output: the checkpoint's location), by default to a JSON-lines file (the file
transport). :func:`trace` walks the other way: manifest -> table versions -> the ingest commits up to each version,
whose Delta ``userMetadata`` records the Kafka offset ranges of the batch (``pipelines.ingest.silver``).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import dataset_version_dataset
from openlineage.client.serde import Serde
from openlineage.client.transport.file import FileConfig, FileTransport

from tierlake.errors import StorageError
from training.lineage_archive import Archived, Vacuumed, archived_files, vacuumed_files
from training.lineage_http import LineageHttp, LineageUndelivered
from training.manifest import Manifest

logger = logging.getLogger(__name__)
NAMESPACE = "tierlake"
PRODUCER = "https://github.com/tierlake/tierlake/training"
Offsets = dict[str, dict[str, list[int]]]  # topic -> partition -> [first, last]


def checkpoint_event(manifest: Manifest, where: str) -> RunEvent:
    """The OpenLineage event of one committed checkpoint (the same run id for every tier's copy of a step)."""
    run_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"tierlake-checkpoint:{manifest.run}:{manifest.step}"))
    inputs = [
        InputDataset(
            namespace=NAMESPACE,
            name=uri,
            facets={"version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=str(version))},
        )
        for uri, version in sorted(manifest.tables.items())
    ]
    return RunEvent(
        eventType=RunState.COMPLETE,
        eventTime=datetime.fromtimestamp(manifest.created_unix, tz=UTC).isoformat(),
        run=Run(runId=run_id),
        job=Job(namespace=NAMESPACE, name=f"checkpoint.{manifest.run}"),
        producer=PRODUCER,
        inputs=inputs,
        outputs=[OutputDataset(namespace=NAMESPACE, name=where)],
    )


class LineageLog:
    """Emits checkpoint events through OpenLineage's file transport into ``folder`` (one JSON event a line), then,
    when ``http`` is given (``checkpoint.lineage_url``), posts each to that endpoint too.

    The file comes first and is the record: a post that fails is logged as an error naming the endpoint, the
    reason and the file that keeps the event (counted in :attr:`undelivered`); the checkpoint is not affected."""

    def __init__(self, folder: Path, *, http: LineageHttp | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "checkpoints.jsonl"
        self.client = OpenLineageClient(transport=FileTransport(FileConfig(log_file_path=str(self.path), append=True)))
        self.http = http
        self.undelivered = 0

    def committed(self, manifest: Manifest, where: str) -> None:
        event = checkpoint_event(manifest, where)
        self.client.emit(event)
        if self.http is None:
            return
        try:
            self.http.send([json.loads(Serde.to_json(event))], kept_in=str(self.path))
        except LineageUndelivered as exc:
            self.undelivered += 1
            logger.error("%s", exc, extra={"run": manifest.run, "step": manifest.step, "target": self.http.target})


@dataclass(frozen=True, kw_only=True)
class TableTrace:
    """One table version a checkpoint read, and the Kafka offsets its ingest commits up to that version hold."""

    uri: str
    version: int
    ingest_commits: int
    offsets: Offsets = field(default_factory=dict)
    archived: list[Archived] = field(default_factory=list)  # the version's files on tape, where archived
    vacuumed: list[Vacuumed] = field(default_factory=list)  # VACUUMs that deleted files of the version


def merge_offsets(into: Offsets, ranges: Mapping[str, Mapping[str, list[int]]]) -> None:
    """Widen ``into`` by the [first, last] ranges of one commit, per topic and partition."""
    for topic, partitions in ranges.items():
        held = into.setdefault(topic, {})
        for partition, (first, last) in partitions.items():
            low, high = held.get(partition, [first, last])
            held[partition] = [min(low, int(first)), max(high, int(last))]


def offsets_of(history: list[dict[str, Any]], version: int) -> tuple[int, Offsets]:
    """(commits with offsets, merged offset ranges) of the history entries at or below ``version``."""
    merged: Offsets = {}
    commits = 0
    for entry in history:
        if int(entry.get("version", -1)) > version:
            continue
        raw = entry.get("userMetadata")
        try:
            described = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            described = None
        if isinstance(described, dict) and isinstance(described.get("offsets"), dict):
            merge_offsets(merged, described["offsets"])
            commits += 1
    return commits, merged


def trace(
    manifest: Manifest,
    storage_options: Mapping[str, str] | None = None,
    *,
    catalog: Sequence[Mapping[str, Any]] | None = None,
    lake_bucket: str = "",
    vacuums: Sequence[Mapping[str, Any]] = (),
) -> list[TableTrace]:
    """The chain behind a checkpoint: each table version it read, the Kafka offsets behind that version, where its
    files are on tape (``catalog``: the archive catalog's rows), and the VACUUMs that deleted some of them
    (``vacuums``: lineage rows, ``training.lineage_records.vacuum_rows``)."""
    from deltalake import DeltaTable  # noqa: PLC0415 - only for the trace
    from deltalake.exceptions import DeltaError, TableNotFoundError  # noqa: PLC0415

    traces = []
    for uri, version in sorted(manifest.tables.items()):
        try:
            history = DeltaTable(uri, storage_options=dict(storage_options or {})).history()
        except (DeltaError, TableNotFoundError, OSError) as exc:
            raise StorageError(f"reading the history of {uri} failed: {exc}. Fix: check the table URI") from exc
        commits, offsets = offsets_of(history, version)
        archived = archived_files(uri, version, list(catalog or []), storage_options or {}, lake_bucket=lake_bucket)
        gone = vacuumed_files(uri, version, vacuums, storage_options or {})
        traces.append(
            TableTrace(
                uri=uri, version=version, ingest_commits=commits, offsets=offsets, archived=archived, vacuumed=gone
            )
        )
    return traces
