"""A Delta table pinned at one version, read with delta-rs (no JVM), and the seam through which its files are read.

:func:`pin_snapshot` resolves ``version=`` or ``timestamp=`` once and lists the data files of that version, filtered
by partition. Files are then opened through a :class:`FileSource`: :class:`ArrowFileSource` reads straight from a
local path or the object store (pyarrow's S3 client, configured from the same options as delta-rs); the edge cache
plugs in by offering the same ``open`` verb (a URI in, a readable file or a local path out).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from tierlake.errors import NotFound, SchemaMismatch, StorageError, TierlakeError

logger = logging.getLogger(__name__)

PartitionFilter = tuple[str, str, Any]  # (column, op, value): op in =, !=, in, not in
_FILTER_OPS: dict[str, Any] = {
    "=": pc.equal,
    "!=": pc.not_equal,
    "in": lambda col, value: pc.is_in(col, value_set=pa.array(value)),
    "not in": lambda col, value: pc.invert(pc.is_in(col, value_set=pa.array(value))),
}
_UNSUPPORTED_READER_FEATURES = {
    "deletionVectors": "read it through delta-rs after `REORG TABLE ... APPLY (PURGE)`, or disable deletion vectors",
    "columnMapping": "rewrite the table without column mapping (physical names differ from logical ones)",
}


@dataclass(frozen=True, kw_only=True)
class DataFile:
    """One Parquet file of the pinned version; ``partition`` holds its partition values as strings."""

    uri: str
    size: int
    rows: int
    partition: Mapping[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """The files of one table version, in log order (the order the plan and the shuffle start from).

    ``table_uri`` is the spelling the caller gave (for messages); ``location`` is delta-rs's normalised URI and
    ``table_id`` the Delta table id from the metadata: a table deleted and rewritten at one path gets a new id.
    """

    table_uri: str
    version: int
    schema: pa.Schema
    partition_columns: tuple[str, ...]
    files: tuple[DataFile, ...]
    table_id: str = ""
    location: str = ""


@runtime_checkable
class FileSource(Protocol):
    """Maps a data file's URI to something ``pyarrow.parquet`` can read: a local path or a random-access file."""

    def open(self, uri: str) -> Any: ...


class ArrowFileSource:
    """Reads files straight from a local path or S3 (RGW) through ``pyarrow.fs``; owns the S3 client.

    Pickling drops the client (it is rebuilt on first use in the new process) but keeps the options.
    """

    def __init__(self, storage_options: Mapping[str, str] | None = None) -> None:
        self._options = dict(storage_options or {})
        self._s3: pafs.S3FileSystem | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"options": self._options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["options"])  # type: ignore[misc]

    def open(self, uri: str) -> Any:
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            return unquote(parsed.path) if parsed.scheme else uri
        if parsed.scheme not in ("s3", "s3a"):
            raise StorageError(f"file {uri!r}: scheme {parsed.scheme!r} is not supported. Fix: use s3:// or a path")
        try:
            return self._s3_fs().open_input_file(f"{parsed.netloc}{unquote(parsed.path)}")
        except FileNotFoundError as exc:
            raise NotFound(f"data file {uri} is missing from the object store") from exc
        except OSError as exc:
            raise StorageError(f"opening {uri} failed: {exc}") from exc

    def _s3_fs(self) -> pafs.S3FileSystem:
        with self._lock:
            if self._s3 is None:
                self._s3 = s3_filesystem(self._options)
            return self._s3


class EdgeCacheSource:
    """Reads S3 data files through the node's edge cache (``tiers.cache``): each file is fetched once per node and
    then read from local disk; local paths pass through. ``make_cache`` (e.g.
    ``functools.partial(tiers.cache.cache_from_settings, settings.cache.options, settings.s3)``) builds the cache
    lazily in each process; pickling drops the cache and keeps the factory.
    """

    def __init__(self, make_cache: Callable[[], Any]) -> None:
        self._make_cache = make_cache
        self._cache: Any = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"make_cache": self._make_cache}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["make_cache"])  # type: ignore[misc]

    def open(self, uri: str) -> Any:
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            return unquote(parsed.path) if parsed.scheme else uri
        with self._lock:
            if self._cache is None:
                self._cache = self._make_cache()
            cache = self._cache
        try:
            return str(cache.get_path(parsed.netloc, unquote(parsed.path).lstrip("/")))
        except FileNotFoundError as exc:
            raise NotFound(f"data file {uri} is missing from the object store") from exc


def s3_filesystem(options: Mapping[str, str]) -> pafs.S3FileSystem:
    """pyarrow's S3 client from delta-rs storage options (``tiers.s3.delta_storage_options``)."""
    endpoint = options.get("AWS_ENDPOINT_URL", "")
    parsed = urlparse(endpoint) if endpoint else None
    return pafs.S3FileSystem(
        access_key=options.get("AWS_ACCESS_KEY_ID"),
        secret_key=options.get("AWS_SECRET_ACCESS_KEY"),
        region=options.get("AWS_REGION", "us-east-1"),
        endpoint_override=parsed.netloc if parsed else None,
        scheme=parsed.scheme if parsed else "https",
        force_virtual_addressing=False,
        connect_timeout=5,
        request_timeout=60,
    )


def pin_snapshot(
    table_uri: str | Path,
    *,
    version: int | None = None,
    timestamp: datetime | str | None = None,
    storage_options: Mapping[str, str] | None = None,
    partition_filters: Sequence[PartitionFilter] = (),
) -> Snapshot:
    """Resolve the table at ``version`` or ``timestamp`` (the latest when neither) and list its files."""
    from deltalake import DeltaTable  # noqa: PLC0415 - delta-rs loads a Rust extension; import where used

    if version is not None and timestamp is not None:
        raise TierlakeError(
            f"both version={version} and timestamp={timestamp!r} given. Fix: pin the table with one of them"
        )
    uri = str(table_uri)
    try:
        table = DeltaTable(uri, version=version, storage_options=dict(storage_options or {}))
        if timestamp is not None:
            table.load_as_version(timestamp)
    except Exception as exc:  # delta-rs raises its own TableNotFoundError / OSError / DeltaError subclasses
        raise NotFound(
            f"Delta table {uri} at version={version} timestamp={timestamp!r} cannot be opened: {exc}. "
            "Fix: check the path, the version (see `DeltaTable.history()`) and the storage options"
        ) from exc
    _check_reader_features(uri, table)
    actions = pa.table(table.get_add_actions(flatten=True))
    actions = _filter_partitions(actions, tuple(table.metadata().partition_columns), partition_filters, uri)
    files = tuple(_data_files(table.table_uri, actions, tuple(table.metadata().partition_columns)))
    schema = pa.schema(table.schema())
    logger.info(
        "pinned %s at version %s: %d files", uri, table.version(), len(files), extra={"table_version": table.version()}
    )
    return Snapshot(
        table_uri=uri,
        version=table.version(),
        schema=schema,
        partition_columns=tuple(table.metadata().partition_columns),
        files=files,
        table_id=str(table.metadata().id),
        location=str(table.table_uri),
    )


def _check_reader_features(uri: str, table: Any) -> None:
    features = set(table.protocol().reader_features or ())
    for feature, fix in _UNSUPPORTED_READER_FEATURES.items():
        if feature in features:
            raise SchemaMismatch(
                f"Delta table {uri} uses reader feature {feature!r}, which the loader's direct Parquet reads would "
                f"get wrong. Fix: {fix}"
            )


def _filter_partitions(
    actions: pa.Table, partition_columns: tuple[str, ...], filters: Sequence[PartitionFilter], uri: str
) -> pa.Table:
    for column, op, value in filters:
        if column not in partition_columns:
            raise TierlakeError(
                f"partition filter on {column!r}: not a partition column of {uri} "
                f"(partition columns: {list(partition_columns)}). Fix: filter on one of those"
            )
        if op not in _FILTER_OPS:
            raise TierlakeError(f"partition filter op {op!r} is not supported. Fix: use one of {list(_FILTER_OPS)}")
        values = actions.column(f"partition.{column}")
        typed = [str(v) for v in value] if op in ("in", "not in") else str(value)
        as_text = pc.cast(values, pa.string())
        actions = actions.filter(pc.fill_null(_FILTER_OPS[op](as_text, typed), False))
    return actions


def _data_files(table_uri: str, actions: pa.Table, partition_columns: tuple[str, ...]) -> list[DataFile]:
    base = table_uri.rstrip("/")
    rows = actions.to_pylist()
    files = []
    for row in rows:
        path = str(row["path"])
        uri = path if "://" in path or path.startswith("/") else f"{base}/{path}"
        partition = {
            col: None if row.get(f"partition.{col}") is None else str(row[f"partition.{col}"])
            for col in partition_columns
        }
        files.append(
            DataFile(uri=uri, size=int(row["size_bytes"]), rows=int(row["num_records"] or 0), partition=partition)
        )
    return files
