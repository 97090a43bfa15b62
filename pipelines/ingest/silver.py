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
within two watermarks of that mark (Delta skips the rest by their statistics). A batch is one round of appends:
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
from typing import TYPE_CHECKING, Any

from pipelines.ingest.high_water import HighWater, from_micros
from pipelines.ingest.ledger import CommitLedger
from pipelines.ingest.offsets import Ranges, differences
from pipelines.session import run_together
from tierlake import catalog
from tierlake.config import Settings
from tierlake.entities import EntitySpec
from tierlake.errors import ConfigError, first_line

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


def latest_version(spark: SparkSession, uri: str) -> int:
    """The table's latest version, from Delta's own log of it in this JVM (brought up to date: one listing of
    ``_delta_log``, no Spark job; ``DeltaTable.history`` ran one).

    The duplicate check reads silver pinned to it. Spark re-plans every cached plan that reads a table after each
    write to it (``SaveIntoDataSourceCommand`` calls ``recacheByPlan`` with the relation Delta returns), and the
    judged batch is cached while silver's append runs: with an unpinned read, each silver commit made Spark re-plan
    the judged batch (two Delta jobs on the new snapshot, about 1.3 s at load 3 before the batch could end) and
    threw its cache away, so quarantine's and dropped's appends after it judged the batch again. A read pinned to a
    version is another relation to Spark, so the cache stands; it holds the same rows, as every batch before this
    one committed before it started. The new snapshot's file list, which that re-plan used to build, is built right
    after silver's append instead (:func:`warm_snapshot`); docs/decisions.md has the A/B.
    """
    try:
        return int(_updated_snapshot(spark, uri).version())
    except Exception:  # a changed internal signature: the public history says the same, with a job
        from delta.tables import DeltaTable  # noqa: PLC0415

        row = DeltaTable.forPath(spark, uri).history(1).select("version").first()
        assert row is not None  # only asked of a table with rows (the duplicate check runs after the first batch)
        return int(row[0])


def warm_snapshot(spark: SparkSession, uri: str) -> None:
    """Build the table's newest snapshot (its file list, from the log) now; best effort.

    Called right after silver's append, while bronze's and the flags' appends still run: the next batch's duplicate
    check reads silver as of that snapshot (:func:`latest_version`), and would otherwise build it while planning,
    before any of its records is touched (about 0.35 s of a live batch at load 3).
    """
    try:
        _updated_snapshot(spark, uri).allFiles().count()
    except Exception as exc:  # the next batch builds it itself
        logger.debug("snapshot of %s not built ahead: %s", uri, first_line(exc))


def _updated_snapshot(spark: SparkSession, uri: str) -> Any:
    """Delta's newest snapshot of the table in this JVM (``DeltaLog.update``: one listing of ``_delta_log``)."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    none = jvm.scala.Option.empty()
    return jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, uri).update(False, none, none)


def _then_warm(append: Callable[[], bool], spark: SparkSession, uri: str) -> bool:
    """Silver's append, then its new snapshot built for the next batch (:func:`warm_snapshot`)."""
    written = append()
    warm_snapshot(spark, uri)
    return written


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
            .option("versionAsOf", latest_version(spark, silver_uri))  # see latest_version: no re-plan per commit
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
    from pyspark.sql import functions as F  # noqa: PLC0415

    outcome = _outcome()
    flagged = flag_rule if flag_rule is not None else F.lit(False)
    known = [(topic, partition) for topic, parts in sorted(offsets.items()) for partition in sorted(parts)]
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
    observation = Observation(name)
    observed = judged.observe(observation, *metrics)

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
    ledger: CommitLedger,
    flag: Flags | None = None,
    alongside: Sequence[Callable[[DataFrame], object]] = (),
    offsets: Ranges | None = None,
) -> dict[str, int]:
    """One micro-batch, classified by the rules (:func:`pipelines.ingest.rules.classify`): judge it against history,
    write the tables idempotently. Returns the row counts.

    Silver first: its append is the job that judges the batch (the rules' results, the duplicate window, the join
    against silver's recent ids), fills the batch's cache and counts the outcomes as it goes (Spark's observed
    metrics, :func:`observe_outcomes`). It runs with the ``alongside`` writes (the ingest query's bronze append,
    called with ``classified``: the Kafka columns, which need no judging) and with ``flag``'s (the EV anomalies).
    Only then are the tables that get rows appended: quarantine and dropped, rare in a healthy stream. Freshness
    waits for silver's commit alone; a live batch is one round of appends (it was a judging and counting job, then
    silver, then the flags).

    ``offsets``: the batch's Kafka offset ranges, which every commit records (``userMetadata``), from the query's
    checkpoint (:class:`pipelines.ingest.offsets.CheckpointOffsets`). None: the batch's rows are counted first and
    give them. Each table's append is exactly once on its own (the ledger), so their order does not matter; a silver
    append of a batch whose rows all went elsewhere commits no file.
    """
    spark = classified.sparkSession
    planning = time.monotonic()
    judged = judge(
        spark,
        classified,
        entity=entity,
        silver_uri=tables.silver,
        batch_id=batch_id,
        high_water=high_water.before(batch_id),
    ).persist()  # filled by silver's append, then read by the other tables' appends (and the counts, if any)
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
        )
        first: list[Callable[[], object]] = [
            partial(_then_warm, silver_append, spark, tables.silver),
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
