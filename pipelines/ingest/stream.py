"""The ingest query of a topic: each micro-batch of Kafka records goes to bronze and to silver in one hop.

One streaming query per topic reads Kafka and, per micro-batch (``foreachBatch``), appends the records to
bronze.<topic> and judges them into silver/quarantine/dropped of the topic's entity. Bronze and silver used to be
two queries, silver reading bronze as a Delta stream: every record then waited for two triggers, and silver read
back from the object store what bronze had just written. One hop reads each record once and commits it to silver
one trigger after it arrives.

Exactly once, across kills of the driver:

- Spark writes a batch's offsets (and its batch timestamp) to the checkpoint before it runs the batch, and a
  restarted query runs an unfinished batch again with the same offsets and the same timestamp.
- ``ingest_time`` is ``current_timestamp()`` in the streaming plan, which Spark replaces by that batch timestamp:
  a replayed batch carries the same ``ingest_time``, so the rules that read it (``future_timestamp``) judge every
  record as the first attempt did.
- Every row written carries the batch id (``_batch_id``), and the driver's :class:`CommitLedger` skips a table that
  already holds the batch: the others get exactly what the first attempt would have written. (Delta's own
  ``txnAppId``/``txnVersion`` did the same, at ~1.4 s per append here; ``pipelines.ingest.ledger`` says why that is
  safe.)

The checkpoint sits beside the bronze table (``bronze/_checkpoints/<topic>``).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from pipelines.ingest.bronze import (
    BRONZE_COLUMNS,
    BRONZE_DDL,
    BronzeTable,
    bronze_table,
    ensure_bronze,
    kafka_source,
    to_bronze,
    write_bronze,
)
from pipelines.ingest.gold_ev import append_anomalies, flag_rule, gold_paths
from pipelines.ingest.high_water import HighWater
from pipelines.ingest.ledger import CommitLedger
from pipelines.ingest.log_checkpoints import LogCheckpoints
from pipelines.ingest.offsets import CheckpointOffsets
from pipelines.ingest.recent_ids import RecentIds
from pipelines.ingest.rules import classify
from pipelines.ingest.silver import Flags, SilverTables, process_batch, silver_tables, table_exists
from pipelines.session import batch_codegen, run_together, use_pool
from tierlake.catalog import EVENT_DAY, INGEST_DAY
from tierlake.config import Settings
from tierlake.entities import EntitySpec
from tierlake.errors import DataLoss, first_line
from tiers.s3 import delta_storage_options

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery
    from pyspark.sql.streaming.readwriter import DataStreamWriter

logger = logging.getLogger(__name__)


def with_trigger(writer: DataStreamWriter, trigger_s: float | None) -> DataStreamWriter:
    """``trigger_s`` None: process what is there now and stop (``availableNow``); else every ``trigger_s`` s."""
    if trigger_s is None:
        return writer.trigger(availableNow=True)
    return writer.trigger(processingTime=f"{trigger_s} seconds")


def batch_offsets(batch: DataFrame) -> dict[str, list[int]]:
    """``"<topic>-<partition>"`` -> [first, last] Kafka offset of a micro-batch (to name a failed batch)."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    rows = batch.groupBy("topic", "partition").agg(F.min("offset").alias("lo"), F.max("offset").alias("hi")).collect()
    return {f"{r['topic']}-{r['partition']}": [int(r["lo"]), int(r["hi"])] for r in sorted(rows, key=str)}


def describe_failure(batch: DataFrame, batch_id: int, exc: BaseException) -> dict[str, Any]:
    """What ``ingest status`` says of a batch that could not commit: its id, offset ranges and the reason."""
    try:
        offsets: dict[str, list[int]] | str = batch_offsets(batch)
    except Exception as inner:  # the batch may be unreadable too; the failure is still reported
        offsets = f"unknown ({first_line(inner)})"
    return {"batch_id": batch_id, "offsets": offsets, "reason": first_line(exc), "at": time.time()}


def start_ingest(
    spark: SparkSession,
    settings: Settings,
    *,
    entity: str,
    trigger_s: float | None,
    failures: dict[str, dict[str, Any]] | None = None,
    gate: Callable[[], None] | None = None,
) -> StreamingQuery:
    """Start the Kafka -> bronze + silver query of ``entity``'s topic (``trigger_s`` None = until caught up).

    ``failures``: where a batch that cannot commit is described (entity -> batch id, offsets, reason) before the
    query stops with its error. ``gate``: called before every commit of the query (the writer lease's check).
    """
    spec = settings.entities[entity]
    tables = silver_tables(settings, entity)  # refuses an unknown entity
    bronze = bronze_table(settings, spec.topic)
    ensure_bronze(spark, bronze)  # the table exists before the first batch: readers and reconcile can start
    high_water = HighWater(spark, tables.silver, spec.event_time, storage_options=delta_storage_options(settings.s3))
    ledger = CommitLedger(spark, gate=gate)
    history = _fresh_history(spark, tables.silver, spec)
    log_checkpoints = LogCheckpoints(spark)  # silver's, beside its commits
    anomalies_uri = gold_paths(settings.s3.lake_bucket, entity)[1]

    def write_flags(flagged: DataFrame, batch_id: int) -> bool:
        return append_anomalies(flagged, uri=anomalies_uri, batch_id=batch_id, ledger=ledger)

    flags = Flags(rule=flag_rule, write=write_flags) if spec.gold == "ev" else None  # EV anomaly flags
    written = [bronze.table_uri, tables.silver, tables.quarantine, tables.dropped, *([anomalies_uri] if flags else [])]
    # The tables written partitioned by day, and the column (the ledger refuses another layout).
    by_day = {bronze.table_uri: INGEST_DAY, tables.silver: EVENT_DAY, **({anomalies_uri: EVENT_DAY} if flags else {})}
    checkpoint = CheckpointOffsets(spark, bronze.checkpoint_uri)  # each batch's Kafka offsets, for the commits
    warm_up(spark, spec, ledger=ledger, high_water=high_water, tables=written, layouts=by_day)
    _read_history(history, high_water, checkpoint.next_batch())

    handle = _Batches(
        settings=settings,
        spec=spec,
        tables=tables,
        bronze=bronze,
        high_water=high_water,
        history=history,
        ledger=ledger,
        flags=flags,
        checkpoint=checkpoint,
        log_checkpoints=log_checkpoints,
        failures=failures,
    )

    # The rules are part of the streaming plan: Spark analyses them once when the query starts, not per batch
    # from Python (that cost ~0.7 s of every batch here), and the persisted batch holds the parsed rows.
    writer = (
        classify(to_bronze(kafka_source(spark, settings, spec.topic)), spec)
        .writeStream.foreachBatch(handle)
        .option("checkpointLocation", bronze.checkpoint_uri)
        .queryName(f"ingest_{entity}")
    )
    return with_trigger(writer, trigger_s).start()


@dataclass
class _Batches:
    """The ingest query's ``foreachBatch`` function, with what it keeps from one batch to the next."""

    settings: Settings
    spec: EntitySpec
    tables: SilverTables
    bronze: BronzeTable
    high_water: HighWater
    history: RecentIds
    ledger: CommitLedger
    flags: Flags | None
    checkpoint: CheckpointOffsets
    log_checkpoints: LogCheckpoints
    failures: dict[str, dict[str, Any]] | None
    previous_rows: int | None = None  # the size of the query's last batch (batch_codegen)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        began = time.monotonic()
        entity = self.spec.name
        use_pool(batch.sparkSession, "ingest")
        # Read once: silver's judging and bronze's append both read the batch, and each read of an uncached batch
        # fetched its records from Kafka again.
        classified = batch.persist()
        with (
            batch_codegen(batch.sparkSession, self.settings, self.previous_rows),
            _noting_failure(self.failures, entity, batch, batch_id),
            _unpersisting(classified),
        ):
            counts = process_batch(
                classified,
                batch_id,
                entity=self.spec,
                tables=self.tables,
                high_water=self.high_water,
                history=self.history,
                ledger=self.ledger,
                flag=self.flags,  # visible with their readings
                # Bronze keeps the Kafka columns only: its append needs no judging and runs beside silver's.
                alongside=[partial(write_bronze, batch_id=batch_id, table=self.bronze, ledger=self.ledger)],
                offsets=self.checkpoint.ranges(batch_id),
                after_commit=partial(self.log_checkpoints.after_commit, self.tables.silver),
            )
        self.previous_rows = counts["silver"] + counts["quarantine"] + counts["dropped"]
        logger.info("ingest %s batch %d: %.1f s", entity, batch_id, time.monotonic() - began, extra={"entity": entity})


_histories: dict[str, RecentIds] = {}


def _fresh_history(spark: SparkSession, silver_uri: str, entity: EntitySpec) -> RecentIds:
    """A new query's duplicate-check history (it reads silver at its first batch), the previous query's of the
    same table freed: a restarted query never trusts what its failed predecessor kept."""
    previous = _histories.pop(silver_uri, None)
    if previous is not None:
        previous.close()
    _histories[silver_uri] = RecentIds(spark, silver_uri=silver_uri, entity=entity)
    return _histories[silver_uri]


def warm_up(
    spark: SparkSession,
    entity: EntitySpec,
    *,
    ledger: CommitLedger,
    high_water: HighWater,
    tables: list[str],
    layouts: dict[str, str],
) -> None:
    """Pay a query's once-only costs before it starts, at the same time, instead of inside its first batch.

    The first batch used to start the rules' Python workers and make Delta compute the snapshot of each table it
    writes (the ledger's first look, and its check of each table's layout, ``layouts``: table -> day column): in
    the event log of a 20,000-record first batch those took most of its 31.6 s (docs/decisions.md), and the
    layout checks alone later 0.5 s on silver's path. They are the same work either way, but here they overlap
    one another, and a restarted driver's first batch (the one a backlog waits on) no longer carries them. Best
    effort: a table that cannot be read is left to the first batch, which fails with its offsets and its reason
    (the failure policy).
    """
    began = time.monotonic()
    calls: list[Callable[[], object]] = [partial(ledger.last, uri) for uri in tables]
    calls += [partial(ledger.check_layout, uri, column) for uri, column in layouts.items()]
    calls += [high_water.warm, partial(_start_rule_workers, spark, entity)]
    results = run_together(spark, "ingest", [partial(_attempt, call) for call in calls])
    failed = [message for message in results if message]
    logger.info(
        "ingest %s: warmed up in %.1f s%s",
        entity.name,
        time.monotonic() - began,
        f"; left to the first batch: {'; '.join(failed)}" if failed else "",
        extra={"entity": entity.name},
    )


def _read_history(history: RecentIds, high_water: HighWater, batch_id: int | None) -> None:
    """Read the duplicate check's history for the batch the query will run first, before it starts (a restarted
    driver's first batch, the one a backlog waits on, then finds it read); best effort: the history itself reads
    silver for whatever batch comes first if this guessed another one or failed."""
    if batch_id is None:
        return
    began = time.monotonic()
    failed = _attempt(lambda: history.seen(batch_id, high_water.before(batch_id)))  # a table it cannot read: later
    logger.info(
        "duplicate check's history for batch %d: %s in %.1f s",
        batch_id,
        f"not read ({failed})" if failed else "read",
        time.monotonic() - began,
    )


def _attempt(call: Callable[[], object]) -> str | None:
    """Run ``call``; its error's first line instead of raising it."""
    try:
        call()
    except Exception as exc:
        return first_line(exc)
    return None


def _start_rule_workers(spark: SparkSession, entity: EntitySpec) -> None:
    """Run the rules over one made-up record per core, so the Python workers a batch's tasks reuse exist."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    cores = spark.sparkContext.defaultParallelism
    now = datetime.now(UTC)
    rows = [(None, b"{}", entity.topic, part, 0, now, now, 0, now.date()) for part in range(cores)]
    made_up = spark.createDataFrame(rows, BRONZE_DDL).select(*BRONZE_COLUMNS).repartition(cores)
    classify(made_up, entity).select(F.col("rule")).collect()


@contextmanager
def _unpersisting(frame: DataFrame) -> Iterator[None]:
    try:
        yield
    finally:
        frame.unpersist()


@contextmanager
def _noting_failure(
    failures: dict[str, dict[str, Any]] | None, entity: str, batch: DataFrame, batch_id: int
) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        logger.exception("ingest %s batch %d could not commit", entity, batch_id, extra={"entity": entity})
        if failures is not None:
            failures[entity] = describe_failure(batch, batch_id, exc)
        raise


def run_ingest_until_caught_up(
    spark: SparkSession,
    settings: Settings,
    *,
    entity: str,
    failures: dict[str, dict[str, Any]] | None = None,
    gate: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Everything now in ``entity``'s topic into bronze and silver/quarantine/dropped, then stop.

    Returns the tables' row counts and bronze's version.
    """
    from pyspark.errors import StreamingQueryException  # noqa: PLC0415

    try:
        start_ingest(spark, settings, entity=entity, trigger_s=None, failures=failures, gate=gate).awaitTermination()
    except StreamingQueryException as exc:
        lost = data_loss(exc, settings, entity=entity)
        if lost is None:
            raise
        raise lost from exc
    return ingest_counts(spark, settings, entity=entity)


# Spark's Kafka source fails a query with this when offsets it read or must read are gone (``failOnDataLoss``).
_DATA_LOSS = "Some data may have been lost"
_OFFSET_BACK = re.compile(r"Partition (?P<partition>\S+) offset was changed from (?P<read>\d+) to (?P<now>\d+)")
_REASON = re.compile(r"^Reason: (?P<reason>.+)$", re.MULTILINE)


def data_loss(exc: BaseException | None, settings: Settings, *, entity: str) -> DataLoss | None:
    """The clear error for an ingest query that Spark stopped because Kafka lost records; None for other failures.

    Spark's own message holds the whole query plan; this one says what happened, where, and what to do.
    """
    message = str(exc) if exc is not None else ""
    if _DATA_LOSS not in message:
        return None
    checkpoint = bronze_table(settings, settings.entities[entity].topic).checkpoint_uri
    back = _OFFSET_BACK.search(message)
    reason = _REASON.search(message)
    if back:
        what = (
            f"partition {back['partition']} went back to offset {back['now']}, behind the {back['read']} that the "
            f"checkpoint {checkpoint} has read: the topic was deleted and re-created, or Kafka's data was reset, "
            "while the lake kept its tables"
        )
    else:
        detail = reason["reason"].strip() if reason else message.splitlines()[0]
        what = (
            f"records the checkpoint {checkpoint} has not read yet are gone ({detail}): "
            "Kafka's retention aged them out, or the topic was re-created"
        )
    return DataLoss(
        f"ingest {entity}: Kafka no longer holds what the lake expects: {what}. "
        "The query stopped before writing past its last committed batch. "
        "Fix: restore Kafka's data (or raise the topic's retention); to start a local lake over instead, "
        f"`tierlake stack down`, delete {settings.run_dir} (the data of every local service), then `tierlake stack up`"
    )


def ingest_counts(spark: SparkSession, settings: Settings, *, entity: str) -> dict[str, Any]:
    """The row counts of ``entity``'s bronze, silver, quarantine and dropped tables, and bronze's version."""
    from delta.tables import DeltaTable  # noqa: PLC0415

    bronze = bronze_table(settings, settings.entities[entity].topic)
    tables = silver_tables(settings, entity)
    history = DeltaTable.forPath(spark, bronze.table_uri).history(1).collect()
    counts = {
        name: spark.read.format("delta").load(uri).count() if table_exists(spark, uri) else 0
        for name, uri in (
            ("bronze", bronze.table_uri),
            ("silver", tables.silver),
            ("quarantine", tables.quarantine),
            ("dropped", tables.dropped),
        )
    }
    version = int(history[0]["version"]) if history else -1
    logger.info("ingest %s: %s, bronze version %d", entity, counts, version, extra={"entity": entity})
    return {"entity": entity, "topic": bronze.topic, "table": bronze.table_uri, "version": version, **counts}
