"""gold for EV telemetry: per-station windows (1 and 15 minutes) and anomaly flags, per batch of new silver rows.

Windows: for every (station, window) that a batch touches, the window is recomputed from silver and upserted
(MERGE on station, window length, window start), so a replayed batch rewrites the same rows: idempotent. Only
silver files whose event times overlap the touched windows are read (Delta skips the others by their statistics).
- ``energy_kwh``: power integrated over time, each sample held until the station's next one (at most 60 s);
- ``mean_power_kw``, ``max_power_kw``, ``samples``;
- ``sessions``: starts of charging (a ``charging`` sample whose previous sample of the station was not).

Anomalies, one row per flagged event with a ``score`` in [0, 1] and a ``reason``:
- ``overheating``: ``temp_c`` above 80 °C (score grows to 1 at 110 °C);
- ``dropout``: ``power_kw`` 0 with status ``dropout`` mid-session;
- ``power_spike``: ``power_kw`` above 400 kW, beyond what the chargers are rated for (score grows to 1 at 700 kW).
Thresholds are physical limits, not statistics, so one reading suffices: the ingest batch that puts a reading in
silver flags it (:func:`append_anomalies`, called from ``pipelines.ingest.silver.process_batch``), so a flag is visible
when its reading is, not a gold batch later. Flags carry the ingest batch id (``_batch_id``) and go through the
same commit ledger as silver, so a replayed batch writes them once. ``flagged_at`` is when the batch flagged them,
just before their append; the commit that makes them visible comes after it (``pipelines.checks.freshness``
measures to it).
``replay-quarantine`` flags the records it moves into silver (:func:`append_replayed_anomalies`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pipelines.session import built
from tierlake import catalog

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from pipelines.ingest.ledger import CommitLedger

WINDOWS_MIN = (1, 15)
HOLD_CAP_S = 60
OVERHEAT_C, OVERHEAT_MAX_C = 80.0, 110.0
SPIKE_KW, SPIKE_MAX_KW = 400.0, 700.0


def gold_paths(lake_bucket: str, entity: str) -> tuple[str, str]:
    return catalog.gold_windows(lake_bucket, entity).s3a, catalog.gold_anomalies(lake_bucket, entity).s3a


def anomaly_reason(field: Callable[[str], Column]) -> Column:
    """Why a reading is flagged (null: it is not), from its fields as ``field(name)`` gives them: the same rule
    for silver's columns (:func:`anomalies`) and for a judged batch's record (:func:`flag_rule`)."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    return (
        F.when(field("temp_c") > OVERHEAT_C, F.lit("overheating"))
        .when(field("power_kw") > SPIKE_KW, F.lit("power_spike"))
        .when((field("status") == "dropout") & (field("power_kw") == 0), F.lit("dropout"))
    )


def flag_rule(record: str) -> Column:
    """True for the readings :func:`anomalies` flags, on a judged batch's record struct ``record``: the ingest batch
    counts its flags with its other outcomes (``pipelines.ingest.outcomes``) and appends flags only when it has
    some."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    return anomaly_reason(lambda name: F.col(f"{record}.`{name}`")).isNotNull()


def anomalies(silver_rows: DataFrame) -> DataFrame:
    """Flag events of a batch: event_id, station_id, ts, score, reason, temp_c, power_kw."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    def columns() -> tuple[Column, list[Column | str]]:
        def ramp(value: str, low: float, high: float) -> Column:
            return F.least(F.lit(1.0), F.greatest(F.lit(0.0), (F.col(value) - low) / (high - low))) * 0.5 + 0.5

        score = (
            F.when(F.col("temp_c") > OVERHEAT_C, ramp("temp_c", OVERHEAT_C, OVERHEAT_MAX_C))
            .when(F.col("power_kw") > SPIKE_KW, ramp("power_kw", SPIKE_KW, SPIKE_MAX_KW))
            .when(F.col("status") == "dropout", F.lit(0.6))
        )
        reason = anomaly_reason(F.col)
        return reason.isNotNull(), [
            *("event_id", "station_id", "ts"),
            F.round(score, 3).alias("score"),
            reason.alias("reason"),
            *("temp_c", "power_kw"),
            F.to_date("ts").alias(catalog.EVENT_DAY),  # the partition (catalog.day_layout)
        ]

    # Built once per application (pipelines.session.built): an ingest batch flags its rows with these.
    flagged, select = built(silver_rows.sparkSession, "anomalies", columns)
    return silver_rows.where(flagged).select(*select)


def windows(
    spark: SparkSession, silver_uri: str, touched: DataFrame, minutes: int, span: tuple[datetime, datetime]
) -> DataFrame:
    """Recompute the ``minutes`` windows of the (station, window) pairs in ``touched`` from silver.

    ``span``: the lowest and highest event time in ``touched``; silver is read only around it.
    """
    from pyspark.sql import Window  # noqa: PLC0415
    from pyspark.sql import functions as F  # noqa: PLC0415

    length = f"{minutes} minutes"
    keys = touched.select("station_id", F.window("ts", length).start.alias("window_start")).distinct()
    # Windows are aligned to the epoch, so every row of a touched window lies within one length of the span.
    reach = timedelta(minutes=minutes)
    history = (
        spark.read.format("delta")
        .load(silver_uri)
        .where((F.col("ts") > F.lit(span[0] - reach)) & (F.col("ts") < F.lit(span[1] + reach)))
        .select("station_id", "ts", "power_kw", "status")
    )
    rows = history.withColumn("window_start", F.window("ts", length).start).join(keys, ["station_id", "window_start"])
    by_station = Window.partitionBy("station_id").orderBy("ts")
    held = F.least(
        F.coalesce(F.lead("ts").over(by_station).cast("double") - F.col("ts").cast("double"), F.lit(0.0)),
        F.lit(float(HOLD_CAP_S)),
    )
    starts = (F.col("status") == "charging") & (
        F.coalesce(F.lag("status").over(by_station), F.lit("idle")) != "charging"
    )
    return (
        rows.withColumn("held_s", held)
        .withColumn("start", starts.cast("int"))
        .groupBy("station_id", "window_start")
        .agg(
            F.round(F.sum(F.col("power_kw") * F.col("held_s")) / 3600, 4).alias("energy_kwh"),
            F.round(F.avg("power_kw"), 3).alias("mean_power_kw"),
            F.max("power_kw").alias("max_power_kw"),
            F.count("*").alias("samples"),
            F.sum("start").alias("sessions"),
        )
        .withColumn("window_minutes", F.lit(minutes))
        .withColumn(catalog.EVENT_DAY, F.to_date("window_start"))  # the partition (catalog.day_layout)
    )


def append_anomalies(silver_rows: DataFrame, *, uri: str, batch_id: int, ledger: CommitLedger) -> bool:
    """Flag the readings of an ingest batch's silver rows into the anomalies table ``uri``, once per batch
    (``ledger``). Returns whether it wrote (False: a replay of a batch the table holds). ``silver_rows``: the
    batch's flagged silver rows, as the driver collected them (``pipelines.ingest.outcomes``), or any of its silver
    rows (the rule picks the flagged ones again).

    The ingest batch calls it only when it counted flags (``pipelines.ingest.outcomes``); a batch with nothing to
    flag would still run its write job, though Delta commits nothing for a blind append that adds no file
    (tests/integration/test_spark_delta.py shows it on RGW).
    """
    from pyspark.sql import functions as F  # noqa: PLC0415

    flagged = anomalies(silver_rows).withColumns(
        {"flagged_at": F.current_timestamp(), "_batch_id": F.lit(batch_id).cast("long")}
    )
    # merge_schema: lakes from before flagged_at and _batch_id
    return ledger.append(flagged, uri, batch_id, merge_schema=True, partition_by=catalog.EVENT_DAY, append_only=True)


def append_replayed_anomalies(spark: SparkSession, moved: DataFrame, *, uri: str, batch_id: int) -> None:
    """Flag the readings ``replay-quarantine`` moves into silver, skipping events already flagged (a re-run after a
    crash between the flags and silver's append)."""
    from delta.tables import DeltaTable  # noqa: PLC0415
    from pyspark.sql import functions as F  # noqa: PLC0415

    flagged = anomalies(moved)
    if DeltaTable.isDeltaTable(spark, uri):
        flagged = flagged.join(spark.read.format("delta").load(uri).select("event_id"), "event_id", "left_anti")
    rows = flagged.withColumn("flagged_at", F.current_timestamp()).withColumn("_batch_id", F.lit(batch_id).cast("long"))
    rows.write.format("delta").mode("append").option("mergeSchema", "true").partitionBy(catalog.EVENT_DAY).save(uri)


def update_gold(spark: SparkSession, *, silver_uri: str, batch_rows: DataFrame, lake_bucket: str, entity: str) -> int:
    """Upsert the windows a batch of silver rows touched; a replay rewrites the same rows. Returns the batch's rows."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    windows_uri = gold_paths(lake_bucket, entity)[0]
    touched = batch_rows.select("station_id", "ts", "power_kw", "status").persist()
    try:
        span = touched.agg(F.min("ts"), F.max("ts"), F.count(F.lit(1))).first()
        if span is None or span[0] is None:
            return 0
        fresh = windows(spark, silver_uri, touched, WINDOWS_MIN[0], (span[0], span[1]))
        for minutes in WINDOWS_MIN[1:]:
            fresh = fresh.unionByName(windows(spark, silver_uri, touched, minutes, (span[0], span[1])))
        _upsert(spark, windows_uri, fresh, ["station_id", "window_minutes", "window_start"])
        return int(span[2])
    finally:
        touched.unpersist()


def _upsert(spark: SparkSession, uri: str, rows: DataFrame, key: list[str]) -> None:
    from delta.tables import DeltaTable  # noqa: PLC0415

    if not DeltaTable.isDeltaTable(spark, uri):
        rows.limit(0).write.format("delta").partitionBy(catalog.EVENT_DAY).save(uri)
    condition = " AND ".join(f"t.{k} = s.{k}" for k in key)
    (
        DeltaTable.forPath(spark, uri)
        .alias("t")
        .merge(rows.alias("s"), condition)
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
        .execute()
    )
