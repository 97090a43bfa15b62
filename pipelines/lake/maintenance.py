"""Table maintenance: OPTIMIZE (compaction or Z-order clustering per ``conf/``), VACUUM with a 7-day floor,
checkpoints, history, and table stats exported as Prometheus metrics; plus the health check of the ingestion driver
that the ingest_supervisor DAG runs.

Two writers of one Delta table on S3 are safe only when the object store arbitrates each log entry. With
``spark.delta_commits: conditional`` (the default) it does: Spark (``infra/logstore``) and delta-rs
(``conditional_put``) both create log entries with ``If-None-Match: *``, and the loser of a race retries after
Delta's conflict check. So OPTIMIZE (``dataChange: false``), checkpoints and VACUUM run beside a running ingestion,
under a maintenance lease of the table's own (``table-<path>``) that only keeps two maintenance runs of one table
apart. With ``single_driver`` (stores without conditional PUT) a table written by an ingestion entity shares that
entity's lease (``ingest-<entity>``): maintenance refuses, naming the driver, while ingestion runs.

VACUUM runs in Spark (the engine that writes the tables; its retention takes fractions of an hour when
overridden); OPTIMIZE, checkpoints, history and stats go through delta-rs and need no JVM.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pyarrow as pa

from pipelines.lake.lease import TableLease
from tierlake import catalog
from tierlake.config import MIN_VACUUM_RETENTION_HOURS, Settings
from tierlake.errors import CommitConflict, NotFound, RetentionViolation, StorageError
from tiers.s3 import delta_storage_options, s3_client

if TYPE_CHECKING:
    from deltalake import DeltaTable as RustTable
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)
SMALL_FILE_FRACTION = 4  # a file under target_file_mb / 4 counts as small in the stats


# ---------------------------------------------------------------------------------------------------------
# Naming: table paths, URIs and leases


def table_name(settings: Settings, text: str) -> str:
    """``silver/ev``, ``s3://<lake>/silver/ev`` or ``s3a://<lake>/silver/ev`` -> ``silver/ev``."""
    return catalog.parse_table(text, lake_bucket=settings.s3.lake_bucket).path


def spark_uri(settings: Settings, table: str) -> str:
    return catalog.TablePath(settings.s3.lake_bucket, table).s3a


def rust_uri(settings: Settings, table: str) -> str:
    return catalog.TablePath(settings.s3.lake_bucket, table).s3


def lease_name(settings: Settings, table: str) -> str:
    """The lease maintenance of ``table`` takes: ``table-<path>``; with single-driver commits, the ingestion
    entity's (``ingest-<entity>``) for the tables that entity writes."""
    own = "table-" + table.replace("/", "-")
    if settings.spark.delta_commits == "conditional":
        return own
    layer, _, rest = table.partition("/")
    by_topic = {spec.topic.replace(".", "_"): name for name, spec in settings.entities.items()}
    if layer == "bronze" and rest in by_topic:
        return f"ingest-{by_topic[rest]}"
    if layer in ("silver", "quarantine", "dropped") and rest in settings.entities:
        return f"ingest-{rest}"
    if layer == "gold":
        for entity in settings.entities:
            if rest.startswith(f"{entity}_"):
                return f"ingest-{entity}"
    return own


@contextmanager
def table_lease(settings: Settings, table: str, *, operation: str) -> Iterator[TableLease]:
    """Hold the writer lease of ``table`` for ``operation``; refuse with :class:`CommitConflict` naming the holder."""
    client = s3_client(settings.s3)
    lease = TableLease(
        client,
        settings.s3.lake_bucket,
        lease_name(settings, table),
        ttl_s=settings.maintenance.lease_ttl_s,
        owner=f"{operation} of {table} ({lease_owner()})",
    )
    try:
        lease.acquire()
    except CommitConflict as exc:
        raise CommitConflict(f"{operation} of {table} refused: {exc}") from exc
    lease.start_renewing()
    try:
        yield lease
    finally:
        lost = lease.lost.is_set()
        lease.release()
    if lost:
        raise CommitConflict(f"{operation} of {table} lost the writer lease {lease.name!r} midway; check the table")


def lease_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def open_table(settings: Settings, table: str, *, version: int | None = None) -> RustTable:
    """The table through delta-rs, or :class:`NotFound` naming the path."""
    from deltalake import DeltaTable  # noqa: PLC0415
    from deltalake.exceptions import TableNotFoundError  # noqa: PLC0415

    try:
        return DeltaTable(
            rust_uri(settings, table), version=version, storage_options=delta_storage_options(settings.s3)
        )
    except TableNotFoundError as exc:
        raise NotFound(
            f"no Delta table at {rust_uri(settings, table)} (table {table!r}). Fix: check the path; "
            "`tierlake table history` lists only existing tables"
        ) from exc


# ---------------------------------------------------------------------------------------------------------
# Stats


@dataclass(frozen=True, kw_only=True)
class TableStats:
    table: str
    version: int
    files: int
    bytes: int
    rows: int
    small_files: int
    last_commit_s: float
    partitions: int = 0  # 0: not partitioned
    max_files_per_partition: int = 0  # the small-file signal of a day-partitioned table (OPTIMIZE brings it to ~1)
    files_per_partition: dict[str, int] = field(default_factory=dict)  # "event_date=2026-01-01" -> files


def files_by_partition(actions: dict[str, list[Any]]) -> dict[str, int]:
    """Data files per partition (``col=value/...``) from flattened add actions; {} for an unpartitioned table."""
    columns = sorted(c for c in actions if c.startswith("partition."))
    if not columns:
        return {}
    counts: dict[str, int] = {}
    for values in zip(*(actions[c] for c in columns), strict=True):
        name = "/".join(f"{c.removeprefix('partition.')}={v}" for c, v in zip(columns, values, strict=True))
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def busy_partitions(files_per_partition: dict[str, int]) -> list[tuple[str, str, Any]] | None:
    """delta-rs partition filters for the partitions of more than one file (None: unpartitioned, or partitioned by
    more than one column: the whole table). A day compacted to one file is left alone: Z-order would rewrite it
    every night, and a day whose files were archived and purged (tiers/archive) could not be read."""
    names = {p.partition("=")[0] for p in files_per_partition}
    if len(names) != 1 or any("/" in p for p in files_per_partition):
        return None
    busy = [p.partition("=")[2] for p, n in files_per_partition.items() if n > 1]
    return [(names.pop(), "in", busy)] if busy else []


def _optimize_version(dt: RustTable, *, since: int) -> int:
    """The version OPTIMIZE committed (appends may follow it); ``since`` when it had nothing to rewrite."""
    dt.update_incremental()
    for entry in dt.history(dt.version() - since):
        if entry.get("operation") == "OPTIMIZE" and int(entry.get("version", -1)) > since:
            return int(entry["version"])
    return since


def _check_rows_kept(settings: Settings, table: str, committed: int, before: TableStats) -> None:
    """OPTIMIZE's own commit must hold the rows of the version just before it.

    Appends may land beside it (conditional commits), so the latest version's count is no measure; the versions on
    either side of OPTIMIZE's commit are. With nothing to compact there is no commit of its own.
    """
    if committed == before.version:
        return
    own, previous = table_stats(settings, table, committed), table_stats(settings, table, committed - 1)
    if own.rows != previous.rows:
        raise StorageError(
            f"OPTIMIZE of {table} changed the row count from {previous.rows} (version {committed - 1}) to "
            f"{own.rows} (version {committed}). Fix: restore version {committed - 1} "
            f"(`tierlake table history {table}`) and report it"
        )


def table_stats(settings: Settings, table: str, version: int | None = None) -> TableStats:
    dt = open_table(settings, table, version=version)
    actions = pa.table(dt.get_add_actions(flatten=True)).to_pydict()
    sizes = [int(s) for s in actions.get("size_bytes", [])]
    rows = [int(n or 0) for n in actions.get("num_records", [])]
    small = settings.maintenance.target_file_mb * 1024 * 1024 // SMALL_FILE_FRACTION
    history = dt.history(1)
    per_partition = files_by_partition(actions)
    return TableStats(
        table=table,
        version=dt.version(),
        files=len(sizes),
        bytes=sum(sizes),
        rows=sum(rows),
        small_files=sum(1 for s in sizes if s < small),
        last_commit_s=float(history[0].get("timestamp", 0)) / 1000 if history else 0.0,
        partitions=len(per_partition),
        max_files_per_partition=max(per_partition.values(), default=0),
        files_per_partition=per_partition,
    )


TABLE_METRICS = {
    "version": ("version", "the table's latest Delta version"),
    "files": ("files", "data files in the latest snapshot"),
    "bytes": ("bytes", "bytes of data files in the latest snapshot"),
    "rows": ("rows", "rows in the latest snapshot (from the add actions' stats)"),
    "small_files": ("small_files", "data files under a quarter of maintenance.target_file_mb (OPTIMIZE compacts them)"),
    "last_commit_s": ("last_commit_timestamp_seconds", "Unix time of the latest commit"),
    "partitions": ("partitions", "partitions (days) in the latest snapshot; 0 for an unpartitioned table"),
    "max_files_per_partition": (
        "max_files_per_partition",
        "data files in the partition that has the most (small files per day)",
    ),
}
"""TableStats field -> (metric name after ``tierlake_table_``, help): the one name table of this text file and of
``tierlake metrics serve`` (``pipelines.observe.metrics``), so the two never disagree on a name."""


def export_metrics(stats: list[TableStats], path: Path) -> Path:
    """Write the stats as a Prometheus text file (node-exporter textfile collector), atomically; the same names
    ``tierlake metrics serve`` exposes (:data:`TABLE_METRICS`)."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile  # noqa: PLC0415

    registry = CollectorRegistry()
    gauges = {
        field_name: Gauge(f"tierlake_table_{name}", text, ["table"], registry=registry)
        for field_name, (name, text) in TABLE_METRICS.items()
    }
    for entry in stats:
        for field_name, gauge in gauges.items():
            gauge.labels(table=entry.table).set(getattr(entry, field_name))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)  # writes a temp file, then renames it over the old one
    return path


# ---------------------------------------------------------------------------------------------------------
# OPTIMIZE, VACUUM, checkpoint, history


@dataclass(frozen=True, kw_only=True)
class OptimizeReport:
    table: str
    mode: str
    zorder_by: list[str]
    version_before: int
    version_after: int
    files_before: int
    files_after: int
    rows_before: int
    rows_after: int
    seconds: float


def optimize(settings: Settings, table: str) -> OptimizeReport:
    """Compact (bin-pack) or Z-order ``table`` as ``maintenance.tables`` says, under the table's lease.

    delta-rs rewrites the files (no JVM; its commits are marked ``dataChange: false``, so streaming readers of
    the table skip them, as they skip Spark's OPTIMIZE).
    """
    from deltalake.exceptions import DeltaError  # noqa: PLC0415

    layout = settings.maintenance.table(table)
    before = table_stats(settings, table)
    started = time.monotonic()
    target = settings.maintenance.target_file_mb << 20
    filters = busy_partitions(before.files_per_partition)
    with table_lease(settings, table, operation="OPTIMIZE"):
        dt = open_table(settings, table)
        try:
            if filters == []:
                pass  # every day is one file already: nothing to rewrite (and a purged day is never read)
            elif layout.optimize == "zorder":
                dt.optimize.z_order(list(layout.zorder_by), target_size=target, partition_filters=filters)
            else:
                dt.optimize.compact(target_size=target, partition_filters=filters)
        except DeltaError as exc:
            raise StorageError(
                f"OPTIMIZE ({layout.optimize}) of {table} failed: {exc}. Fix: check maintenance.tables in conf/ "
                "(zorder_by must name columns of the table)"
            ) from exc
    after = table_stats(settings, table)
    _check_rows_kept(settings, table, _optimize_version(dt, since=before.version), before)
    logger.info(
        "optimized %s: %d -> %d files", table, before.files, after.files, extra={"table_version": after.version}
    )
    return OptimizeReport(
        table=table,
        mode=layout.optimize,
        zorder_by=list(layout.zorder_by),
        version_before=before.version,
        version_after=after.version,
        files_before=before.files,
        files_after=after.files,
        rows_before=before.rows,
        rows_after=after.rows,
        seconds=round(time.monotonic() - started, 2),
    )


def check_retention(hours: float, *, allow_short_retention: bool) -> None:
    """Refuse a retention under 7 days unless explicitly overridden (old snapshots lose their files)."""
    if hours < 0 or hours != int(hours):
        raise RetentionViolation(
            f"retention_hours={hours:g} is not a whole number of hours >= 0 (Delta's VACUUM rounds the retention to "
            "whole hours, so 0.5 would delete files removed a second ago). Fix: give whole hours, e.g. 168"
        )
    if hours < MIN_VACUUM_RETENTION_HOURS and not allow_short_retention:
        raise RetentionViolation(
            f"VACUUM retention of {hours:g} hours is under the {MIN_VACUUM_RETENTION_HOURS:g}-hour (7-day) minimum: "
            "readers and writers of older snapshots (a pinned training run, a streaming query) would lose files. "
            f"Fix: use --retention-hours {MIN_VACUUM_RETENTION_HOURS:g} or more, or add --allow-short-retention "
            "if nothing reads older versions"
        )


@dataclass(frozen=True, kw_only=True)
class VacuumReport:
    table: str
    retention_hours: float
    dry_run: bool
    objects_before: int
    objects_after: int
    deletable: list[str]  # a dry run: what would go; else what went
    version: int = -1  # the table's version when it ran (VACUUM keeps that snapshot's files; it commits nothing here)
    finished_unix: float = 0.0

    @property
    def deleted(self) -> int:
        return self.objects_before - self.objects_after


def data_objects(settings: Settings, table: str) -> dict[str, int]:
    """Every object under the table's folder outside ``_delta_log/`` and ``_checkpoints/`` -> size."""
    client = s3_client(settings.s3)
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.s3.lake_bucket, Prefix=f"{table}/"):
        for item in page.get("Contents", []):
            key = item.get("Key", "")
            relative = key[len(table) + 1 :]
            if not relative.startswith(("_delta_log/", "_checkpoints/")):
                found[relative] = int(item.get("Size", 0))
    return found


def vacuum(
    spark: SparkSession,
    settings: Settings,
    table: str,
    *,
    retention_hours: float | None = None,
    allow_short_retention: bool = False,
    dry_run: bool = False,
) -> VacuumReport:
    """Delete files that left the table more than ``retention_hours`` ago (default ``maintenance``'s, 168 h)."""
    hours = settings.maintenance.vacuum_retention_hours if retention_hours is None else retention_hours
    check_retention(hours, allow_short_retention=allow_short_retention)
    open_table(settings, table)  # NotFound before the lease and the JVM work
    check_key = "spark.databricks.delta.retentionDurationCheck.enabled"
    uri = spark_uri(settings, table)
    with table_lease(settings, table, operation="VACUUM"):
        before = data_objects(settings, table)
        version = open_table(settings, table).version()  # the snapshot whose files VACUUM keeps
        previous = spark.conf.get(check_key)
        if hours < MIN_VACUUM_RETENTION_HOURS:
            spark.conf.set(check_key, "false")  # our own check above was explicitly overridden
        try:
            listed = spark.sql(
                f"VACUUM delta.`{uri}` RETAIN {hours:.6f} HOURS{' DRY RUN' if dry_run else ''}"
            ).collect()
        finally:
            spark.conf.set(check_key, previous or "true")
        after = data_objects(settings, table)
    if dry_run:
        prefix = f"{uri}/"
        deletable = sorted(unquote(str(row[0])).removeprefix(prefix) for row in listed)
    else:
        deletable = sorted(set(before) - set(after))
    logger.info("vacuumed %s: %d -> %d objects", table, len(before), len(after))
    return VacuumReport(
        table=table,
        retention_hours=hours,
        dry_run=dry_run,
        objects_before=len(before),
        objects_after=len(after),
        deletable=deletable,
        version=version,
        finished_unix=time.time(),
    )


def checkpoint(settings: Settings, table: str) -> dict[str, Any]:
    """Write a checkpoint of the latest version (readers then replay fewer JSON commits), under the lease."""
    open_table(settings, table)
    with table_lease(settings, table, operation="checkpoint"):
        dt = open_table(settings, table)
        dt.create_checkpoint()
    return {"table": table, "version": dt.version()}


def history(settings: Settings, table: str, *, limit: int | None = None) -> list[dict[str, Any]]:
    """The table's commits, newest first: version, timestamp, operation, its parameters and metrics."""
    entries = open_table(settings, table).history(limit)
    keep = ("version", "timestamp", "operation", "operationParameters", "operationMetrics", "engineInfo")
    return [{key: entry.get(key) for key in keep if key in entry} for entry in entries]


# ---------------------------------------------------------------------------------------------------------
# Supervision of the ingestion driver


@dataclass(frozen=True, kw_only=True)
class IngestHealth:
    # "ok", "dead" (restart it), "stale" (no progress for too long), "failed" (an entity gave up) or "degraded" (an
    # entity paused, its writer lease unconfirmed, for longer than max_paused_s)
    verdict: str
    running: bool
    pid: int | None
    staleness_s: float | None
    reason: str


# An entity pauses while its writer lease is unconfirmed and resumes within a second of the store answering again, so
# a pause shorter than a lease TTL (maintenance.lease_ttl_s, 30 s by default) is a blip that healed itself; one longer
# is an outage an operator should hear of. The driver stays fresh meanwhile (it keeps writing its status).
MAX_PAUSED_S = 30.0


def ingest_health(
    status: Mapping[str, Any], *, max_staleness_s: float, max_paused_s: float = MAX_PAUSED_S, now: float | None = None
) -> IngestHealth:
    """Judge ``tierlake ingest status --json``: is the driver alive, did its queries report lately, and has no entity
    been paused (fenced: its writer lease unconfirmed) for longer than ``max_paused_s``? ``now``: unix time."""
    running = bool(status.get("running"))
    pid = status.get("pid")
    staleness = status.get("seconds_since_update")
    staleness_s = float(staleness) if isinstance(staleness, int | float) else None
    if not running:
        return IngestHealth(
            verdict="dead", running=False, pid=None, staleness_s=staleness_s, reason="no driver process"
        )
    if failed := status.get("failed"):
        what = "; ".join(
            f"{entity} at batch {f.get('batch_id', '?')} (offsets {f.get('offsets', '?')}): {f.get('error')}"
            for entity, f in sorted(failed.items())
        )
        return IngestHealth(verdict="failed", running=True, pid=pid, staleness_s=staleness_s, reason=what)
    if staleness_s is None:
        return IngestHealth(verdict="stale", running=True, pid=pid, staleness_s=None, reason="no progress reported yet")
    if staleness_s > max_staleness_s:
        return IngestHealth(
            verdict="stale",
            running=True,
            pid=pid,
            staleness_s=staleness_s,
            reason=f"last progress {staleness_s:.0f} s ago > max_ingest_staleness_s {max_staleness_s:g}",
        )
    if paused := _paused_too_long(status, max_paused_s=max_paused_s, now=time.time() if now is None else now):
        return IngestHealth(verdict="degraded", running=True, pid=pid, staleness_s=staleness_s, reason=paused)
    return IngestHealth(verdict="ok", running=True, pid=pid, staleness_s=staleness_s, reason="alive and fresh")


def _paused_too_long(status: Mapping[str, Any], *, max_paused_s: float, now: float) -> str:
    """The entities paused for longer than ``max_paused_s``, why, and the fix; "" when none. A pause with no start
    (a driver older than ``paused_since``) counts as too long."""
    since = status.get("paused_since") or {}
    late = []
    for entity, why in sorted((status.get("paused") or {}).items()):
        started = since.get(entity)
        paused_s = now - float(started) if isinstance(started, int | float) else None
        if paused_s is None or paused_s > max_paused_s:
            how_long = "for an unknown time" if paused_s is None else f"for {paused_s:.0f} s"
            late.append(f"{entity} paused {how_long} > max_paused_s {max_paused_s:g}: {why}")
    if not late:
        return ""
    return (
        "; ".join(late) + ". Fix: make the object store answer (`tierlake stack status`); the entity resumes by itself "
        "once its lease is confirmed; if it stays paused, `tierlake ingest stop` then `tierlake ingest start`"
    )
