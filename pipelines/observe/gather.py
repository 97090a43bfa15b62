"""Gather the operator's view of the whole lake into one :class:`LakeReport`: ingestion, Kafka lag, tables, the
edge cache, the cold tier and training checkpoints (listed by the CLI, see :mod:`pipelines.observe.checkpoints`),
each with its verdicts.

A part that cannot be read (RGW down, Kafka unreachable, a broken catalog) does not stop the others: it becomes an
ERR verdict naming what failed and how to look further, so the page always says what it could not see.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from pipelines.observe import verdicts as v
from pipelines.observe.checkpoints import CheckpointTierRow, TrainingCheckpoints, checkpoint_rows
from pipelines.observe.dag_runs import MaintenanceRuns
from pipelines.observe.ingestion import EntityIngest, entity_ingest
from pipelines.observe.lag import PartitionLag, topic_lag
from pipelines.observe.tables import TableRow, table_row
from tierlake import catalog
from tierlake.config import Settings
from tierlake.errors import TierlakeError

logger = logging.getLogger(__name__)
T = TypeVar("T")
READ_FIXES = {
    "ingestion": "`tierlake ingest reconcile --entity {entity}` (reads the same tables, in Spark)",
    "kafka": "`tierlake stack status` (is Kafka up?) and `tierlake ingest status`",
    "table": "`tierlake table history {table}`",
    "vacuums": "`tierlake stack status` (is RGW up?); `tierlake lineage trace <table>` reads the same records",
    "cache": "`tierlake cache stats`",
    "archive": '`tierlake archive query "SELECT count(*) FROM catalog"`',
    "training": "`tierlake checkpoint list`",
}
"""The fix of each part that could not be read: the command that reads the same thing and shows the error whole
(``{table}`` and ``{entity}`` filled in; ``<table>``: the operator's pick)."""
__all__ = [
    "READ_FIXES",
    "LakeReport",
    "TableRow",
    "build_report",
    "guarded",
    "known_tables",
]  # TableRow: pipelines.observe.tables


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
    checkpoints: list[CheckpointTierRow] | None = None  # None: not listed (no lister passed, or it failed)
    maintenance: MaintenanceRuns | None = None  # the maintenance DAG's last runs (None: not read)
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
    training: Callable[[], TrainingCheckpoints] | None = None,
    vacuums: Callable[[], Mapping[str, float]] | None = None,
    maintenance: Callable[[], MaintenanceRuns] | None = None,
) -> LakeReport:
    """The whole report, every part read now. From the CLI, which may import ``training``: ``driver_running``,
    whether an ingest driver runs; ``training`` lists the training checkpoints per tier (None: not shown);
    ``vacuums`` reads the VACUUM lineage records, table path -> newest record's time (None: only the log's);
    ``maintenance`` reads the maintenance DAG's last runs (None: not shown)."""
    from pipelines.observe.archive import archive_section  # noqa: PLC0415

    report = LakeReport(generated_s=time.time(), since_s=since_s)
    report.driver = driver_section(settings, running=driver_running)
    _ingestion(report, settings, grace_s=grace_s)
    _tables(report, settings, known_tables(settings, extra_tables or []), vacuums)
    if maintenance is not None:
        report.maintenance = maintenance()
        report.verdicts += v.maintenance_verdicts(report.maintenance)
    report.cache = guarded(report, "cache", "edge cache", READ_FIXES["cache"], lambda: cache_section(settings))
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
        READ_FIXES["archive"],
        lambda: archive_section(settings),
    )
    if report.archive is not None:
        report.verdicts += report.archive.pop("verdicts")
    if training is not None:
        _training(report, training)
    return report


def _tables(
    report: LakeReport, settings: Settings, tables: list[str], vacuums: Callable[[], Mapping[str, float]] | None
) -> None:
    fix = READ_FIXES["vacuums"]
    vacuumed = (guarded(report, "tables", "VACUUM lineage records", fix, vacuums) if vacuums else None) or {}
    for table in tables:
        read = partial(table_row, settings, table, vacuumed_s=vacuumed.get(table))
        row = guarded(report, "tables", table, READ_FIXES["table"].format(table=table), read)
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


def _training(report: LakeReport, training: Callable[[], TrainingCheckpoints]) -> None:
    found = guarded(report, "training", "training checkpoints", READ_FIXES["training"], training)
    if found is None:
        return
    report.checkpoints = checkpoint_rows(found)
    report.verdicts += [
        v.checkpoint_tier_verdict(row.tier, error=row.error, checkpoints=row.checkpoints) for row in report.checkpoints
    ]


def _ingestion(report: LakeReport, settings: Settings, *, grace_s: float) -> None:
    running = bool(report.driver.get("running"))
    for entity, spec in settings.entities.items():
        fix = READ_FIXES["ingestion"].format(entity=entity)
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
            READ_FIXES["kafka"],
            partial(topic_lag, settings, spec.topic, since_s=report.since_s, grace_s=grace_s, driver_running=running),
        )
        for partition in lag or []:
            report.lag.append(partition)
            report.verdicts.append(partition.verdict)
