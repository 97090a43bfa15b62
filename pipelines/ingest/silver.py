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
is opened, so purged days are not needed), and the duplicate check reads only silver files whose event times reach
within two watermarks of that mark (Delta skips the rest by their statistics). A batch is a handful of Spark jobs:
the rules and history in one pass (counts per outcome), then the appends of the tables that get rows, at the same
time.
Gold is a query of its own that reads silver (``pipelines.ingest.gold``), so a silver batch never waits for gold.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

from pipelines.ingest.high_water import HighWater, from_micros
from pipelines.ingest.ledger import CommitLedger
from pipelines.session import run_together
from tierlake import catalog
from tierlake.config import Settings
from tierlake.entities import EntitySpec
from tierlake.errors import ConfigError

if TYPE_CHECKING:
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


def judge(
    spark: SparkSession,
    classified: DataFrame,
    *,
    entity: EntitySpec,
    silver_uri: str,
    batch_id: int,
    high_water: datetime | None,
) -> DataFrame:
    """Add the history rules: ``late_event`` (rule) and ``duplicate_event_id`` (column ``dropped``).

    ``high_water``: the highest event time of earlier batches (:meth:`HighWater.before`); None, no lateness.
    """
    from pyspark.sql import Window  # noqa: PLC0415
    from pyspark.sql import functions as F  # noqa: PLC0415

    ts, eid = F.col(f"_rec.`{entity.event_time}`"), F.col(f"_rec.`{entity.event_id}`")
    watermark = F.expr(f"INTERVAL {entity.watermark_s} SECONDS")
    # As in Spark's own watermark, the high-water mark comes from earlier batches only: a batch spanning more
    # event time than the watermark is not late, and a replayed batch sees the same mark as its first attempt.
    late = F.lit(False) if high_water is None else ts < F.lit(high_water) - watermark
    judged = classified.withColumn(
        "rule", F.when(F.col("rule").isNull() & late, F.lit("late_event")).otherwise(F.col("rule"))
    ).withColumn(
        "error",
        F.when(
            F.col("rule") == "late_event",
            F.concat(
                F.lit(f"{entity.event_time}="),
                ts.cast("string"),
                F.lit(f" is more than {entity.watermark_s} s before the high-water mark {high_water}"),
            ),
        ).otherwise(F.col("error")),
    )
    # The first copy of an id is the one Kafka received first (its timestamp), then partition and offset: a
    # pure function of the records, so a replayed batch keeps the same copy.
    first = Window.partitionBy(eid).orderBy("kafka_timestamp", "partition", "offset")
    is_valid = F.col("rule").isNull()
    judged = judged.withColumn("_rank", F.when(is_valid, F.row_number().over(first)))
    if high_water is None:
        # No earlier batch put a row in silver (every silver row has an event time), so nothing to be a copy of.
        judged = judged.withColumn("_seen_id", F.lit(None).cast("string"))
    else:
        # A row still valid here is not late: its event time is at least high_water - watermark. Its earlier
        # copies are looked for among silver rows of earlier batches from one more watermark back; Delta skips
        # every file whose event times end before that by its statistics.
        seen = (
            spark.read.format("delta")
            .load(silver_uri)
            .where(
                (F.col("_batch_id") < batch_id)
                & (F.col(entity.event_time) >= F.lit(high_water) - watermark - watermark)
            )
            .select(F.col(entity.event_id).alias("_seen_id"))
            .distinct()
        )
        judged = judged.join(seen, judged["_rec"][entity.event_id] == F.col("_seen_id"), "left")
    duplicate = is_valid & ((F.col("_rank") > 1) | F.col("_seen_id").isNotNull())
    return judged.withColumn("dropped", F.when(duplicate, F.lit("duplicate_event_id")))


def outputs(judged: DataFrame, *, entity: EntitySpec, batch_id: int) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Split a judged batch into its silver, quarantine and dropped rows (disjoint, together the whole batch)."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    now = F.current_timestamp()
    source = [F.col(c) for c in SOURCE_COLUMNS]
    silver = judged.where(F.col("rule").isNull() & F.col("dropped").isNull()).select(
        *(F.col(f"_rec.`{name}`").alias(name) for name in entity.field_names),
        "extra_fields",
        *source,
        now.alias("silver_time"),
        F.lit(batch_id).alias("_batch_id"),
        F.to_date(F.col(f"_rec.`{entity.event_time}`")).alias(catalog.EVENT_DAY),  # the partition (UTC day)
    )
    quarantine = judged.where(F.col("rule").isNotNull()).select(
        F.lit(entity.name).alias("entity"),
        "rule",
        "error",
        *source,
        "key",
        "value",
        now.alias("quarantined_at"),
        F.lit(batch_id).alias("_batch_id"),
        F.lit(False).alias("replayed"),
    )
    dropped = judged.where(F.col("rule").isNull() & F.col("dropped").isNotNull()).select(
        F.col("dropped").alias("reason"),
        F.col(f"_rec.`{entity.event_id}`").alias("event_id"),
        *source,
        now.alias("dropped_at"),
        F.lit(batch_id).alias("_batch_id"),
    )
    return silver, quarantine, dropped


@dataclass(frozen=True)
class Flags:
    """Rows an ingest batch flags beside its silver rows (EV anomalies, ``pipelines.ingest.gold_ev``).

    ``rule``: given the name of the judged batch's record struct, true for a row to flag; the batch counts them
    with its outcomes. ``write``: appends the flags of the batch's silver rows (rows, batch id, how many were
    counted), once per batch (the ledger).
    """

    rule: Callable[[str], Column]
    write: Callable[[DataFrame, int, int], object]


@dataclass(frozen=True)
class BatchSummary:
    """Rows per outcome of a judged batch, silver's highest event time, and the Kafka offsets it covers."""

    counts: dict[str, int]
    high: datetime | None
    offsets: dict[str, dict[int, tuple[int, int]]]  # topic -> partition -> (first, last offset)


def outcome_counts(judged: DataFrame, *, entity: EntitySpec, flag_rule: Column | None = None) -> BatchSummary:
    """Rows per outcome, silver's highest event time and each partition's offset range, in one pass; with
    ``flag_rule`` (true for a row to flag, on the record struct ``_rec``), also the silver rows it flags
    (``flagged`` in the counts).

    The event time is taken as microseconds of silver rows only: any value a rule quarantined (a year 58899, say)
    never reaches a Python datetime, so no value in a batch can stop it.
    """
    from pyspark.sql import functions as F  # noqa: PLC0415

    outcome = (
        F.when(F.col("rule").isNotNull(), F.lit("quarantine"))
        .when(F.col("dropped").isNotNull(), F.lit("dropped"))
        .otherwise(F.lit("silver"))
    )
    silver_time = F.when(outcome == "silver", F.unix_micros(F.col(f"_rec.`{entity.event_time}`")))
    flagged = flag_rule if flag_rule is not None else F.lit(False)
    rows = (
        judged.groupBy(outcome.alias("outcome"), "topic", "partition")
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.max(silver_time).alias("high"),
            F.min("offset").alias("first"),
            F.max("offset").alias("last"),
            F.count(F.when((outcome == "silver") & flagged, F.lit(1))).alias("flagged"),
        )
        .collect()
    )
    counts = dict.fromkeys(("silver", "quarantine", "dropped", *(("flagged",) if flag_rule is not None else ())), 0)
    offsets: dict[str, dict[int, tuple[int, int]]] = {}
    highs = []
    for row in rows:
        counts[row["outcome"]] += int(row["rows"])
        if flag_rule is not None:
            counts["flagged"] += int(row["flagged"])
        if row["high"] is not None:
            highs.append(int(row["high"]))
        part = offsets.setdefault(row["topic"], {})
        first, last = part.get(row["partition"], (row["first"], row["last"]))
        part[int(row["partition"])] = (min(first, row["first"]), max(last, row["last"]))
    return BatchSummary(counts, from_micros(max(highs)) if highs else None, offsets)


def commit_metadata(entity: str, batch_id: int, offsets: dict[str, dict[int, tuple[int, int]]]) -> str:
    """What each Delta commit of an ingest batch says about itself (``userMetadata`` in the table's history)."""
    ranges = {topic: {str(p): [lo, hi] for p, (lo, hi) in sorted(parts.items())} for topic, parts in offsets.items()}
    return json.dumps({"writer": "tierlake", "query": f"ingest_{entity}", "batch_id": batch_id, "offsets": ranges})


def table_writes(
    frames: tuple[DataFrame, DataFrame, DataFrame],
    counts: dict[str, int],
    *,
    tables: SilverTables,
    ledger: CommitLedger,
    batch_id: int,
) -> list[Callable[[], object]]:
    """The appends of a batch's silver, quarantine and dropped rows, for the tables that get rows: an empty write
    would still cost a job and a commit, and skipping it is as deterministic."""
    uris = (tables.silver, tables.quarantine, tables.dropped)
    days = (catalog.EVENT_DAY, None, None)  # silver by event day (catalog.day_layout); the others stay small
    return [
        partial(ledger.append, frame, uri, batch_id, merge_schema=True, partition_by=day, append_only=name != "silver")
        for name, frame, uri, day in zip(("silver", "quarantine", "dropped"), frames, uris, days, strict=True)
        if counts[name]
    ]


def process_batch(
    classified: DataFrame,
    batch_id: int,
    *,
    entity: EntitySpec,
    tables: SilverTables,
    high_water: HighWater,
    ledger: CommitLedger,
    flag: Flags | None = None,
    alongside: Sequence[Callable[[DataFrame], object]] = (),
) -> dict[str, int]:
    """One micro-batch, classified by the rules (:func:`pipelines.ingest.rules.classify`): judge it against history,
    write the three tables idempotently. Returns the row counts.

    ``flag``: the flags written beside silver (EV anomalies), counted with the outcomes (``flagged`` in the counts)
    and appended with the tables when there are any.
    ``alongside``: other writes of the batch (the ingest query's bronze append), run with this batch's appends and
    called with the judged batch: every row and column of ``classified`` (plus the judgement), already cached.
    The appends run at the same time (:func:`pipelines.session.run_together`), once the counts have read the
    batch; each table's append is exactly once on its own (the ledger), so their order does not matter.
    """
    planning = time.monotonic()
    judged = judge(
        classified.sparkSession,
        classified,
        entity=entity,
        silver_uri=tables.silver,
        batch_id=batch_id,
        high_water=high_water.before(batch_id),
    ).persist()  # computed once by the counts, then read by each table's write
    try:
        frames = outputs(judged, entity=entity, batch_id=batch_id)
        began = time.monotonic()
        plan_s = began - planning
        summary = outcome_counts(judged, entity=entity, flag_rule=flag.rule("_rec") if flag is not None else None)
        counts, high = summary.counts, summary.high
        ledger.describe(batch_id, commit_metadata(entity.name, batch_id, summary.offsets))
        judged_s = time.monotonic() - began
        writes = table_writes(frames, counts, tables=tables, ledger=ledger, batch_id=batch_id)
        if flag is not None and counts["flagged"]:
            writes.append(partial(flag.write, frames[0], batch_id, counts["flagged"]))
        writes += [partial(write, judged) for write in alongside]
        run_together(classified.sparkSession, "ingest", writes)
        high_water.record(batch_id, high)
    finally:
        judged.unpersist()
    _log_batch(
        entity.name, batch_id, counts, plan_s=plan_s, judged_s=judged_s, writes_s=time.monotonic() - began - judged_s
    )
    return counts


def _log_batch(
    entity: str, batch_id: int, counts: dict[str, int], *, plan_s: float, judged_s: float, writes_s: float
) -> None:
    """One line per batch: its counts and where its time went (planning, rules and history, writes), the entity
    in ``extra`` so the line joins with the catalog."""
    logger.info(
        "silver %s batch %d: %s (plan %.1f s, rules and history %.1f s, writes %.1f s)",
        entity,
        batch_id,
        counts,
        plan_s,
        judged_s,
        writes_s,
        extra={"entity": entity, "batch_id": batch_id, "plan_s": plan_s, "judge_s": judged_s, "writes_s": writes_s},
    )
