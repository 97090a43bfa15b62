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
commit (:class:`pipelines.ingest.recent_ids.RecentIds`): a batch reads no silver file. A batch is one round of appends:
silver's, which judges the batch, caches it and counts its outcomes as it goes (Spark's observed metrics), with
bronze's and the flags' beside it; then quarantine's and dropped's where they get rows (:func:`process_batch`).
Gold is a query of its own that reads silver (``pipelines.ingest.gold``), so a silver batch never waits for gold.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

from pipelines.ingest.high_water import HighWater, from_micros
from pipelines.ingest.ledger import CommitLedger
from pipelines.ingest.offsets import Ranges, differences
from pipelines.ingest.recent_ids import SEEN_ID, SEEN_TIME, RecentIds
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


def _then_remember(
    append: Callable[[], bool],
    history: RecentIds,
    *,
    batch_id: int,
    ids: DataFrame,
    mark: datetime | None,
    after_commit: Callable[[], None] | None,
) -> bool:
    """Silver's append, then its rows' ids into the duplicate check's history (beside bronze's and the flags'
    appends; a replayed batch that silver holds adds the same ids its first attempt committed), then
    ``after_commit`` if it committed (silver's log checkpoint, :mod:`pipelines.ingest.log_checkpoints`)."""
    written = append()
    history.add(batch_id, ids, mark)
    if written and after_commit is not None:
        after_commit()
    return written


def _new_ids(judged: DataFrame, entity: EntitySpec) -> DataFrame:
    """The ids and event times of a judged batch's silver rows (:class:`RecentIds` frames)."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    return judged.where(F.col("rule").isNull() & F.col("dropped").isNull()).select(
        F.col(f"_rec.`{entity.event_id}`").alias(SEEN_ID), F.col(f"_rec.`{entity.event_time}`").alias(SEEN_TIME)
    )


def judge(
    classified: DataFrame,
    *,
    entity: EntitySpec,
    seen: DataFrame | None,
    high_water: datetime | None,
) -> DataFrame:
    """Add the history rules: ``late_event`` (rule) and ``duplicate_event_id`` (column ``dropped``).

    ``high_water``: the highest event time of earlier batches (:meth:`HighWater.before`); None, no lateness.
    ``seen``: the ids (``_seen_id``, once each) silver holds from earlier batches within two watermarks of it
    (:class:`pipelines.ingest.recent_ids.RecentIds`, or :func:`pipelines.ingest.recent_ids.silver_ids`); None, none.
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
    if seen is None:
        judged = judged.withColumn("_seen_id", F.lit(None).cast("string"))
    else:
        judged = judged.join(seen.select(SEEN_ID), judged["_rec"][entity.event_id] == F.col(SEEN_ID), "left")
    duplicate = is_valid & ((F.col("_rank") > 1) | F.col("_seen_id").isNotNull())
    return judged.withColumn("dropped", F.when(duplicate, F.lit("duplicate_event_id")))


def silver_rows(judged: DataFrame, *, entity: EntitySpec, batch_id: int) -> DataFrame:
    """The rows of a judged batch that go to silver (no rule broken, not a duplicate)."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    return judged.where(F.col("rule").isNull() & F.col("dropped").isNull()).select(
        *(F.col(f"_rec.`{name}`").alias(name) for name in entity.field_names),
        "extra_fields",
        *SOURCE_COLUMNS,
        F.current_timestamp().alias("silver_time"),
        F.lit(batch_id).alias("_batch_id"),
        F.to_date(F.col(f"_rec.`{entity.event_time}`")).alias(catalog.EVENT_DAY),  # the partition (UTC day)
    )


def quarantine_rows(judged: DataFrame, *, entity: EntitySpec, batch_id: int) -> DataFrame:
    """The rows of a judged batch that broke a rule, with the rule and the error."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    return judged.where(F.col("rule").isNotNull()).select(
        F.lit(entity.name).alias("entity"),
        "rule",
        "error",
        *SOURCE_COLUMNS,
        "key",
        "value",
        F.current_timestamp().alias("quarantined_at"),
        F.lit(batch_id).alias("_batch_id"),
        F.lit(False).alias("replayed"),
    )


def dropped_rows(judged: DataFrame, *, entity: EntitySpec, batch_id: int) -> DataFrame:
    """The valid rows of a judged batch that repeat an event id, with the reason."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    return judged.where(F.col("rule").isNull() & F.col("dropped").isNotNull()).select(
        F.col("dropped").alias("reason"),
        F.col(f"_rec.`{entity.event_id}`").alias("event_id"),
        *SOURCE_COLUMNS,
        F.current_timestamp().alias("dropped_at"),
        F.lit(batch_id).alias("_batch_id"),
    )


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
    with its outcomes. ``write``: appends the flags of the batch's silver rows (rows, batch id), once per batch (the
    ledger), beside silver's append and without a count first: a batch with nothing to flag commits nothing (Delta
    skips a blind append that adds no file).
    """

    rule: Callable[[str], Column]
    write: Callable[[DataFrame, int], object]


@dataclass(frozen=True)
class BatchSummary:
    """Rows per outcome of a judged batch, silver's highest event time, and the Kafka offsets it covers."""

    counts: dict[str, int]
    high: datetime | None
    offsets: dict[str, dict[int, tuple[int, int]]]  # topic -> partition -> (first, last offset)
    elsewhere: int = 0  # rows of partitions the checkpoint's ranges did not name (observe_outcomes)


def outcome_counts(judged: DataFrame, *, entity: EntitySpec, flag_rule: Column | None = None) -> BatchSummary:
    """Rows per outcome, silver's highest event time and each partition's offset range, in one pass; with
    ``flag_rule`` (true for a row to flag, on the record struct ``_rec``), also the silver rows it flags
    (``flagged`` in the counts).

    The event time is taken as microseconds of silver rows only: any value a rule quarantined (a year 58899, say)
    never reaches a Python datetime, so no value in a batch can stop it.
    """
    from pyspark.sql import functions as F  # noqa: PLC0415

    outcome = _outcome()
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


def observe_outcomes(
    judged: DataFrame, *, entity: EntitySpec, offsets: Ranges, flag_rule: Column | None, name: str
) -> tuple[DataFrame, Callable[[], BatchSummary]]:
    """What :func:`outcome_counts` tells, taken by the job that reads the judged batch anyway (silver's append):
    ``judged`` with Spark's observed metrics (``DataFrame.observe``) on every row, before silver's filter, and the
    summary they give once that job has run (it waits for them: call it only after the job ran).

    The offset ranges cannot be grouped in a metric, but the checkpoint has named the batch's partitions already
    (``offsets``): each gets its lowest and highest offset, and rows of any other partition are counted, so
    :func:`differences` still catches a batch whose rows and log disagree. One Spark job per batch fewer.
    """
    from pyspark.sql import Observation  # noqa: PLC0415

    known = [(topic, partition) for topic, parts in sorted(offsets.items()) for partition in sorted(parts)]
    # The metrics are the same expressions every batch of a query (its partitions rarely change): built once, as
    # building them cost about 0.1 s of a live batch in calls to the JVM.
    key = (judged.sparkSession.sparkContext.applicationId, entity.name, tuple(known), flag_rule is not None)
    if key not in _METRICS:
        _METRICS[key] = _outcome_metrics(entity, known, flag_rule)
    observation = Observation(name)
    observed = judged.observe(observation, *_METRICS[key])

    def summary() -> BatchSummary:
        values = observation.get
        counts = {key: int(values[key]) for key in ("silver", "quarantine", "dropped")}
        if flag_rule is not None:
            counts["flagged"] = int(values["flagged"])
        seen: Ranges = {}
        for index, (topic, partition) in enumerate(known):
            if values[f"first_{index}"] is not None:
                seen.setdefault(topic, {})[partition] = (int(values[f"first_{index}"]), int(values[f"last_{index}"]))
        high = values["high"]
        return BatchSummary(
            counts, from_micros(int(high)) if high is not None else None, seen, elsewhere=int(values["elsewhere"])
        )

    return observed, summary


_METRICS: dict[tuple[str, str, tuple[tuple[str, int], ...], bool], list[Column]] = {}


def _outcome_metrics(entity: EntitySpec, known: list[tuple[str, int]], flag_rule: Column | None) -> list[Column]:
    """The observed metrics of :func:`observe_outcomes` for a batch of partitions ``known``."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    outcome = _outcome()
    flagged = flag_rule if flag_rule is not None else F.lit(False)
    place = [(F.col("topic") == topic) & (F.col("partition") == partition) for topic, partition in known]
    metrics = [
        *(F.count(F.when(outcome == name, F.lit(1))).alias(name) for name in ("silver", "quarantine", "dropped")),
        F.count(F.when((outcome == "silver") & flagged, F.lit(1))).alias("flagged"),
        F.max(F.when(outcome == "silver", F.unix_micros(F.col(f"_rec.`{entity.event_time}`")))).alias("high"),
        F.count(F.when(~_any(place), F.lit(1))).alias("elsewhere"),
    ]
    for index, where in enumerate(place):
        metrics += [
            F.min(F.when(where, F.col("offset"))).alias(f"first_{index}"),
            F.max(F.when(where, F.col("offset"))).alias(f"last_{index}"),
        ]
    return metrics


def _outcome() -> Column:
    """Where a judged row goes: ``quarantine`` (it broke a rule), ``dropped`` (a repeated id) or ``silver``."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    return (
        F.when(F.col("rule").isNotNull(), F.lit("quarantine"))
        .when(F.col("dropped").isNotNull(), F.lit("dropped"))
        .otherwise(F.lit("silver"))
    )


def _any(conditions: Sequence[Column]) -> Column:
    from pyspark.sql import functions as F  # noqa: PLC0415

    result = F.lit(False)
    for condition in conditions:
        result = result | condition
    return result


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
    """One micro-batch, classified by the rules (:func:`pipelines.ingest.rules.classify`): judge it against history,
    write the tables idempotently. Returns the row counts.

    Silver first: its append is the job that judges the batch (the rules' results, the duplicate window, the join
    against silver's recent ids, ``history``), fills the batch's cache and counts the outcomes as it goes (Spark's
    observed metrics, :func:`observe_outcomes`); then its rows' ids join ``history``. It runs with the ``alongside``
    writes (the ingest query's bronze append, called with ``classified``: the Kafka columns, which need no judging)
    and with ``flag``'s (the EV anomalies). Only then are the tables that get rows appended: quarantine and dropped,
    rare in a healthy stream. Freshness waits for silver's commit alone; a live batch is one round of appends (it
    was a judging and counting job, then silver, then the flags).

    ``after_commit``: called after silver's commit, beside the other appends (the ingest query's log checkpoints:
    with it, a silver table this creates leaves its log checkpoints to it). ``offsets``: the batch's Kafka offset
    ranges, which every commit records (``userMetadata``), from the query's checkpoint
    (:class:`pipelines.ingest.offsets.CheckpointOffsets`). None: the batch's rows are counted first and give them.
    Each table's append is exactly once on its own (the ledger), so their order does not matter; a silver append of
    a batch whose rows all went elsewhere commits no file.
    """
    spark = classified.sparkSession
    planning = time.monotonic()
    mark = high_water.before(batch_id)
    # Filled by silver's append, then read by the other tables' appends (and the counts, if any).
    judged = judge(classified, entity=entity, seen=history.seen(batch_id, mark), high_water=mark).persist()
    rule = flag.rule("_rec") if flag is not None else None
    try:
        began = time.monotonic()
        plan_s = began - planning
        if offsets is None:  # the commits need the offsets: the rows give them, judged and counted first
            counted: BatchSummary | None = outcome_counts(judged, entity=entity, flag_rule=rule)
            watched, observed = judged, None
        else:  # silver's append counts the outcomes as it goes
            counted, name = None, f"ingest_{entity.name}_{batch_id}_{uuid.uuid4().hex[:8]}"
            watched, observed = observe_outcomes(judged, entity=entity, offsets=offsets, flag_rule=rule, name=name)
        ledger.describe(batch_id, commit_metadata(entity.name, batch_id, counted.offsets if counted else offsets or {}))
        silver_append = partial(
            ledger.append,
            silver_rows(watched, entity=entity, batch_id=batch_id),
            tables.silver,
            batch_id,
            merge_schema=True,
            partition_by=catalog.EVENT_DAY,
            # A new silver's log checkpoints are written beside the batches (after_commit), not inside a commit.
            append_only=after_commit is not None,
        )
        first: list[Callable[[], object]] = [
            partial(
                _then_remember,
                silver_append,
                history,
                batch_id=batch_id,
                ids=_new_ids(judged, entity),
                mark=mark,
                after_commit=after_commit,
            ),
            *(partial(write, classified) for write in alongside),
            # The flags beside silver (they used to wait for the counts): the judged rows, without the metrics.
            *([partial(flag.write, silver_rows(judged, entity=entity, batch_id=batch_id), batch_id)] if flag else []),
        ]
        silver_written = run_together(spark, "ingest", first, lead_pool="silver")[0]
        silver_s = time.monotonic() - began
        if counted is not None:
            summary = counted
        else:
            # A replayed batch whose silver was committed before ran no job to observe: its rows are counted.
            if observed is not None and silver_written:
                summary = observed()
            else:
                summary = outcome_counts(judged, entity=entity, flag_rule=rule)
            _check_offsets(batch_id, offsets or {}, summary)
        counts = summary.counts
        run_together(
            spark,
            "ingest",
            _other_writes(judged, counts, entity=entity, tables=tables, ledger=ledger, batch_id=batch_id),
        )
        high_water.record(batch_id, summary.high)
    finally:
        judged.unpersist()
    _log_batch(
        entity.name, batch_id, counts, plan_s=plan_s, silver_s=silver_s, rest_s=time.monotonic() - began - silver_s
    )
    return counts


def _check_offsets(batch_id: int, logged: Ranges, summary: BatchSummary) -> None:
    """Log where the batch's rows and the checkpoint's offset ranges disagree (never expected; it would mean the
    commits' ``userMetadata`` names offsets the rows do not have)."""
    unlike = differences(logged, summary.offsets)
    if summary.elsewhere:
        unlike.append(f"{summary.elsewhere} rows of partitions the checkpoint does not name")
    if unlike:
        logger.warning("batch %d: the checkpoint's offsets and the rows' differ: %s", batch_id, unlike)


def _other_writes(
    judged: DataFrame,
    counts: dict[str, int],
    *,
    entity: EntitySpec,
    tables: SilverTables,
    ledger: CommitLedger,
    batch_id: int,
) -> list[Callable[[], object]]:
    """The quarantine and dropped appends, for the tables that get rows: an empty write would still cost a job
    and a commit, and skipping it is as deterministic."""
    writes: list[Callable[[], object]] = []
    for name, rows, uri in (
        ("quarantine", quarantine_rows, tables.quarantine),
        ("dropped", dropped_rows, tables.dropped),
    ):
        if counts[name]:
            frame = rows(judged, entity=entity, batch_id=batch_id)
            writes.append(partial(ledger.append, frame, uri, batch_id, merge_schema=True, append_only=True))
    return writes


def _log_batch(
    entity: str, batch_id: int, counts: dict[str, int], *, plan_s: float, silver_s: float, rest_s: float
) -> None:
    """One line per batch: its counts and where its time went (planning; silver's append, which judges the batch,
    with bronze's; the counts and the other appends), the entity in ``extra`` so the line joins with the catalog."""
    logger.info(
        "silver %s batch %d: %s (plan %.1f s, silver and bronze %.1f s, counts and the rest %.1f s)",
        entity,
        batch_id,
        counts,
        plan_s,
        silver_s,
        rest_s,
        extra={"entity": entity, "batch_id": batch_id, "plan_s": plan_s, "silver_s": silver_s, "rest_s": rest_s},
    )
