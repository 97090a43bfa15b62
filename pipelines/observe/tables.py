"""One table's row of the operator's view: its stats, its last checkpoint (version and time), its last OPTIMIZE and
its last VACUUM.

- the last checkpoint: ``_delta_log/_last_checkpoint`` names its version; the time is that object's own write time
  (it is rewritten with each checkpoint), so no checkpoint file name has to be guessed (multi-part, v2);
- the last OPTIMIZE: the ``commitInfo.operation`` of the commit files, read newest first in parallel batches, at
  most :data:`OPERATION_SCAN` commits per table (a 2 s ingest trigger writes 1,800 an hour, so a nightly OPTIMIZE
  sits thousands of commits back); what was read is kept per process, so ``metrics serve`` reads each commit once.
  Beyond the bound the page says "none in the last N commits", not "never";
- the last VACUUM: Spark's VACUUM leaves no commit on this stack's S3, so the record is the lineage log that
  ``tierlake table vacuum --execute`` writes under ``_lineage/vacuum/<table>/`` (``training.lineage_vacuum``).
  ``pipelines`` may not import ``training``, so the CLI reads it and passes the times in; a VACUUM commit found in
  the scanned log (another engine's) counts too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pipelines.lake.maintenance import table_stats
from pipelines.observe.ingestion import client_for
from tierlake.config import Settings
from tierlake.errors import NotFound

logger = logging.getLogger(__name__)
OPERATION_SCAN = 10_000
"""Commits read back per table, newest first, to find the last OPTIMIZE (about 5.5 h of a 2 s trigger)."""
SCAN_BATCH = 512
SCAN_THREADS = 16
_SEEN: dict[str, dict[int, tuple[str, float]]] = {}  # table -> version -> (operation, commit time), this process


@dataclass(kw_only=True)
class TableRow:
    table: str
    exists: bool
    version: int = -1
    files: int = 0
    small_files: int = 0
    bytes: int = 0
    rows: int = 0
    last_commit_s: float = 0.0
    last_checkpoint: int | None = None
    last_checkpoint_s: float | None = None
    last_optimize_s: float | None = None
    last_vacuum_s: float | None = None
    scanned_commits: int = 0  # commits whose operation was read looking for OPTIMIZE
    scanned_all: bool = True  # they reach the oldest commit the log keeps (no OPTIMIZE there means none in the log)
    partitions: int = 0  # day partitions (0: not partitioned)
    max_files_per_partition: int = 0  # the small-file signal of a day-partitioned table (OPTIMIZE brings it to 1)


@dataclass(frozen=True, kw_only=True)
class OperationScan:
    optimize_s: float | None
    vacuum_s: float | None
    scanned: int
    complete: bool  # every commit listed was read


def commit_operation(body: bytes) -> tuple[str, float]:
    """``(operation, commit time in s)`` of one commit file's ``commitInfo`` (``("", 0.0)`` when it has none)."""
    for line in body.decode("utf-8").splitlines():
        if '"commitInfo"' in line:
            info = json.loads(line).get("commitInfo") or {}
            return str(info.get("operation", "")), float(info.get("timestamp", 0)) / 1000
    return "", 0.0


def scan_operations(
    versions: Sequence[int],
    read_commit: Callable[[int], bytes],
    *,
    limit: int = OPERATION_SCAN,
    seen: dict[int, tuple[str, float]] | None = None,
) -> OperationScan:
    """The newest OPTIMIZE and VACUUM among the commits ``versions``, read newest first in batches of
    :data:`SCAN_BATCH` until a batch holds an OPTIMIZE or ``limit`` commits are read. ``seen``: operations already
    read (filled in; versions older than the scan's reach are dropped from it)."""
    seen = {} if seen is None else seen
    newest_first = sorted(versions, reverse=True)[:limit]
    optimize = vacuum = None
    read = 0
    for start in range(0, len(newest_first), SCAN_BATCH):
        batch = newest_first[start : start + SCAN_BATCH]
        missing = [version for version in batch if version not in seen]
        with ThreadPoolExecutor(SCAN_THREADS) as pool:
            for version, body in zip(missing, pool.map(read_commit, missing), strict=True):
                seen[version] = commit_operation(body)
        read += len(batch)
        operations = [seen[version] for version in batch]
        optimize = max((at for op, at in operations if op == "OPTIMIZE"), default=None)
        vacuum = vacuum or max((at for op, at in operations if op.startswith("VACUUM")), default=None)
        if optimize is not None:
            break
    if newest_first:
        for version in [v for v in seen if v < newest_first[-1]]:
            del seen[version]
    return OperationScan(optimize_s=optimize, vacuum_s=vacuum, scanned=read, complete=read == len(versions))


def log_versions(keys: Sequence[str]) -> list[int]:
    """The versions of the JSON commit files among ``_delta_log/`` keys (checkpoints and temp files left out)."""
    stems = (key.rsplit("/", 1)[-1] for key in keys)
    return sorted(int(stem[:-5]) for stem in stems if stem.endswith(".json") and stem[:-5].isdigit())


def _s3_operations(settings: Settings, table: str) -> OperationScan:
    client, bucket = client_for(settings), settings.s3.lake_bucket
    keys = [
        str(item.get("Key", ""))
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{table}/_delta_log/")
        for item in page.get("Contents", [])
    ]

    def read(version: int) -> bytes:
        return bytes(client.get_object(Bucket=bucket, Key=f"{table}/_delta_log/{version:020d}.json")["Body"].read())

    return scan_operations(log_versions(keys), read, seen=_SEEN.setdefault(table, {}))


def last_checkpoint(settings: Settings, table: str) -> tuple[int, float] | None:
    """The version of the table's last checkpoint and when it was written (``_delta_log/_last_checkpoint``, which
    each checkpoint rewrites), None if it has none."""
    from botocore.exceptions import ClientError  # noqa: PLC0415

    try:
        found = client_for(settings).get_object(
            Bucket=settings.s3.lake_bucket, Key=f"{table}/_delta_log/_last_checkpoint"
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return int(json.loads(found["Body"].read())["version"]), found["LastModified"].timestamp()


def table_row(settings: Settings, table: str, *, vacuumed_s: float | None = None) -> TableRow:
    """Stats of one table, its last checkpoint, OPTIMIZE (:func:`scan_operations`) and VACUUM (``vacuumed_s``: the
    newest lineage record's time, from the CLI; or a VACUUM commit in the scanned log, whichever is newer)."""
    try:
        stats = table_stats(settings, table)
    except NotFound:
        return TableRow(table=table, exists=False)
    scan = _s3_operations(settings, table)
    checkpoint = last_checkpoint(settings, table)
    vacuums = [at for at in (vacuumed_s, scan.vacuum_s) if at is not None]
    return TableRow(
        table=table,
        exists=True,
        version=stats.version,
        files=stats.files,
        small_files=stats.small_files,
        bytes=stats.bytes,
        rows=stats.rows,
        last_commit_s=stats.last_commit_s,
        last_checkpoint=None if checkpoint is None else checkpoint[0],
        last_checkpoint_s=None if checkpoint is None else checkpoint[1],
        last_optimize_s=scan.optimize_s,
        last_vacuum_s=max(vacuums, default=None),
        scanned_commits=scan.scanned,
        scanned_all=scan.complete,
        partitions=stats.partitions,
        max_files_per_partition=stats.max_files_per_partition,
    )
