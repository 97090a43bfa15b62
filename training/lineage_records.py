"""Lineage records of the lake, derived from what is already recorded; no write on the ingest path.

- **Ingest batches**: every Delta commit of an ingest batch carries ``userMetadata`` (query, batch id, Kafka offset
  ranges per topic and partition; :func:`pipelines.ingest.silver.commit_metadata`), so a table's history *is* the
  ledger of its batches.
- **Maintenance**: OPTIMIZE, VACUUM, DELETE, RESTORE... are commits too; their ``readVersion`` is the version they
  started from.
- **Archive moves**: one catalog row per archived file and copy (``tiers.archive.catalog``): table version, cartridge,
  site and extent.
- **Purges**: an archived file whose copies are all ``PURGED`` in the catalog left the object store (``tierlake
  archive purge``); it is on tape only. Its time is the table's latest ``purge`` in the audit log.
- **Checkpoints**: the OpenLineage events the checkpointer emits (``training.lineage``).
- **VACUUM**: the one record written for lineage alone. Spark's VACUUM leaves no commit on this stack's S3, and
  where Delta logs ``VACUUM START``/``END`` they hold counts, not files; so ``tierlake table vacuum --execute``
  writes one event per table it vacuumed (``training.lineage_vacuum``): the table at the version it kept as input,
  each deleted file as an output.

Each becomes one OpenLineage ``COMPLETE`` run event (validated against the upstream OpenLineage spec schema and the
schema of each facet it carries, copied in ``openlineage_spec/``) and one
or more flat rows of :data:`LINEAGE_SCHEMA` (one per Kafka topic-partition, per file copy, per table read), which
``training.lineage_store`` keeps in a Delta table.
"""

from __future__ import annotations

import json
import logging
import reprlib
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import pyarrow as pa
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import dataset_version_dataset
from openlineage.client.serde import Serde

from tierlake.errors import DependencyMissing, SchemaMismatch

logger = logging.getLogger(__name__)
NAMESPACE = "tierlake"
PRODUCER = "https://github.com/tierlake/tierlake/training"
SPEC_FOLDER = "openlineage_spec"
# the spec, then every facet tierlake's events carry (the OpenLineage client adds its version as a run tag)
SPEC_FILES = ("OpenLineage.json", "DatasetVersionDatasetFacet.json", "TagsRunFacet.json", "TagsJobFacet.json")
FORMATS_NEEDED = {"date-time": "rfc3339-validator", "uri": "rfc3986-validator", "uuid": "jsonschema"}
TS = pa.timestamp("us", tz="UTC")
LINEAGE_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),  # ingest | maintenance | write | archive | purge | vacuum | checkpoint
        ("job", pa.string()),
        ("run_id", pa.string()),
        ("event_time", TS),
        ("table_uri", pa.string()),
        ("version", pa.int64()),
        ("operation", pa.string()),
        ("batch_id", pa.int64()),
        ("topic", pa.string()),
        ("kafka_partition", pa.int32()),
        ("offset_first", pa.int64()),
        ("offset_last", pa.int64()),
        ("read_version", pa.int64()),
        ("output", pa.string()),
        ("file_path", pa.string()),
        ("cartridge", pa.string()),
        ("site", pa.string()),
        ("copy", pa.int32()),
        ("extent", pa.string()),
        ("event", pa.string()),
    ]
)
HISTORY_KINDS = ("ingest", "maintenance", "write")
PURGED = "PURGED"  # tiers.archive.state.FileState.PURGED: the object store's copy is gone, tape holds the file
MAINTENANCE = frozenset(
    {"OPTIMIZE", "VACUUM START", "VACUUM END", "DELETE", "UPDATE", "MERGE", "RESTORE", "REORG", "ZORDER", "CLONE"}
)


def run_id(*parts: object) -> str:
    """A stable run id: the same record gives the same id, so a re-derived event is the same event."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "tierlake-lineage:" + ":".join(str(p) for p in parts)))


def _version_facet(version: int) -> dict[str, Any]:
    return {"version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=str(version))}


def run_event(
    *,
    job: str,
    run: str,
    at: datetime,
    inputs: Iterable[tuple[str, int | None]],
    outputs: Iterable[tuple[str, int | None]],
) -> dict[str, Any]:
    """An OpenLineage ``COMPLETE`` run event as a JSON-ready dict; datasets are (name, version or None)."""
    event = RunEvent(
        eventType=RunState.COMPLETE,
        eventTime=at.isoformat(),
        run=Run(runId=run),
        job=Job(namespace=NAMESPACE, name=job),
        producer=PRODUCER,
        inputs=[
            InputDataset(namespace=NAMESPACE, name=name, facets=_version_facet(v) if v is not None else {})
            for name, v in inputs
        ],
        outputs=[
            OutputDataset(namespace=NAMESPACE, name=name, facets=_version_facet(v) if v is not None else {})
            for name, v in outputs
        ],
    )
    body: dict[str, Any] = json.loads(Serde.to_json(event))
    return body


@dataclass(frozen=True)
class _Spec:
    """The validators of the copied OpenLineage schemas: the run event, and each facet schema by its ``$id``."""

    event: Any
    facet_ids: frozenset[str]
    validator_for: Any  # (schema) -> validator, with every copied schema resolvable by its $id


@cache
def _spec() -> _Spec:
    try:
        import jsonschema  # noqa: PLC0415 - only where events are checked
        from referencing import Registry, Resource  # noqa: PLC0415
    except ImportError as exc:
        raise DependencyMissing(
            "validating lineage events needs jsonschema. Fix: pip install 'jsonschema>=4.20'"
        ) from exc
    folder = resources.files("training").joinpath(SPEC_FOLDER)
    schemas = [json.loads(folder.joinpath(name).read_text()) for name in SPEC_FILES]
    registry: Any = Registry().with_resources((schema["$id"], Resource.from_contents(schema)) for schema in schemas)
    cls = jsonschema.validators.validator_for(schemas[0])
    for schema in schemas:
        cls.check_schema(schema)
    missing = {fmt: pkg for fmt, pkg in FORMATS_NEEDED.items() if fmt not in cls.FORMAT_CHECKER.checkers}
    if missing:  # jsonschema passes a value whose format it cannot check: refuse rather than check less
        raise DependencyMissing(
            f"checking the formats {sorted(missing)} of lineage events needs {sorted(set(missing.values()))}. "
            f"Fix: pip install {' '.join(sorted(set(missing.values())))}"
        )

    def validator_for(schema: Mapping[str, Any]) -> Any:
        return cls(schema, registry=registry, format_checker=cls.FORMAT_CHECKER)

    spec_id = schemas[0]["$id"]
    return _Spec(
        event=validator_for({"$ref": f"{spec_id}#/$defs/RunEvent"}),
        facet_ids=frozenset(schema["$id"] for schema in schemas[1:]),
        validator_for=validator_for,
    )


def _facets(event: Mapping[str, Any]) -> Iterator[tuple[list[str | int], Any]]:
    """(path, facet) of every facet of a run event: run, job, and each input and output dataset."""
    for part in ("run", "job"):
        for name, facet in (event.get(part, {}).get("facets") or {}).items():
            yield [part, "facets", name], facet
    for part, own in (("inputs", "inputFacets"), ("outputs", "outputFacets")):
        for index, dataset in enumerate(event.get(part) or []):
            for group in ("facets", own):
                for name, facet in (dataset.get(group) or {}).items():
                    yield [part, index, group, name], facet


def _leaf(error: Any) -> Any:
    """The innermost of an ``anyOf`` error (the spec wraps every facets map in one): the field actually wrong."""
    from jsonschema.exceptions import best_match  # noqa: PLC0415

    while error.context:
        error = best_match(error.context)
    return error


def _problems(event: Mapping[str, Any]) -> list[tuple[list[str | int], Any, str]]:
    """(path, value, message) of everything in ``event`` that breaks the spec or the schema of one of its facets."""
    spec = _spec()
    errors = sorted(spec.event.iter_errors(event), key=lambda e: list(map(str, e.absolute_path)))
    found = [(list(leaf.absolute_path), leaf.instance, leaf.message) for leaf in map(_leaf, errors)]
    if found:
        return found
    expected = spec.event.schema["$ref"].split("#")[0]
    if not str(event["schemaURL"]).startswith(expected + "#"):
        return [(["schemaURL"], event["schemaURL"], f"is not a URL into the spec tierlake checks ({expected})")]
    for path, facet in _facets(event):
        url = str(facet["_schemaURL"])
        if url.partition("#")[0] not in spec.facet_ids:
            return [(path, url, f"names a facet schema tierlake has no copy of (it has {sorted(spec.facet_ids)})")]
        errors = list(spec.validator_for({"$ref": url}).iter_errors(facet))
        found += [(path + list(leaf.absolute_path), leaf.instance, leaf.message) for leaf in map(_leaf, errors)]
    return found


def validate_event(event: Mapping[str, Any]) -> None:
    """Raise :class:`SchemaMismatch` naming the first field of ``event`` that breaks the OpenLineage spec schema
    (a ``RunEvent`` of spec 2-0-2) or the schema of one of its facets (copies in ``training/openlineage_spec/``)."""
    problems = _problems(event)
    if problems:
        path, value, message = problems[0]
        where = "/".join(str(p) for p in path) or "(the event)"
        raise SchemaMismatch(
            f"lineage event field {where!r} = {reprlib.repr(value)}: {message}. "
            f"Fix: build events with training.lineage_records.run_event ({len(problems)} problem(s) in all)"
        )


def _row(**values: Any) -> dict[str, Any]:
    return {name: values.get(name) for name in LINEAGE_SCHEMA.names}


def _metadata(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    raw = entry.get("userMetadata")
    try:
        described = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    return described if isinstance(described, dict) and isinstance(described.get("offsets"), dict) else None


def _history_time(entry: Mapping[str, Any]) -> datetime:
    stamp = entry.get("timestamp")
    return datetime.fromtimestamp(int(stamp) / 1000, tz=UTC) if isinstance(stamp, int) else datetime.now(UTC)


def commit_rows(uri: str, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of one Delta history entry: an ingest batch (one row per topic-partition), a maintenance
    operation, or another write."""
    version = int(entry["version"])
    operation = str(entry.get("operation") or "")
    at = _history_time(entry)
    described = _metadata(entry)
    read = entry.get("readVersion")
    read_version = int(read) if isinstance(read, int) else None
    if described is not None:
        query, batch = str(described.get("query", "ingest")), int(described.get("batch_id", -1))
        ranges = [
            (topic, int(partition), int(first), int(last))
            for topic, partitions in sorted(described["offsets"].items())
            for partition, (first, last) in sorted(partitions.items(), key=lambda item: int(item[0]))
        ]
        rid = run_id("ingest", query, batch)  # the same run for every table the batch wrote
        topics = sorted({f"kafka://{topic}" for topic, *_ in ranges})
        event = json.dumps(
            run_event(job=query, run=rid, at=at, inputs=[(t, None) for t in topics], outputs=[(uri, version)])
        )
        common = {"kind": "ingest", "job": query, "run_id": rid, "event_time": at, "table_uri": uri, "version": version}
        return [
            _row(
                **common,
                operation=operation,
                batch_id=batch,
                topic=topic,
                kafka_partition=partition,
                offset_first=first,
                offset_last=last,
                event=event,
            )
            for topic, partition, first, last in ranges
        ] or [_row(**common, operation=operation, batch_id=batch, event=event)]
    kind = "maintenance" if operation in MAINTENANCE else "write"
    job = f"{kind}.{operation.lower().replace(' ', '_') or 'commit'}"
    rid = run_id(kind, uri, version)
    inputs = [(uri, read_version)] if read_version is not None else []
    event = json.dumps(run_event(job=job, run=rid, at=at, inputs=inputs, outputs=[(uri, version)]))
    return [
        _row(
            kind=kind,
            job=job,
            run_id=rid,
            event_time=at,
            table_uri=uri,
            version=version,
            operation=operation,
            read_version=read_version,
            event=event,
        )
    ]


def history_rows(uri: str, history: Iterable[Mapping[str, Any]], *, after: int = -1) -> list[dict[str, Any]]:
    """The rows of every history entry of ``uri`` newer than version ``after``, oldest first."""
    entries = sorted((e for e in history if int(e.get("version", -1)) > after), key=lambda e: int(e["version"]))
    return [row for entry in entries for row in commit_rows(uri, entry)]


def purge_rows(
    catalog_rows: Iterable[Mapping[str, Any]],
    table_uri: Mapping[str, str],
    purged_at: Mapping[str, datetime] | None = None,
) -> list[dict[str, Any]]:
    """One row per copy of each archived file purged from the object store (every copy ``PURGED``): the lake's
    file went, its tape copies stay. ``purged_at``: catalog table name -> time of its latest purge (audit log)."""
    copies: dict[str, list[Mapping[str, Any]]] = {}
    for item in catalog_rows:
        copies.setdefault(str(item["file_id"]), []).append(item)
    rows = []
    for group in copies.values():
        if not all(item.get("state") == PURGED for item in group):
            continue
        first = group[0]
        uri = table_uri.get(str(first["table"]), str(first["table"]))
        at = (purged_at or {}).get(str(first["table"])) or datetime.now(UTC)
        rid = run_id("purge", uri, first["path"])
        tapes = sorted(f"tape://{item['site']}/{item['cartridge']}" for item in group)
        job = f"purge.{first['table']}"
        event = run_event(
            job=job,
            run=rid,
            at=at,
            inputs=[(f"{uri}/{first['path']}", int(first["version_max"]))],
            outputs=[(tape, None) for tape in tapes],
        )
        rows += [
            _row(
                kind="purge",
                job=job,
                run_id=rid,
                event_time=at,
                table_uri=uri,
                version=int(item["version_max"]),
                operation="PURGE",
                output=f"tape://{item['site']}/{item['cartridge']}",
                file_path=str(item["path"]),
                cartridge=str(item["cartridge"]),
                site=str(item["site"]),
                copy=int(item["copy"]),
                event=json.dumps(event),
            )
            for item in sorted(group, key=lambda item: int(item["copy"]))
        ]
    return rows


def archive_rows(catalog_rows: Iterable[Mapping[str, Any]], table_uri: Mapping[str, str]) -> list[dict[str, Any]]:
    """One row per archived file copy (a catalog row): the table version it left, its cartridge, site and extent.

    ``table_uri``: the catalog's table name -> the table's URI.
    """
    rows = []
    for item in catalog_rows:
        uri = table_uri.get(str(item["table"]), str(item["table"]))
        at = item.get("archived_at") or datetime.now(UTC)
        rid = run_id("archive", uri, item.get("aggregate"), item.get("site"))
        tape = f"tape://{item['site']}/{item['cartridge']}"
        extent = {
            key: item.get(key)
            for key in ("aggregate", "member_offset", "extent_partition", "start_block", "byte_offset", "byte_count")
        }
        event = run_event(
            job=f"archive.{item['table']}",
            run=rid,
            at=at,
            inputs=[(uri, int(item["version_max"]))],
            outputs=[(tape, None)],
        )
        rows.append(
            _row(
                kind="archive",
                job=f"archive.{item['table']}",
                run_id=rid,
                event_time=at,
                table_uri=uri,
                version=int(item["version_max"]),
                operation="ARCHIVE",
                read_version=int(item["version_min"]),
                output=tape,
                file_path=str(item["path"]),
                cartridge=str(item["cartridge"]),
                site=str(item["site"]),
                copy=int(item["copy"]),
                extent=json.dumps(extent, sort_keys=True),
                event=json.dumps(event),
            )
        )
    return rows


VACUUM_JOB = "maintenance.vacuum"


def vacuum_event(*, uri: str, version: int, deleted: Iterable[str], at: datetime) -> dict[str, Any]:
    """The event of one executed VACUUM of ``uri``: input the table at the version whose files it kept, outputs
    the files it deleted (``<uri>/<path>``, as a purge names a file). A VACUUM that deleted nothing has none."""
    return run_event(
        job=VACUUM_JOB,
        run=run_id("vacuum", uri, version, at.isoformat()),
        at=at,
        inputs=[(uri, version)],
        outputs=[(f"{uri}/{path}", None) for path in sorted(deleted)],
    )


def vacuum_rows(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per file a VACUUM deleted (one row without a file where it deleted none), from its event."""
    rows = []
    for event in events:
        (table,) = event["inputs"]
        uri = str(table["name"])
        version = int(table["facets"]["version"]["datasetVersion"])
        common = {
            "kind": "vacuum",
            "job": str(event["job"]["name"]),
            "run_id": str(event["run"]["runId"]),
            "event_time": datetime.fromisoformat(str(event["eventTime"])),
            "table_uri": uri,
            "version": version,
            "operation": "VACUUM",
            "read_version": version,
            "event": json.dumps(event),
        }
        files = [str(o["name"]).removeprefix(uri + "/") for o in event.get("outputs") or []]
        rows += [_row(**common, file_path=path) for path in files] or [_row(**common)]
    return rows


def checkpoint_rows(events: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """One row per table a checkpoint read, from the checkpointer's OpenLineage events (one per tier's copy)."""
    for event in events:
        at = datetime.fromisoformat(str(event["eventTime"]))
        where = str(event["outputs"][0]["name"]) if event.get("outputs") else ""
        for dataset in event.get("inputs", []):
            version = dataset.get("facets", {}).get("version", {}).get("datasetVersion")
            yield _row(
                kind="checkpoint",
                job=str(event["job"]["name"]),
                run_id=str(event["run"]["runId"]),
                event_time=at,
                table_uri=str(dataset["name"]),
                version=int(version) if version is not None else None,
                operation="CHECKPOINT",
                output=where,
                event=json.dumps(event),
            )


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=LINEAGE_SCHEMA)
