"""Gather the operator's view of the whole lake into one :class:`LakeReport`: ingestion, Kafka lag, tables, the
edge cache, the cold tier and training checkpoints, each with its verdicts.

A part that cannot be read (RGW down, Kafka unreachable, a broken catalog) does not stop the others: it becomes an
ERR verdict naming what failed and how to look further, so the page always says what it could not see.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from pipelines.lake.maintenance import table_stats
from pipelines.observe import verdicts as v
from pipelines.observe.ingestion import EntityIngest, client_for, entity_ingest
from pipelines.observe.lag import PartitionLag, topic_lag
from tierlake import catalog
from tierlake.config import Settings
from tierlake.errors import NotFound, TierlakeError

logger = logging.getLogger(__name__)
T = TypeVar("T")
HISTORY_SCAN = 200
"""Commits read back from the newest to find the last OPTIMIZE and VACUUM (older ones show as "not in the last 200")."""


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
    last_optimize_s: float | None = None
    last_vacuum_s: float | None = None
    partitions: int = 0  # day partitions (0: not partitioned)
    max_files_per_partition: int = 0  # the small-file signal of a day-partitioned table (OPTIMIZE brings it to 1)


@dataclass(kw_only=True)
class LakeReport:
    generated_s: float
    since_s: float
    verdicts: list[v.Verdict] = field(default_factory=list)
    ingestion: list[EntityIngest] = field(default_factory=list)
    lag: list[PartitionLag] = field(default_factory=list)
    tables: list[TableRow] = field(default_factory=list)
    cache: dict[str, Any] | None = None
    archive: dict[str, Any] | None = None
    checkpoints: dict[str, Any] = field(default_factory=dict)
    driver: dict[str, Any] = field(default_factory=dict)

    @property
    def level(self) -> v.Level:
        return v.worst(self.verdicts)


def source_errors() -> tuple[type[BaseException], ...]:
    """What reading one part may raise and still leave the rest of the report worth building."""
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415
    from confluent_kafka import KafkaException  # noqa: PLC0415
    from deltalake.exceptions import DeltaError  # noqa: PLC0415
    from duckdb import Error as DuckError  # noqa: PLC0415

    return (TierlakeError, OSError, BotoCoreError, ClientError, KafkaException, DeltaError, DuckError, ValueError)


def guarded(report: LakeReport, section: str, what: str, fix: str, read: Callable[[], T]) -> T | None:
    """``read()``, or None with an ERR verdict naming ``what`` could not be read and the error."""
    try:
        return read()
    except source_errors() as exc:
        logger.warning("report: %s could not be read: %s", what, exc)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        report.verdicts.append(
            v.Verdict(section=section, subject=what, level=v.Level.ERR, value=f"could not be read: {first}", fix=fix)
        )
        return None


def known_tables(settings: Settings, extra: list[str]) -> list[str]:
    """Every table conf/ names (each entity's, maintenance, mirror and archive tables) and ``extra``, in order."""
    lake = settings.s3.lake_bucket
    found: list[str] = []
    for name, spec in settings.entities.items():
        found += [catalog.bronze(lake, spec.topic).path, catalog.silver(lake, name).path]
        found += [catalog.quarantine(lake, name).path, catalog.dropped(lake, name).path]
        if spec.gold == "ev":
            found += [catalog.gold_windows(lake, name).path, catalog.gold_anomalies(lake, name).path]
        elif spec.gold == "corpus":
            found.append(catalog.gold_tokens(lake, name).path)
    found += [t.table for t in settings.maintenance.tables]
    found += [*settings.mirror.tables, *settings.archive.tables, *extra]
    return list(dict.fromkeys(found))


def table_row(settings: Settings, table: str) -> TableRow:
    """Stats of one table, its last checkpoint, and its last OPTIMIZE and VACUUM within :data:`HISTORY_SCAN` commits."""
    from pipelines.lake.maintenance import open_table  # noqa: PLC0415

    try:
        stats = table_stats(settings, table)
    except NotFound:
        return TableRow(table=table, exists=False)
    row = TableRow(
        table=table,
        exists=True,
        version=stats.version,
        files=stats.files,
        small_files=stats.small_files,
        bytes=stats.bytes,
        rows=stats.rows,
        last_commit_s=stats.last_commit_s,
        partitions=stats.partitions,
        max_files_per_partition=stats.max_files_per_partition,
    )
    for entry in open_table(settings, table).history(HISTORY_SCAN):
        operation, at_s = str(entry.get("operation", "")), float(entry.get("timestamp", 0)) / 1000
        if operation == "OPTIMIZE" and row.last_optimize_s is None:
            row.last_optimize_s = at_s
        if operation.startswith("VACUUM") and row.last_vacuum_s is None:
            row.last_vacuum_s = at_s
    row.last_checkpoint = last_checkpoint(settings, table)
    return row


def last_checkpoint(settings: Settings, table: str) -> int | None:
    """The version of the table's last checkpoint (``_delta_log/_last_checkpoint``), None if it has none."""
    from botocore.exceptions import ClientError  # noqa: PLC0415

    client = client_for(settings)
    try:
        body = client.get_object(Bucket=settings.s3.lake_bucket, Key=f"{table}/_delta_log/_last_checkpoint")["Body"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return int(json.loads(body.read())["version"])


def cache_section(settings: Settings) -> dict[str, Any] | None:
    """The node's edge cache counters (None: this node has no cache yet; the report does not create one)."""
    if not (settings.cache.directory / "index.sqlite").exists():
        return None
    from tiers.cache import cache_from_settings  # noqa: PLC0415

    stats = cache_from_settings(settings.cache.options, settings.s3).stats()
    counters = dict(stats.counters)
    bytes_hit, bytes_filled = counters.get("bytes_hit", 0), counters.get("bytes_filled", 0)
    moved = bytes_hit + bytes_filled
    return {
        "counters": counters,
        "entries": stats.entries,
        "used_bytes": stats.used_bytes,
        "capacity_bytes": stats.capacity_bytes,
        "hit_ratio": stats.hit_ratio,
        "byte_hit_ratio": bytes_hit / moved if moved else 0.0,
    }


def checkpoint_section(settings: Settings) -> dict[str, Any]:
    """Training checkpoints: tierlake does not write them yet, so the report counts only the objects found under
    the mirror's checkpoint prefixes and reads no step from them."""
    client = client_for(settings)
    objects, size = 0, 0
    for prefix in settings.mirror.checkpoint_prefixes:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.s3.lake_bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                objects += 1
                size += int(item.get("Size", 0))
    return {"prefixes": list(settings.mirror.checkpoint_prefixes), "objects": objects, "bytes": size}


def driver_section(settings: Settings, *, running: bool | None) -> dict[str, Any]:
    """The streaming driver's last status file (``tierlake ingest start`` writes it) and whether it runs."""
    status_file = settings.run_dir / "ingest" / "status.json"
    status: dict[str, Any] = json.loads(status_file.read_text()) if status_file.exists() else {}
    return {"running": running, "updated_s": status.get("updated"), "failed": status.get("failed") or {}}


def build_report(
    settings: Settings,
    *,
    since_s: float,
    grace_s: float = v.DEFAULT_LAG_GRACE_S,
    driver_running: bool | None = None,
    extra_tables: list[str] | None = None,
) -> LakeReport:
    """The whole report, every part read now. ``driver_running``: whether an ingest driver runs (the CLI knows)."""
    from pipelines.observe.archive import archive_section  # noqa: PLC0415

    report = LakeReport(generated_s=time.time(), since_s=since_s)
    report.driver = driver_section(settings, running=driver_running)
    _ingestion(report, settings, grace_s=grace_s)
    for table in known_tables(settings, extra_tables or []):
        row = guarded(report, "tables", table, f"`tierlake table history {table}`", partial(table_row, settings, table))
        if row is None:
            continue
        report.tables.append(row)
        if row.exists:
            report.verdicts += v.table_verdicts(
                table,
                files=row.files,
                small_files=row.small_files,
                version=row.version,
                last_checkpoint=row.last_checkpoint,
            )
    report.cache = guarded(report, "cache", "edge cache", "`tierlake cache stats`", lambda: cache_section(settings))
    if report.cache is not None:
        c = report.cache
        report.verdicts += v.cache_verdicts(
            hits=c["counters"].get("hits", 0),
            misses=c["counters"].get("misses", 0),
            used_bytes=c["used_bytes"],
            capacity_bytes=c["capacity_bytes"],
        )
    report.archive = guarded(
        report,
        "archive",
        "archive catalog",
        '`tierlake archive query "SELECT count(*) FROM catalog"`',
        lambda: archive_section(settings),
    )
    if report.archive is not None:
        report.verdicts += report.archive.pop("verdicts")
    checkpoints = guarded(
        report,
        "training",
        "training checkpoints",
        "check s3 access to mirror.checkpoint_prefixes",
        lambda: checkpoint_section(settings),
    )
    report.checkpoints = checkpoints or {}
    return report


def _ingestion(report: LakeReport, settings: Settings, *, grace_s: float) -> None:
    running = bool(report.driver.get("running"))
    for entity, spec in settings.entities.items():
        fix = f"`tierlake ingest reconcile --entity {entity}`"
        ingest = guarded(
            report,
            "ingestion",
            f"ingestion of {entity}",
            fix,
            partial(entity_ingest, settings, entity, since_s=report.since_s),
        )
        if ingest is not None:
            report.ingestion.append(ingest)
            for p in ingest.reconcile:
                report.verdicts.append(
                    v.reconcile_verdict(
                        f"{p['topic']}/{p['partition']}",
                        missing=p["missing"],
                        unexpected=p["unexpected"],
                        repeated=p["repeated"],
                        holes=p["holes"],
                    )
                )
            counts = ingest.window_counts
            top = next(iter(ingest.quarantine_by_rule), None)
            report.verdicts.append(
                v.quarantine_verdict(
                    entity, quarantined=counts.get("quarantine", 0), total=sum(counts.values()), top_rule=top
                )
            )
        lag = guarded(
            report,
            "kafka",
            f"lag of {spec.topic}",
            "`tierlake stack status` (is Kafka up?) and `tierlake ingest status`",
            partial(topic_lag, settings, spec.topic, since_s=report.since_s, grace_s=grace_s, driver_running=running),
        )
        for partition in lag or []:
            report.lag.append(partition)
            report.verdicts.append(partition.verdict)
