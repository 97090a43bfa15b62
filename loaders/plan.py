"""Row-group-granular plan of a pinned snapshot, from the Parquet footers; cached per table and version.

A version of a Delta table never changes, so its plan never does: it is kept in memory for the process and, when a
``cache_dir`` is given, as a small JSON file keyed by the table's identity (its Delta table id and location),
version and partition filters, so a table deleted and rewritten at the same path is planned afresh. Footers are read
concurrently (one round trip per file on S3). A file of the pinned version that is missing (vacuumed, or archived
to tape and purged) stops the plan with one error that lists every missing file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from loaders.order import IntArray
from loaders.table import FileSource, PartitionFilter, Snapshot
from tierlake.errors import NotFound, StorageError

logger = logging.getLogger(__name__)
_PLAN_FORMAT = 2
_MEMO: dict[str, Plan] = {}
_MEMO_LOCK = threading.Lock()


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Every row group of the snapshot: ``file_of[i]`` (index into ``snapshot.files``), ``index_in_file[i]``,
    ``rows[i]``. ``fingerprint`` identifies table, version, filters and layout (resume states carry it; see
    :func:`plan_fingerprint`)."""

    snapshot: Snapshot
    file_of: IntArray
    index_in_file: IntArray
    rows: IntArray
    fingerprint: str

    @property
    def total_rows(self) -> int:
        return int(self.rows.sum())

    def __len__(self) -> int:
        return len(self.rows)


def filters_key(filters: Sequence[PartitionFilter]) -> str:
    return hashlib.sha256(json.dumps([list(f) for f in filters], default=str).encode()).hexdigest()[:12]


def plan_key(snapshot: Snapshot, filters: Sequence[PartitionFilter]) -> str:
    """Where the plan is cached: the table's identity (Delta table id), location, version and filters."""
    where = snapshot.location or snapshot.table_uri
    text = json.dumps([snapshot.table_id, where, snapshot.version, filters_key(filters)])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def plan_fingerprint(snapshot: Snapshot, filters: Sequence[PartitionFilter], rows: Sequence[int]) -> str:
    """What a resume state is checked against, as ``name=value`` parts joined by ``:``: the table id, version,
    filters and row-group layout. It leaves out how the path is spelled (``t``, ``t/`` and ``file://t`` are one
    table), so a state survives a new spelling or a copy of the table, and a refusal can name the part that differs.
    """
    layout = hashlib.sha256(json.dumps(list(rows)).encode()).hexdigest()[:16]
    table = snapshot.table_id or snapshot.location or snapshot.table_uri
    return f"table={table}:version={snapshot.version}:filters={filters_key(filters)}:layout={layout}"


def build_plan(
    snapshot: Snapshot,
    source: FileSource,
    *,
    filters: Sequence[PartitionFilter] = (),
    cache_dir: Path | None = None,
    threads: int = 8,
) -> Plan:
    """The plan of ``snapshot``: from memory, from ``cache_dir``, or from the footers (then stored in both)."""
    key = plan_key(snapshot, filters)
    with _MEMO_LOCK:
        if key in _MEMO:
            return _MEMO[key]
    plan = _load_cached(snapshot, key, cache_dir, filters) if cache_dir else None
    if plan is None:
        plan = _plan_from_footers(snapshot, source, threads, filters)
        if cache_dir:
            _store_cached(plan, key, cache_dir)
    with _MEMO_LOCK:
        _MEMO[key] = plan
    return plan


def _footer_row_groups(source: FileSource, uri: str) -> list[int] | None:
    """Row counts of the row groups of one file, or None when the file is missing."""
    try:
        meta = pq.ParquetFile(source.open(uri)).metadata
    except (NotFound, FileNotFoundError):
        return None
    except OSError as exc:
        raise StorageError(f"reading the Parquet footer of {uri} failed: {exc}") from exc
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def _plan_from_footers(
    snapshot: Snapshot, source: FileSource, threads: int, filters: Sequence[PartitionFilter]
) -> Plan:
    uris = [f.uri for f in snapshot.files]
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(uris) or 1))) as pool:
        footers = list(pool.map(lambda uri: _footer_row_groups(source, uri), uris))
    missing = [uri for uri, rows in zip(uris, footers, strict=True) if rows is None]
    if missing:
        shown = "\n  ".join(missing[:50]) + (f"\n  ... and {len(missing) - 50} more" if len(missing) > 50 else "")
        raise NotFound(
            f"{len(missing)} of {len(uris)} data files of {snapshot.table_uri} at version {snapshot.version} are "
            f"missing (vacuumed, or archived to tape and purged):\n  {shown}\n"
            "Fix: restore these files through the cold tier, or pin a version whose files are all present"
        )
    file_of, index_in_file, rows = [], [], []
    for file_index, counts in enumerate(footers):
        for rg_index, count in enumerate(counts or []):
            if count:
                file_of.append(file_index)
                index_in_file.append(rg_index)
                rows.append(count)
    plan = _make_plan(snapshot, filters, file_of, index_in_file, rows)
    logger.info(
        "planned %s v%s: %d files, %d row groups, %d rows",
        snapshot.table_uri,
        snapshot.version,
        len(uris),
        len(plan),
        plan.total_rows,
        extra={"table_version": snapshot.version},
    )
    return plan


def _make_plan(
    snapshot: Snapshot,
    filters: Sequence[PartitionFilter],
    file_of: Sequence[int],
    index_in_file: Sequence[int],
    rows: Sequence[int],
) -> Plan:
    return Plan(
        snapshot=snapshot,
        file_of=np.asarray(file_of, dtype=np.int64),
        index_in_file=np.asarray(index_in_file, dtype=np.int64),
        rows=np.asarray(rows, dtype=np.int64),
        fingerprint=plan_fingerprint(snapshot, filters, rows),
    )


def _load_cached(snapshot: Snapshot, key: str, cache_dir: Path, filters: Sequence[PartitionFilter]) -> Plan | None:
    path = cache_dir / f"plan-{key}.json"
    try:
        stored: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable plan cache %s: %s", path, exc)
        return None
    if stored.get("format") != _PLAN_FORMAT or stored.get("files") != [f.uri for f in snapshot.files]:
        return None
    return _make_plan(snapshot, filters, stored["file_of"], stored["index_in_file"], stored["rows"])


def _store_cached(plan: Plan, key: str, cache_dir: Path) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    body = {
        "format": _PLAN_FORMAT,
        "table_uri": plan.snapshot.table_uri,
        "version": plan.snapshot.version,
        "files": [f.uri for f in plan.snapshot.files],
        "file_of": plan.file_of.tolist(),
        "index_in_file": plan.index_in_file.tolist(),
        "rows": plan.rows.tolist(),
    }
    handle, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".plan-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(body, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, cache_dir / f"plan-{key}.json")
        dir_fd = os.open(cache_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
