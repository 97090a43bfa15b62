"""Which partitions of a table are cold: by the age of their date value, or by their last read through the edge cache.

The table's snapshot comes from delta-rs (no JVM). The Delta version that added each file is read from the JSON
commits of ``_delta_log`` (a checkpointed log falls back to the snapshot version for files added before it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa

from tierlake import catalog
from tierlake.config import ArchiveTable, S3Settings
from tierlake.errors import ConfigError, NotFound, StorageError
from tiers.cache.index import last_access
from tiers.s3 import delta_storage_options
from tiers.store import S3Store


@dataclass(frozen=True, kw_only=True)
class DataFile:
    bucket: str
    key: str
    path: str
    size: int
    partition: str
    partition_values: dict[str, str]
    version_added: int


@dataclass(kw_only=True)
class Snapshot:
    uri: str
    version: int
    files: list[DataFile] = field(default_factory=list)

    def partitions(self) -> dict[str, list[DataFile]]:
        grouped: dict[str, list[DataFile]] = {}
        for item in self.files:
            grouped.setdefault(item.partition, []).append(item)
        return dict(sorted(grouped.items()))


def table_uri(table: str, lake_bucket: str) -> str:
    return catalog.TablePath(lake_bucket, table.strip("/")).s3


def policy_for(tables: dict[str, ArchiveTable] | object, table: str) -> ArchiveTable:
    found = getattr(tables, "get", lambda _k: None)(table.strip("/"))
    if not isinstance(found, ArchiveTable):
        raise ConfigError(
            f"table {table!r} has no cold-tier policy. Fix: add it under archive.tables in conf/ "
            "(partition_column, key_column, cold_by, cold_after_days, retention_days)"
        )
    return found


def snapshot(s3: S3Settings, table: str) -> Snapshot:
    from deltalake import DeltaTable  # noqa: PLC0415

    uri = table_uri(table, s3.lake_bucket)
    try:
        delta = DeltaTable(uri, storage_options=delta_storage_options(s3))
    except Exception as exc:  # delta-rs: TableNotFoundError and I/O errors of its own types
        raise NotFound(f"no Delta table at {uri} (endpoint {s3.endpoint}): {exc}. Fix: check --table") from exc
    version = int(delta.version())
    added = _added_versions(s3, uri, version)
    bucket, prefix = urlsplit(uri).netloc, urlsplit(uri).path.strip("/")
    actions = pa.table(delta.get_add_actions(flatten=True)).to_pylist()
    result = Snapshot(uri=uri, version=version)
    for action in actions:
        values = {k.split(".", 1)[1]: str(v) for k, v in action.items() if k.startswith("partition.")}
        path = str(action["path"])
        result.files.append(
            DataFile(
                bucket=bucket,
                key=f"{prefix}/{path}",
                path=path,
                size=int(action["size_bytes"]),
                partition="/".join(f"{k}={v}" for k, v in sorted(values.items())),
                partition_values=values,
                version_added=added.get(path, version),
            )
        )
    return result


def _added_versions(s3: S3Settings, uri: str, version: int) -> dict[str, int]:
    parts = urlsplit(uri)
    store = S3Store(s3)
    log = parts.path.strip("/") + "/_delta_log/"
    added: dict[str, int] = {}
    try:
        commits = [
            o for o in store.ls(parts.netloc, log) if o.key.endswith(".json") and o.key[len(log) :][:20].isdigit()
        ]
    except StorageError:
        return added
    for commit in sorted(commits, key=lambda o: o.key):
        number = int(commit.key[len(log) :][:20])
        if number > version:
            break
        for line in store.cat_file(parts.netloc, commit.key).splitlines():
            action = json.loads(line)
            if "add" in action:
                added.setdefault(action["add"]["path"], number)
    return added


def is_cold(
    policy: ArchiveTable, files: list[DataFile], *, now: datetime, cache_index: Path | None = None
) -> tuple[bool, str]:
    """(cold?, why) for one partition."""
    limit = now - timedelta(days=policy.cold_after_days)
    if policy.cold_by == "age":
        raw = files[0].partition_values.get(policy.partition_column)
        if raw is None:
            raise ConfigError(
                f"partition column {policy.partition_column!r} is not a partition of the table "
                f"(partitions look like {files[0].partition!r}). Fix: archive.tables.{policy.table}.partition_column"
            )
        try:
            day = date.fromisoformat(raw[:10])
        except ValueError as exc:
            raise ConfigError(f"partition value {raw!r} is not a date (cold_by: age needs YYYY-MM-DD)") from exc
        return day < limit.date(), f"{policy.partition_column}={raw} older than {policy.cold_after_days} days"
    seen = last_access(cache_index, files[0].bucket, [f.key for f in files]) if cache_index else None
    if seen is None:
        return True, "never read through the edge cache"
    when = datetime.fromtimestamp(seen, UTC)
    return when < limit, f"last read {when.isoformat(timespec='seconds')}"
