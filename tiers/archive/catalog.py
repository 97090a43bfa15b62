"""The catalog (one row per archived file and copy) and the audit log: Delta tables written with delta-rs.

No JVM: rows are appended with ``write_deltalake``, states and holds change with delta-rs ``update``, and reads
come back as Arrow for DuckDB. The audit log is append-only and hash-chained (each event carries the hash of the
one before it), so a removed or edited event breaks the chain (:meth:`Catalog.audit_chain_ok`).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import socket
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from tierlake.config import S3Settings
from tierlake.errors import StorageError
from tiers.s3 import delta_storage_options

logger = logging.getLogger(__name__)
TS = pa.timestamp("us", tz="UTC")
CATALOG_SCHEMA = pa.schema(
    [
        ("file_id", pa.string()),
        ("table", pa.string()),
        ("path", pa.string()),
        ("bucket", pa.string()),
        ("key", pa.string()),
        ("partition", pa.string()),
        ("partition_values", pa.string()),
        ("version_min", pa.int64()),
        ("version_max", pa.int64()),
        ("size", pa.int64()),
        ("sha256", pa.string()),
        ("row_count", pa.int64()),
        ("key_column", pa.string()),
        ("key_min", pa.string()),
        ("key_max", pa.string()),
        ("copy", pa.int32()),
        ("site", pa.string()),
        ("cartridge", pa.string()),
        ("volume_uuid", pa.string()),
        ("generation", pa.int64()),
        ("aggregate", pa.string()),
        ("member_offset", pa.int64()),
        ("extent_partition", pa.string()),
        ("start_block", pa.int64()),
        ("byte_offset", pa.int64()),
        ("byte_count", pa.int64()),
        ("state", pa.string()),
        ("archived_at", TS),
        ("retention_until", TS),
        ("legal_hold", pa.bool_()),
        ("hold_reason", pa.string()),
    ]
)
AUDIT_SCHEMA = pa.schema(
    [
        ("at", TS),
        ("actor", pa.string()),
        ("action", pa.string()),
        ("table", pa.string()),
        ("target", pa.string()),
        ("detail", pa.string()),
        ("prev_hash", pa.string()),
        ("hash", pa.string()),
    ]
)
MUTABLE = ("state", "legal_hold", "hold_reason")
ROW_GROUP_ROWS = 65536


def actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def quote(value: str) -> str:
    """A SQL string literal for delta-rs predicates."""
    return "'" + value.replace("'", "''") + "'"


class Catalog:
    def __init__(self, catalog_uri: str, audit_uri: str, *, s3: S3Settings | None = None) -> None:
        self.catalog_uri = catalog_uri
        self.audit_uri = audit_uri
        self._options = delta_storage_options(s3) if s3 is not None and "://" in catalog_uri + audit_uri else {}
        self._existing: set[str] = set()  # tables seen to exist: not checked again
        self._audit_tail: tuple[int, str] | None = None  # (audit version, hash) after this object's last event

    def _table(self, uri: str, schema: pa.Schema) -> Any:
        from deltalake import DeltaTable, write_deltalake  # noqa: PLC0415 - native library

        if uri in self._existing:
            return DeltaTable(uri, storage_options=self._options)
        if not DeltaTable.is_deltatable(uri, storage_options=self._options):
            try:
                write_deltalake(uri, schema.empty_table(), mode="append", storage_options=self._options)
            except Exception as exc:  # delta-rs raises its own exception types for I/O
                raise StorageError(f"creating the Delta table {uri} failed: {exc}") from exc
        table = DeltaTable(uri, storage_options=self._options)
        self._existing.add(uri)
        return table

    def exists(self) -> bool:
        """Whether the catalog table exists (nothing was ever archived when not), without creating it."""
        from deltalake import DeltaTable  # noqa: PLC0415 - native library

        return self.catalog_uri in self._existing or bool(
            DeltaTable.is_deltatable(self.catalog_uri, storage_options=self._options)
        )

    def rows(self) -> pa.Table:
        table: pa.Table = self._table(self.catalog_uri, CATALOG_SCHEMA).to_pyarrow_table()
        return table

    def _source(self, uri: str, schema: pa.Schema) -> list[str] | pa.Table:
        """What DuckDB reads: the snapshot's Parquet files when local (DuckDB prunes row groups by their
        statistics and reads only the columns a query needs), else the snapshot as Arrow. DuckDB reads the files
        rather than a pyarrow dataset because delta-rs ``update`` rewrites strings as ``string_view``, which a
        pyarrow dataset cannot compare with the other files' ``string`` in a pushed-down filter."""
        table = self._table(uri, schema)
        files = [f.removeprefix("file://") for f in table.file_uris()]
        if files and all(f.startswith("/") for f in files):
            return files
        arrow: pa.Table = table.to_pyarrow_table() if files else schema.empty_table()
        return arrow

    def dataset(self) -> list[str] | pa.Table:
        return self._source(self.catalog_uri, CATALOG_SCHEMA)

    def audit_dataset(self) -> list[str] | pa.Table:
        return self._source(self.audit_uri, AUDIT_SCHEMA)

    def audit(self) -> pa.Table:
        table: pa.Table = self._table(self.audit_uri, AUDIT_SCHEMA).to_pyarrow_table()
        return table

    def append(self, rows: list[dict[str, Any]]) -> None:

        if not rows:
            return
        self._table(self.catalog_uri, CATALOG_SCHEMA)
        data = pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA).sort_by(
            [("table", "ascending"), ("key_min", "ascending")]
        )
        write_catalog(self.catalog_uri, data, self._options)

    def update(self, predicate: str, updates: dict[str, str]) -> int:
        """Set columns (SQL expressions) on the rows matching a SQL predicate; returns rows updated."""
        table = self._table(self.catalog_uri, CATALOG_SCHEMA)
        metrics = table.update(updates=updates, predicate=predicate)
        return int(metrics.get("num_updated_rows", 0))

    def record(self, action: str, *, table: str = "", target: str = "", **detail: Any) -> None:
        """Append one audit event, chained to the previous one by hash. The previous hash is this object's last
        event's when the log is still at the version that event made (a recall's second event; nobody wrote in
        between), else it is read from the log."""
        from deltalake import write_deltalake  # noqa: PLC0415

        log = self._table(self.audit_uri, AUDIT_SCHEMA)
        version = int(log.version())
        if self._audit_tail is not None and self._audit_tail[0] == version:
            prev = self._audit_tail[1]
        else:
            audit = log.to_pyarrow_table(columns=["at", "hash"])
            prev = ""
            if audit.num_rows:
                last = audit.sort_by([("at", "descending")]).slice(0, 1).to_pylist()[0]
                prev = str(last["hash"])
        at = datetime.now(UTC)
        body = json.dumps(detail, sort_keys=True, default=str)
        who = actor()
        digest = hashlib.sha256(
            "\x1f".join([prev, at.isoformat(), who, action, table, target, body]).encode()
        ).hexdigest()
        event = {"at": at, "actor": who, "action": action, "table": table, "target": target, "detail": body}
        event |= {"prev_hash": prev, "hash": digest}
        self._audit_tail = None
        write_deltalake(
            self.audit_uri,
            pa.Table.from_pylist([event], schema=AUDIT_SCHEMA),
            mode="append",
            storage_options=self._options,
        )
        # If another writer's commit came first, ours is later than version + 1 and the next event reads the log.
        self._audit_tail = (version + 1, digest)

    def audit_chain_ok(self) -> bool:
        events = self.audit().sort_by("at").to_pylist()
        prev = ""
        for event in events:
            text = "\x1f".join(
                [
                    prev,
                    event["at"].isoformat(),
                    event["actor"],
                    event["action"],
                    event["table"],
                    event["target"],
                    event["detail"],
                ]
            )
            if event["prev_hash"] != prev or hashlib.sha256(text.encode()).hexdigest() != event["hash"]:
                return False
            prev = event["hash"]
        return True


def write_catalog(uri: str, data: pa.Table, options: dict[str, str]) -> None:
    """Append rows in row groups of 64k rows, so a key lookup skips most of them by their min/max statistics."""
    from deltalake import WriterProperties, write_deltalake  # noqa: PLC0415

    properties = WriterProperties(max_row_group_size=ROW_GROUP_ROWS)
    write_deltalake(uri, data, mode="append", storage_options=options, writer_properties=properties)


def query(sql: str, *, catalog: list[str] | pa.Table, audit: list[str] | pa.Table) -> pa.Table:
    """DuckDB over the two tables (names ``catalog`` and ``audit``): Arrow tables, or lists of Parquet files."""
    import duckdb  # noqa: PLC0415

    connection = duckdb.connect()
    try:
        connection.execute("SET TimeZone = 'UTC'")
        files = [f for source in (catalog, audit) if isinstance(source, list) for f in source]
        if files:
            connection.execute(f"SET allowed_paths = [{', '.join(quote(f) for f in files)}]")
        for name, source in (("catalog", catalog), ("audit", audit)):
            if isinstance(source, list):
                listed = ", ".join(quote(f) for f in source)
                connection.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{listed}])")  # noqa: S608
            else:
                connection.register(name, source)
        # The SQL a user types reads the catalog and the audit log, nothing else, and writes nowhere.
        connection.execute("SET enable_external_access = false")
        result: pa.Table = connection.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise StorageError(f"query failed: {str(exc).splitlines()[0]}. Fix: tables are `catalog` and `audit`") from exc
    finally:
        connection.close()
    return result
