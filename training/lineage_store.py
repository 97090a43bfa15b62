"""The lineage Delta table: lineage records of the lake (``training.lineage_records``) kept where the lake is.

Nothing on the ingest path writes it. :func:`sync` runs beside the pipeline (``tierlake lineage sync``, from a DAG
or by hand): it reads what is already recorded (each table's Delta history past the newest version it holds, the
archive catalog's rows it does not hold yet and the files purged from the object store since, the checkpointer's
OpenLineage events, the VACUUM records it does not hold), validates every new event against the OpenLineage
schema, appends the new rows in one commit, and writes the new events as JSON lines (the OpenLineage file
transport's format) to ``<lineage_dir>/lake.jsonl``.
One sync at a time: like every table here, the lineage table has one writer (run it from one scheduler).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tierlake.errors import StorageError
from training.lineage_http import LineageHttp
from training.lineage_records import (
    HISTORY_KINDS,
    LINEAGE_SCHEMA,
    archive_rows,
    checkpoint_rows,
    history_rows,
    purge_rows,
    to_table,
    vacuum_rows,
    validate_event,
)

logger = logging.getLogger(__name__)
LINEAGE_PATH = "_lineage/events"


def default_uri(lake_bucket: str) -> str:
    """Where the lineage table lives unless told: ``s3://<lake bucket>/_lineage/events``."""
    return f"s3://{lake_bucket}/{LINEAGE_PATH}"


def catalog_name(uri: str, lake_bucket: str) -> str:
    """The archive catalog's name of a table: its path in the lake bucket (the URI itself elsewhere)."""
    prefix = f"s3://{lake_bucket}/"
    plain = uri.replace("s3a://", "s3://", 1)
    return plain[len(prefix) :].strip("/") if plain.startswith(prefix) else uri


def table_uri(name: str, lake_bucket: str) -> str:
    """The URI of an archive catalog's table name (the inverse of :func:`catalog_name`)."""
    return name if "://" in name or name.startswith("/") else f"s3://{lake_bucket}/{name.strip('/')}"


@dataclass(frozen=True, kw_only=True)
class LineageSources:
    """What a sync derives lineage from."""

    tables: Sequence[str]
    lake_bucket: str
    catalog_uri: str | None = None
    audit_uri: str | None = None  # the archive audit log: the time of each table's purges
    checkpoint_events: Path | None = None
    events_out: Path | None = None
    http: LineageHttp | None = None  # also post the new events there (``checkpoint.lineage_url``)
    # the VACUUM records' events, given the run ids the lineage table holds (``training.lineage_vacuum``)
    vacuum_events: Callable[[Collection[str]], Sequence[Mapping[str, Any]]] | None = None


@dataclass(kw_only=True)
class SyncReport:
    uri: str
    rows: dict[str, int] = field(default_factory=dict)
    events: int = 0
    missing_tables: list[str] = field(default_factory=list)
    posted: int = 0  # events posted to the HTTP endpoint


def _is_delta(uri: str, options: Mapping[str, str]) -> bool:
    from deltalake import DeltaTable  # noqa: PLC0415

    return bool(DeltaTable.is_deltatable(uri, storage_options=dict(options)))


def _options_for(uri: str, options: Mapping[str, str]) -> dict[str, str]:
    return dict(options) if "://" in uri else {}


class LineageStore:
    """The lineage table at ``uri`` (read and appended with delta-rs; no JVM)."""

    def __init__(self, uri: str, storage_options: Mapping[str, str] | None = None) -> None:
        self.uri = uri
        self.options = dict(storage_options or {})

    def exists(self) -> bool:
        return _is_delta(self.uri, _options_for(self.uri, self.options))

    def read(
        self, *, columns: list[str] | None = None, table_uri: str | None = None, batch_id: int | None = None
    ) -> pa.Table:
        """Rows of the lineage table (only one table's, one batch's when given); empty when there is none yet."""
        from deltalake import DeltaTable  # noqa: PLC0415
        from deltalake.exceptions import DeltaError, TableNotFoundError  # noqa: PLC0415

        wanted = columns or LINEAGE_SCHEMA.names
        if not self.exists():
            return LINEAGE_SCHEMA.empty_table().select(wanted)
        wanted_rows = [("table_uri", "=", table_uri), ("batch_id", "=", batch_id)]
        filters = [(name, op, value) for name, op, value in wanted_rows if value is not None] or None
        try:
            delta = DeltaTable(self.uri, storage_options=_options_for(self.uri, self.options))
            rows: pa.Table = delta.to_pyarrow_table(columns=wanted, filters=filters)
        except (DeltaError, TableNotFoundError, OSError) as exc:
            raise StorageError(f"reading the lineage table {self.uri} failed: {exc}. Fix: check its URI") from exc
        return rows

    def append(self, rows: pa.Table) -> None:
        from deltalake import write_deltalake  # noqa: PLC0415
        from deltalake.exceptions import DeltaError  # noqa: PLC0415

        if rows.num_rows == 0:
            return
        try:
            write_deltalake(self.uri, rows, mode="append", storage_options=_options_for(self.uri, self.options))
        except (DeltaError, OSError) as exc:
            raise StorageError(f"appending to the lineage table {self.uri} failed: {exc}. Fix: check its URI") from exc


def _history_since(uri: str, options: Mapping[str, str], after: int) -> list[dict[str, Any]]:
    from deltalake import DeltaTable  # noqa: PLC0415
    from deltalake.exceptions import DeltaError, TableNotFoundError  # noqa: PLC0415

    try:
        delta = DeltaTable(uri, storage_options=dict(options))
        newer = int(delta.version()) - after
        history: list[dict[str, Any]] = delta.history(limit=newer) if newer > 0 else []
    except (DeltaError, TableNotFoundError, OSError) as exc:
        raise StorageError(f"reading the history of {uri} failed: {exc}. Fix: check the table URI") from exc
    return history


def _newest(held: pa.Table) -> dict[str, int]:
    """Per table URI, the newest version whose history the lineage table holds."""
    mask = pc.is_in(held["kind"], value_set=pa.array(HISTORY_KINDS))
    grouped = held.filter(mask).group_by("table_uri").aggregate([("version", "max")])
    return dict(zip(grouped["table_uri"].to_pylist(), grouped["version_max"].to_pylist(), strict=True))


def catalog_rows(catalog_uri: str, options: Mapping[str, str]) -> list[dict[str, Any]]:
    from deltalake import DeltaTable  # noqa: PLC0415

    if not _is_delta(catalog_uri, _options_for(catalog_uri, options)):
        return []
    rows: list[dict[str, Any]] = (
        DeltaTable(catalog_uri, storage_options=_options_for(catalog_uri, options)).to_pyarrow_table().to_pylist()
    )
    return rows


def purge_times(audit_uri: str, options: Mapping[str, str]) -> dict[str, Any]:
    """Catalog table name -> the time of its latest ``purge`` in the archive audit log (none: no such table)."""
    from deltalake import DeltaTable  # noqa: PLC0415

    if not _is_delta(audit_uri, _options_for(audit_uri, options)):
        return {}
    audit = DeltaTable(audit_uri, storage_options=_options_for(audit_uri, options)).to_pyarrow_table(
        columns=["at", "action", "table"]
    )
    purges = audit.filter(pc.equal(audit["action"], "purge")).group_by("table").aggregate([("at", "max")])
    return dict(zip(purges["table"].to_pylist(), purges["at_max"].to_pylist(), strict=True))


def read_events(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def derive(store: LineageStore, sources: LineageSources) -> tuple[pa.Table, list[str]]:
    """The rows the lineage table does not hold yet, and the table URIs that are not Delta tables (yet)."""
    held = store.read(columns=["kind", "table_uri", "version", "file_path", "copy", "run_id", "output"])
    newest = _newest(held)
    rows: list[dict[str, Any]] = []
    missing = []
    for uri in sources.tables:
        if not _is_delta(uri, _options_for(uri, store.options)):
            missing.append(uri)
            continue
        after = int(newest.get(uri, -1))
        rows += history_rows(uri, _history_since(uri, _options_for(uri, store.options), after), after=after)
    if sources.catalog_uri:
        held_files = held.select(["kind", "table_uri", "file_path", "copy"]).to_pylist()
        archived = {(r["table_uri"], r["file_path"], r["copy"]) for r in held_files if r["kind"] == "archive"}
        purged = {(r["table_uri"], r["file_path"], r["copy"]) for r in held_files if r["kind"] == "purge"}
        catalog = catalog_rows(sources.catalog_uri, store.options)
        names = {str(r["table"]): table_uri(str(r["table"]), sources.lake_bucket) for r in catalog}
        rows += [r for r in archive_rows(catalog, names) if (r["table_uri"], r["file_path"], r["copy"]) not in archived]
        when = purge_times(sources.audit_uri, store.options) if sources.audit_uri else {}
        rows += [
            r for r in purge_rows(catalog, names, when) if (r["table_uri"], r["file_path"], r["copy"]) not in purged
        ]
    if sources.vacuum_events is not None:
        vacuumed = set(held.filter(pc.equal(held["kind"], "vacuum"))["run_id"].to_pylist())
        rows += [r for r in vacuum_rows(sources.vacuum_events(vacuumed)) if r["run_id"] not in vacuumed]
    seen = set(zip(held["run_id"].to_pylist(), held["output"].to_pylist(), strict=True))
    rows += [
        r for r in checkpoint_rows(read_events(sources.checkpoint_events)) if (r["run_id"], r["output"]) not in seen
    ]
    return to_table(rows), missing


def sync(store: LineageStore, sources: LineageSources) -> SyncReport:
    """Append to the lineage table what the lake recorded since the last sync; events validated first."""
    new, missing = derive(store, sources)
    events = list(dict.fromkeys(e for e in new["event"].to_pylist() if e))  # one event per batch, not per partition
    for event in events:
        validate_event(json.loads(event))
    store.append(new)
    if sources.events_out is not None and events:
        sources.events_out.parent.mkdir(parents=True, exist_ok=True)
        with sources.events_out.open("a", encoding="utf-8") as out:
            out.write("".join(event + "\n" for event in events))
    counts = new.group_by("kind").aggregate([("kind", "count")]).to_pylist()
    report = SyncReport(uri=store.uri, rows={str(c["kind"]): int(c["kind_count"]) for c in counts}, events=len(events))
    report.missing_tables = missing
    logger.info("lineage sync into %s: %s rows, %d events", store.uri, report.rows, report.events)
    if sources.http is not None:  # after the table and the file hold them: a failed post loses nothing
        kept_in = f"the lineage table {store.uri}" + (f" and {sources.events_out}" if sources.events_out else "")
        report.posted = sources.http.send(events, kept_in=kept_in)
    return report
