"""silver.<entity>, quarantine.<entity> and dropped.<entity> from the bronze rows of a micro-batch, exactly once.

The ingest query (``pipelines.ingest.stream``) classifies its records by the rules (``pipelines.ingest.rules``) in
the streaming plan and hands each micro-batch to :func:`process_batch`, which judges it against history:
``late_event`` (event time older than the high-water mark minus the watermark) goes to quarantine, a repeated
``event_id`` within the watermark goes to dropped. Every bronze row lands in exactly one of the three tables.

Exactly once: every row carries its batch id (``_batch_id``) and :class:`pipelines.ingest.ledger.CommitLedger` skips a
table that already holds the batch, so a batch replayed after a crash skips the tables it already committed.
History is read as of *earlier* batches only (``_batch_id < batch_id``), so a replay classifies every row exactly
as the first attempt did.

Cost per batch stays flat as silver grows: the high-water mark comes from :class:`HighWater` (silver's maximum
event time, from its Delta log's file statistics when the query starts, then kept as batches commit: no data file
is opened, so purged days are not needed), and the duplicate check's history, silver's ids within two watermarks
of that mark, is read from silver once when the query starts and then kept in the executors' memory as batches
commit (:class:`pipelines.ingest.recent_ids.RecentIds`): a batch reads no silver file. A batch is judged on the
driver from a few columns of its rows (:mod:`pipelines.ingest.outcomes`), then appended to every table that gets
rows at once, bronze's append running beside it all (:func:`process_batch`).
Gold is a query of its own that reads silver (``pipelines.ingest.gold``), so a silver batch never waits for gold.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from pipelines.ingest.high_water import HighWater
from pipelines.ingest.ledger import CommitLedger
from pipelines.ingest.offsets import Ranges, differences
from pipelines.ingest.outcomes import Outcomes, batch_facts, decide, probe_ids, with_dropped
from pipelines.ingest.recent_ids import RecentIds
from pipelines.session import built, run_together, start_together, use_pool
from tierlake import catalog
from tierlake.config import Settings
from tierlake.entities import EntitySpec
from tierlake.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame, SparkSession

logger = logging.getLogger(__name__)
SOURCE_COLUMNS = ("topic", "partition", "offset", "kafka_timestamp", "ingest_time")


@dataclass(frozen=True, kw_only=True)
class SilverTables:
    entity: str
    lake_bucket: str
    silver: str
    quarantine: str
    dropped: str
    checkpoint: str


def silver_tables(settings: Settings, entity: str) -> SilverTables:
    if entity not in settings.entities:
        raise ConfigError(f"entity {entity!r} is not in entities of conf/. Fix: use one of {sorted(settings.entities)}")
    lake = settings.s3.lake_bucket
    return SilverTables(
        entity=entity,
        lake_bucket=lake,
        silver=catalog.silver(lake, entity).s3a,
        quarantine=catalog.quarantine(lake, entity).s3a,
        dropped=catalog.dropped(lake, entity).s3a,
        checkpoint=catalog.silver_checkpoint(lake, entity).s3a,
    )


def table_exists(spark: SparkSession, uri: str) -> bool:
    from delta.tables import DeltaTable  # noqa: PLC0415

    return bool(DeltaTable.isDeltaTable(spark, uri))


def _then_remember(
    append: Callable[[], bool],
    history: RecentIds,
    *,
    batch_id: int,
    ids: pa.Table,
    mark: datetime | None,
    after_commit: Callable[[], None] | None,
) -> bool:
    """Silver's append, then its rows' ids (``ids``, from the batch's outcomes) into the duplicate check's history
    (beside the batch's other appends; a replayed batch that silver holds adds the same ids its first attempt
    committed), then ``after_commit`` if it committed (silver's log checkpoint,
    :mod:`pipelines.ingest.log_checkpoints`)."""
    written = append()
    history.add(batch_id, ids, mark)
    if written and after_commit is not None:
        after_commit()
    return written


def with_late_rule(classified: DataFrame, *, entity: EntitySpec, high_water: datetime | None) -> DataFrame:
    """``classified`` with ``late_event`` in ``rule`` (and its error) for a valid row whose event time is more
    than the watermark before ``high_water``, the highest event time of earlier batches (:meth:`HighWater.before`;
    None, no lateness)."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    if high_water is None:
        return classified

    def parts() -> dict[str, Column]:
        ts = F.col(f"_rec.`{entity.event_time}`")
        return {
            "valid": F.col("rule").isNull(),
            "ts": ts,
            "watermark": F.expr(f"INTERVAL {entity.watermark_s} SECONDS"),
            "said": F.concat(F.lit(f"{entity.event_time}="), ts.cast("string")),
            "late_event": F.lit("late_event"),
            "rule": F.col("rule"),
            "error": F.col("error"),
        }

    part = built(classified.sparkSession, ("late", repr(entity)), parts)
    # As in Spark's own watermark, the high-water mark comes from earlier batches only: a batch spanning more
    # event time than the watermark is not late, and a replayed batch sees the same mark as its first attempt.
    late = part["valid"] & (part["ts"] < F.lit(high_water) - part["watermark"])
    because = F.concat(
        part["said"], F.lit(f" is more than {entity.watermark_s} s before the high-water mark {high_water}")
    )
    return classified.withColumns(
        {
            "rule": F.when(late, part["late_event"]).otherwise(part["rule"]),
            "error": F.when(late, because).otherwise(part["error"]),
        }
    )


def _in_silver() -> Column:
    from pyspark.sql import functions as F  # noqa: PLC0415

    return F.col("rule").isNull() & F.col("dropped").isNull()


def judge(
    classified: DataFrame,
    *,
    entity: EntitySpec,
    among: Callable[[pa.Array], set[str]],
    high_water: datetime | None,
    flag_rule: Callable[[], Column] | None = None,
) -> tuple[DataFrame, Outcomes]:
    """Add the history rules to a batch: ``late_event`` (rule) and ``duplicate_event_id`` (column ``dropped``),
    the latter decided on the driver (:mod:`pipelines.ingest.outcomes`); with the counts of each outcome.

    ``classified`` is read twice (the facts, then the appends): cache it. ``high_water``: the highest event time of
    earlier batches (:meth:`HighWater.before`); None, no lateness. ``among``: given the batch's valid ids, those
    silver holds from earlier batches within two watermarks of it (:meth:`RecentIds.among`, or
    :func:`pipelines.ingest.recent_ids.seen_among` over :func:`pipelines.ingest.recent_ids.silver_ids`).
    ``flag_rule``: makes the column, on the record struct ``_rec``, true for a silver row to flag (counted as
    ``flagged``; built once per entity and flag rule).
    """
    judged = with_late_rule(classified, entity=entity, high_water=high_water)
    facts = batch_facts(judged, entity=entity, flag_rule=flag_rule)
    outcomes = decide(facts, among(probe_ids(facts)))
    return with_dropped(judged, outcomes.dropped), outcomes


def silver_rows(judged: DataFrame, *, entity: EntitySpec, batch_id: int) -> DataFrame:
    """The rows of a judged batch that go to silver (no rule broken, not a duplicate)."""

    def columns() -> tuple[Column, list[Column | str]]:
        from pyspark.sql import functions as F  # noqa: PLC0415

        return _in_silver(), [
            *(F.col(f"_rec.`{name}`").alias(name) for name in entity.field_names),
            "extra_fields",
            *SOURCE_COLUMNS,
            F.current_timestamp().alias("silver_time"),
            "_batch_id",
            F.to_date(F.col(f"_rec.`{entity.event_time}`")).alias(catalog.EVENT_DAY),  # the partition (UTC day)
        ]

    return _rows(judged, batch_id, built(judged.sparkSession, ("silver_rows", repr(entity)), columns))


def quarantine_rows(judged: DataFrame, *, entity: EntitySpec, batch_id: int) -> DataFrame:
    """The rows of a judged batch that broke a rule, with the rule and the error."""

    def columns() -> tuple[Column, list[Column | str]]:
        from pyspark.sql import functions as F  # noqa: PLC0415

        return F.col("rule").isNotNull(), [
            F.lit(entity.name).alias("entity"),
            "rule",
            "error",
            *SOURCE_COLUMNS,
            "key",
            "value",
            F.current_timestamp().alias("quarantined_at"),
            "_batch_id",
            F.lit(False).alias("replayed"),
        ]

    return _rows(judged, batch_id, built(judged.sparkSession, ("quarantine_rows", repr(entity)), columns))


def dropped_rows(judged: DataFrame, *, entity: EntitySpec, batch_id: int) -> DataFrame:
    """The valid rows of a judged batch that repeat an event id, with the reason."""

    def columns() -> tuple[Column, list[Column | str]]:
        from pyspark.sql import functions as F  # noqa: PLC0415

        return F.col("rule").isNull() & F.col("dropped").isNotNull(), [
            F.col("dropped").alias("reason"),
            F.col(f"_rec.`{entity.event_id}`").alias("event_id"),
            *SOURCE_COLUMNS,
            F.current_timestamp().alias("dropped_at"),
            "_batch_id",
        ]

    return _rows(judged, batch_id, built(judged.sparkSession, ("dropped_rows", repr(entity)), columns))


def _rows(judged: DataFrame, batch_id: int, columns: tuple[Column, list[Column | str]]) -> DataFrame:
    """The rows of ``judged`` that ``columns`` picks: a filter, then a projection in which ``"_batch_id"`` is
    ``batch_id``. Two plans, not three: Spark analyses the whole plan again at each step, the batch's rules
    included (~20 ms each on 2 cores)."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    where, select = columns
    batch = F.lit(batch_id).alias("_batch_id")
    return judged.where(where).select(*(batch if isinstance(c, str) and c == "_batch_id" else c for c in select))


def outputs(judged: DataFrame, *, entity: EntitySpec, batch_id: int) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Split a judged batch into its silver, quarantine and dropped rows (disjoint, together the whole batch)."""
    return (
        silver_rows(judged, entity=entity, batch_id=batch_id),
        quarantine_rows(judged, entity=entity, batch_id=batch_id),
        dropped_rows(judged, entity=entity, batch_id=batch_id),
    )


@dataclass(frozen=True)
class Flags:
    """Rows an ingest batch flags beside its silver rows (EV anomalies, ``pipelines.ingest.gold_ev``).

    ``rule``: given the name of the judged batch's record struct, true for a row to flag; the batch counts them
    with its outcomes and collects their records (:mod:`pipelines.ingest.outcomes`). ``write``: appends the flags
    of those rows (a frame of their records, made on the driver; batch id), once per batch (the ledger), beside
    silver's append; a batch that flags nothing does not call it.
    """

    rule: Callable[[str], Column]
    write: Callable[[DataFrame, int], object]


def commit_metadata(entity: str, batch_id: int, offsets: dict[str, dict[int, tuple[int, int]]]) -> str:
    """What each Delta commit of an ingest batch says about itself (``userMetadata`` in the table's history)."""
    ranges = {topic: {str(p): [lo, hi] for p, (lo, hi) in sorted(parts.items())} for topic, parts in offsets.items()}
    return json.dumps({"writer": "tierlake", "query": f"ingest_{entity}", "batch_id": batch_id, "offsets": ranges})


def process_batch(
    classified: DataFrame,
    batch_id: int,
    *,
    entity: EntitySpec,
    tables: SilverTables,
    high_water: HighWater,
    history: RecentIds,
    ledger: CommitLedger,
    flag: Flags | None = None,
    alongside: Sequence[Callable[[DataFrame], object]] = (),
    offsets: Ranges | None = None,
    after_commit: Callable[[], None] | None = None,
) -> dict[str, int]:
    """One micro-batch, classified by the rules (:func:`pipelines.ingest.rules.classify`) and cached: judge it
    against history (:func:`judge`), then append every table exactly once (the ledger), so their order does not
    matter. Returns the row counts.

    The ``alongside`` writes (bronze's append of ``classified``: the Kafka columns, which need no judging) run
    beside everything: at once when ``offsets`` (the batch's Kafka ranges from the query's checkpoint, which every
    commit records) is given, else after the judging, whose rows give them. Silver (then its ids join ``history``,
    then ``after_commit``: the log checkpoints), the flags, quarantine and dropped are appended together; freshness
    waits for silver's commit alone.
    """
    began = time.monotonic()
    mark = high_water.before(batch_id)
    beside: list[Future[object]] = []
    if offsets is not None:  # bronze's append needs no judging
        beside = _start_beside(classified, alongside, ledger, entity=entity.name, batch_id=batch_id, offsets=offsets)
    try:
        judged, outcomes = _judged(classified, entity=entity, history=history, batch_id=batch_id, mark=mark, flag=flag)
        judged_s = time.monotonic() - began
        if offsets is None:
            beside = _start_beside(
                classified, alongside, ledger, entity=entity.name, batch_id=batch_id, offsets=outcomes.offsets
            )
        else:
            _check_offsets(batch_id, offsets, outcomes.offsets)
        silver = _silver_write(
            judged,
            outcomes,
            entity=entity,
            table=tables.silver,
            ledger=ledger,
            history=history,
            batch_id=batch_id,
            mark=mark,
            after_commit=after_commit,
        )
        others = _other_writes(
            judged, outcomes, entity=entity, tables=tables, ledger=ledger, batch_id=batch_id, flag=flag
        )
        run_together(classified.sparkSession, "ingest", [silver, *others], lead_pool="silver")
    finally:
        wait(beside)
    for future in beside:
        future.result()  # bronze's failure, once every write of the batch has ended
    high_water.record(batch_id, outcomes.high)
    _log_batch(entity.name, batch_id, outcomes.counts, judged_s=judged_s, written_s=time.monotonic() - began - judged_s)
    return outcomes.counts


def _start_beside(
    classified: DataFrame,
    alongside: Sequence[Callable[[DataFrame], object]],
    ledger: CommitLedger,
    *,
    entity: str,
    batch_id: int,
    offsets: Ranges,
) -> list[Future[object]]:
    """Name the batch's offsets in the ledger (every commit records them), then start the ``alongside`` writes."""
    ledger.describe(batch_id, commit_metadata(entity, batch_id, offsets))
    return start_together(classified.sparkSession, "ingest", [partial(write, classified) for write in alongside])


def _judged(
    classified: DataFrame,
    *,
    entity: EntitySpec,
    history: RecentIds,
    batch_id: int,
    mark: datetime | None,
    flag: Flags | None,
) -> tuple[DataFrame, Outcomes]:
    """:func:`judge` in the silver pool, so that the judging's jobs take the free cores before bronze's."""
    spark = classified.sparkSession
    use_pool(spark, "silver")
    try:
        return judge(
            classified,
            entity=entity,
            among=partial(history.among, batch_id, mark),
            high_water=mark,
            flag_rule=partial(flag.rule, "_rec") if flag is not None else None,
        )
    finally:
        use_pool(spark, "ingest")


def _silver_write(
    judged: DataFrame,
    outcomes: Outcomes,
    *,
    entity: EntitySpec,
    table: str,
    ledger: CommitLedger,
    history: RecentIds,
    batch_id: int,
    mark: datetime | None,
    after_commit: Callable[[], None] | None,
) -> Callable[[], object]:
    """Silver's append, after which the rows' ids join ``history``."""
    append = partial(
        _append,
        ledger,
        partial(silver_rows, judged, entity=entity, batch_id=batch_id),
        table,
        batch_id,
        merge_schema=True,
        partition_by=catalog.EVENT_DAY,
        # A new silver's log checkpoints are written beside the batches (after_commit).
        append_only=after_commit is not None,
    )
    return partial(
        _then_remember, append, history, batch_id=batch_id, ids=outcomes.kept, mark=mark, after_commit=after_commit
    )


def _check_offsets(batch_id: int, logged: Ranges, rows: Ranges) -> None:
    """Log where the batch's rows and the checkpoint's offset ranges disagree (never expected; it would mean the
    commits' ``userMetadata`` names offsets the rows do not have)."""
    unlike = differences(logged, rows)
    if unlike:
        logger.warning("batch %d: the checkpoint's offsets and the rows' differ: %s", batch_id, unlike)


def _other_writes(
    judged: DataFrame,
    outcomes: Outcomes,
    *,
    entity: EntitySpec,
    tables: SilverTables,
    ledger: CommitLedger,
    batch_id: int,
    flag: Flags | None,
) -> list[Callable[[], object]]:
    """The flags', quarantine's and dropped's appends, for the tables that get rows: an empty write would still
    cost a job (and, for a table Delta does not skip, a commit), and skipping it is as deterministic (a replayed
    batch gets the same counts). The flags' rows are the flagged records the outcomes brought to the driver, a
    frame Spark reads without a scan of the batch."""
    counts = outcomes.counts
    writes: list[Callable[[], object]] = []
    if flag is not None and counts.get("flagged") and outcomes.flags is not None:
        writes.append(partial(_flag, flag, partial(_local_rows, judged.sparkSession, outcomes.flags), batch_id))
    for name, rows, uri in (
        ("quarantine", quarantine_rows, tables.quarantine),
        ("dropped", dropped_rows, tables.dropped),
    ):
        if counts[name]:
            frame = partial(rows, judged, entity=entity, batch_id=batch_id)
            writes.append(partial(_append, ledger, frame, uri, batch_id, merge_schema=True, append_only=True))
    return writes


# Each append builds its rows' plan in its own thread, beside the others: silver's append need not wait for the
# plans of the flags and the rest (each step of a plan is analysed in full by Spark, some 20 ms on 2 cores).


def _append(ledger: CommitLedger, rows: Callable[[], DataFrame], uri: str, batch_id: int, **options: Any) -> bool:
    return ledger.append(rows(), uri, batch_id, **options)


def _flag(flag: Flags, rows: Callable[[], DataFrame], batch_id: int) -> object:
    return flag.write(rows(), batch_id)


def _local_rows(spark: SparkSession, rows: pa.Table) -> DataFrame:
    """``rows`` (a few hundred, from the driver) as a frame of one partition: one task and one file per day, where
    Spark would split them over the cores and each task would wait on its own upload."""
    return spark.createDataFrame(rows).coalesce(1)


def _log_batch(entity: str, batch_id: int, counts: dict[str, int], *, judged_s: float, written_s: float) -> None:
    """One line per batch: its counts and where its time went (judging: the facts and the history's probe; then
    the appends, silver's with the others, bronze's ending last or not), the entity in ``extra`` so the line joins
    with the catalog."""
    logger.info(
        "silver %s batch %d: %s (judged in %.1f s, written in %.1f s)",
        entity,
        batch_id,
        counts,
        judged_s,
        written_s,
        extra={"entity": entity, "batch_id": batch_id, "judged_s": judged_s, "written_s": written_s},
    )
