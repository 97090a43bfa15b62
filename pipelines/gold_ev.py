"""gold for EV telemetry: per-station windows (1 and 15 minutes) and anomaly flags, in the silver micro-batch.

Windows: for every (station, window) that a batch touches, the window is recomputed from silver and upserted
(MERGE on station, window length, window start), so a replayed batch rewrites the same rows: idempotent.
- ``energy_kwh``: power integrated over time, each sample held until the station's next one (at most 60 s);
- ``mean_power_kw``, ``max_power_kw``, ``samples``;
- ``sessions``: starts of charging (a ``charging`` sample whose previous sample of the station was not).

Anomalies, one row per flagged event with a ``score`` in [0, 1] and a ``reason``:
- ``overheating``: ``temp_c`` above 80 °C (score grows to 1 at 110 °C);
- ``dropout``: ``power_kw`` 0 with status ``dropout`` mid-session;
- ``power_spike``: ``power_kw`` above 400 kW, beyond what the chargers are rated for (score grows to 1 at 700 kW).
Thresholds are physical limits, not statistics, so one reading suffices and a flag is visible within the
micro-batch that brought the reading.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

WINDOWS_MIN = (1, 15)
HOLD_CAP_S = 60
OVERHEAT_C, OVERHEAT_MAX_C = 80.0, 110.0
SPIKE_KW, SPIKE_MAX_KW = 400.0, 700.0


def gold_paths(lake_bucket: str, entity: str) -> tuple[str, str]:
    root = f"s3a://{lake_bucket}/gold/{entity}"
    return f"{root}_windows", f"{root}_anomalies"


def anomalies(silver_rows: DataFrame) -> DataFrame:
    """Flag events of a batch: event_id, station_id, ts, score, reason."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    def ramp(value: str, low: float, high: float) -> Column:
        return F.least(F.lit(1.0), F.greatest(F.lit(0.0), (F.col(value) - low) / (high - low))) * 0.5 + 0.5

    reason = (
        F.when(F.col("temp_c") > OVERHEAT_C, F.lit("overheating"))
        .when(F.col("power_kw") > SPIKE_KW, F.lit("power_spike"))
        .when((F.col("status") == "dropout") & (F.col("power_kw") == 0), F.lit("dropout"))
    )
    score = (
        F.when(F.col("temp_c") > OVERHEAT_C, ramp("temp_c", OVERHEAT_C, OVERHEAT_MAX_C))
        .when(F.col("power_kw") > SPIKE_KW, ramp("power_kw", SPIKE_KW, SPIKE_MAX_KW))
        .when(F.col("status") == "dropout", F.lit(0.6))
    )
    return (
        silver_rows.withColumn("reason", reason)
        .where(F.col("reason").isNotNull())
        .select("event_id", "station_id", "ts", F.round(score, 3).alias("score"), "reason", "temp_c", "power_kw")
    )


def windows(spark: SparkSession, silver_uri: str, touched: DataFrame, minutes: int) -> DataFrame:
    """Recompute the ``minutes`` windows of the (station, window) pairs in ``touched`` from silver."""
    from pyspark.sql import Window  # noqa: PLC0415
    from pyspark.sql import functions as F  # noqa: PLC0415

    length = f"{minutes} minutes"
    keys = touched.select("station_id", F.window("ts", length).start.alias("window_start")).distinct()
    history = spark.read.format("delta").load(silver_uri).select("station_id", "ts", "power_kw", "status")
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
    )


def update_gold(spark: SparkSession, *, silver_uri: str, batch_rows: DataFrame, lake_bucket: str, entity: str) -> None:
    """Upsert the windows a batch touched and its anomalies (both keyed, so a replay rewrites, never adds)."""
    windows_uri, anomalies_uri = gold_paths(lake_bucket, entity)
    touched = batch_rows.select("station_id", "ts").persist()
    try:
        if touched.isEmpty():
            return
        fresh = windows(spark, silver_uri, touched, WINDOWS_MIN[0])
        for minutes in WINDOWS_MIN[1:]:
            fresh = fresh.unionByName(windows(spark, silver_uri, touched, minutes))
        _upsert(spark, windows_uri, fresh, ["station_id", "window_minutes", "window_start"])
        _upsert(spark, anomalies_uri, anomalies(batch_rows), ["event_id", "reason"])
    finally:
        touched.unpersist()


def _upsert(spark: SparkSession, uri: str, rows: DataFrame, key: list[str]) -> None:
    from delta.tables import DeltaTable  # noqa: PLC0415

    if not DeltaTable.isDeltaTable(spark, uri):
        rows.limit(0).write.format("delta").save(uri)
    condition = " AND ".join(f"t.{k} = s.{k}" for k in key)
    (
        DeltaTable.forPath(spark, uri)
        .alias("t")
        .merge(rows.alias("s"), condition)
        .whenMatchedUpdateAll()
        .whenNotMatchedInsertAll()
        .execute()
    )
