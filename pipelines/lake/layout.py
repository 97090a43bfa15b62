"""Lay an existing table out for its lifecycle: rewrite it once, partitioned by day (``tierlake table migrate``).

The pipeline writes bronze by ingest day and silver and gold by event day (:func:`tierlake.catalog.day_layout`).
A table written before that is unpartitioned, and the writers refuse to append to it; this module rewrites it in
one Delta commit (``overwrite`` with the day column added), so the table's history keeps every earlier version and
time travel still reads them. Nothing is lost or changed: the row count and an order-free checksum of every
original column (the sum of ``xxhash64`` over each row) are compared between the version before and the version
after, and a difference stops the command naming the version to restore.

The rewrite holds the table's maintenance lease and the lease of the ingestion that writes it (``ingest-<entity>``),
so no append lands between the read and the commit. Streams resume on the new layout: the ingest query's Kafka
offsets and each table's ``_batch_id`` ledger are unchanged. The gold query, a Delta stream over silver, passes
the rewrite by its schema tracking log (``pipelines.ingest.gold``): it ends once at the migration's version with
the new schema and partitioning recorded, starts again from its checkpoint, and skips the rewrite itself
(``skipChangeCommits``: it adds no new rows). So this module leaves gold's checkpoint alone: moving it past the
migration by hand would mean writing Spark's and Delta's internal offset formats, and would lose rows of a gold
that was behind.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from pipelines.lake.lease import TableLease
from pipelines.lake.maintenance import open_table, spark_uri, table_lease
from tierlake import catalog
from tierlake.config import Settings
from tierlake.errors import CommitConflict, ConfigError, StorageError
from tiers.s3 import s3_client

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class MigrationReport:
    """One table's migration: its layout, versions, rows and checksum before and after."""

    table: str
    partition_column: str
    partitioned_before: list[str]
    version_before: int
    version_after: int | None  # None: a dry run, or nothing to do
    rows_before: int
    rows_after: int | None
    checksum_before: str
    checksum_after: str | None
    files_before: int
    files_after: int | None
    dry_run: bool
    seconds: float

    @property
    def migrated(self) -> bool:
        return self.version_after is not None and self.version_after != self.version_before


def owning_entity(settings: Settings, table: str) -> str | None:
    """The ingestion entity that writes ``table`` (None: no ingestion writes it)."""
    layer, _, rest = table.partition("/")
    for name, spec in settings.entities.items():
        if (layer == "bronze" and rest == catalog.topic_folder(spec.topic)) or (layer == "silver" and rest == name):
            return name
        if layer == "gold" and rest in (f"{name}_windows", f"{name}_anomalies"):
            return name
    return None


def layout_of(settings: Settings, table: str) -> catalog.DayLayout:
    """The day layout the pipeline gives ``table``, or :class:`ConfigError` naming the tables that have one."""
    entity = owning_entity(settings, table)
    event_time = settings.entities[entity].event_time if entity else "ts"
    layout = catalog.day_layout(table, event_time=event_time)
    if layout is None:
        raise ConfigError(
            f"table {table!r} has no day layout (bronze/<topic>, silver/<entity>, gold/<entity>_windows and "
            "gold/<entity>_anomalies have one). Fix: name one of those tables"
        )
    return layout


def pipeline_tables(settings: Settings) -> list[str]:
    """Every table of the pipeline that has a day layout, for ``--all``."""
    lake = settings.s3.lake_bucket
    tables = [t.path for name, spec in settings.entities.items() for t in catalog.entity_tables(lake, name, spec.topic)]
    return [t for t in tables if catalog.day_layout(t) is not None]


def checksum(frame: DataFrame, columns: list[str]) -> tuple[int, str]:
    """(rows, an order-free checksum of ``columns``): the sum of each row's xxhash64, as a decimal string."""
    from pyspark.sql import functions as F  # noqa: PLC0415
    from pyspark.sql.types import MapType  # noqa: PLC0415

    def hashable(name: str) -> Column:  # xxhash64 refuses maps (extra_fields): their entries, sorted, as JSON
        column = F.col(f"`{name}`")
        if isinstance(frame.schema[name].dataType, MapType):
            return F.to_json(F.array_sort(F.map_entries(column)))
        return column

    row = frame.select(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.xxhash64(*[hashable(c) for c in columns]).cast("decimal(38,0)")).alias("sum"),
    ).first()
    if row is None:
        return 0, "0"
    return int(row["rows"]), str(row["sum"] if row["sum"] is not None else 0)


@contextmanager
def _writers_held(settings: Settings, table: str) -> Iterator[None]:
    """The table's maintenance lease and its ingestion's lease: no other writer commits during the rewrite."""
    with ExitStack() as stack:
        stack.enter_context(table_lease(settings, table, operation="migrate"))
        entity = owning_entity(settings, table)
        if entity is not None:
            ingest = TableLease(
                s3_client(settings.s3),
                settings.s3.lake_bucket,
                f"ingest-{entity}",
                ttl_s=settings.maintenance.lease_ttl_s,
                owner=f"migrate of {table}",
            )
            try:
                ingest.acquire()
            except CommitConflict as exc:
                raise CommitConflict(
                    f"migrate of {table} refused: the ingestion of {entity!r} is running ({exc}). "
                    f"Fix: stop it (`tierlake ingest stop --entity {entity}` or its DAG), migrate, start it again"
                ) from exc
            ingest.start_renewing()
            stack.callback(ingest.release)
        yield


def migrate(spark: SparkSession, settings: Settings, table: str, *, execute: bool) -> MigrationReport:
    """Rewrite ``table`` partitioned by its day column (one new Delta version); a dry run without ``execute``."""
    held = _writers_held(settings, table) if execute else nullcontext()
    with held:
        return _rewrite(spark, settings, table, execute=execute)


def _rewrite(spark: SparkSession, settings: Settings, table: str, *, execute: bool) -> MigrationReport:
    from pyspark.sql import functions as F  # noqa: PLC0415

    began = time.monotonic()
    layout, uri = layout_of(settings, table), spark_uri(settings, table)
    before = open_table(settings, table)
    version, files = int(before.version()), len(before.file_uris())
    current = list(before.metadata().partition_columns)
    frame = spark.read.format("delta").option("versionAsOf", version).load(uri)
    columns = [c for c in frame.columns if c != layout.column]
    rows, summed = checksum(frame, columns)
    report = MigrationReport(
        table=table,
        partition_column=layout.column,
        partitioned_before=current,
        version_before=version,
        version_after=None,
        rows_before=rows,
        rows_after=None,
        checksum_before=summed,
        checksum_after=None,
        files_before=files,
        files_after=None,
        dry_run=not execute,
        seconds=0.0,
    )
    if current == [layout.column]:
        return _done(report, began, version=version, rows=rows, summed=summed, files=files)
    if not execute:
        return replace(report, seconds=round(time.monotonic() - began, 1))
    if layout.column not in frame.columns:
        frame = frame.withColumn(layout.column, F.to_date(F.col(layout.source)))
    note = {"writer": "tierlake", "operation": "migrate", "partition_by": layout.column, "from_version": version}
    (
        frame.write.format("delta")
        .mode("overwrite")
        .option("overwriteSchema", "true")
        .option("userMetadata", json.dumps(note))
        .partitionBy(layout.column)
        .save(uri)
    )
    after = open_table(settings, table)
    version_after = int(after.version())
    rows_after, summed_after = checksum(
        spark.read.format("delta").option("versionAsOf", version_after).load(uri), columns
    )
    if (rows_after, summed_after) != (rows, summed):
        raise StorageError(
            f"migrate of {table}: version {version_after} holds {rows_after} rows (checksum {summed_after}), "
            f"version {version} held {rows} (checksum {summed}). Fix: `RESTORE TABLE delta.`{uri}` TO VERSION AS "
            f"OF {version}` and report it"
        )
    logger.info("migrated %s to partitions by %s: version %d -> %d", table, layout.column, version, version_after)
    return _done(
        report, began, version=version_after, rows=rows_after, summed=summed_after, files=len(after.file_uris())
    )


def _done(
    report: MigrationReport, began: float, *, version: int, rows: int, summed: str, files: int
) -> MigrationReport:
    return replace(
        report,
        version_after=version,
        rows_after=rows,
        checksum_after=summed,
        files_after=files,
        seconds=round(time.monotonic() - began, 1),
    )
