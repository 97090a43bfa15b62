"""Freshness: how long after Kafka took a record a reader of the lake could see it.

A row is visible once the Delta commit that added its file is in the table's log, so freshness is measured to that
commit, not to a timestamp column: ``silver_time`` and ``flagged_at`` are taken when the batch's write is planned,
before its files and its commit are written (~1 s earlier at p50 on this stack, more at p99).

:func:`committed_at` reads the table's commit files (``_delta_log/*.json``) once: each added data file gets the
modification time of the commit file that added it, the moment the object store made the commit visible (what
Delta's own ``history()`` reports as a version's timestamp). Only files added with ``dataChange`` count: a file
rewritten by compaction would report the rewrite, so its rows are left out of the figures (``rows`` says how many
were measured). Commit files older than Delta's log retention (30 days by default) are gone, and with them the rows
they added; freshness is a figure of recent rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# The part of a commit file that says which data file it added; Spark ignores the other actions.
_ADD_SCHEMA = "add STRUCT<path: STRING, dataChange: BOOLEAN>"


def committed_at(spark: SparkSession, uri: str) -> DataFrame:
    """One row per data file of the Delta table at ``uri`` that a commit added: ``_file`` (its name) and
    ``committed_at`` (when that commit became visible)."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    return (
        spark.read.schema(_ADD_SCHEMA)
        # The log folder with a filter, not a glob path: Hadoop stats each file a glob matches, and a stat of an S3
        # object gives its time in whole seconds; a listing gives milliseconds.
        .option("pathGlobFilter", "*.json")
        .json(f"{uri.rstrip('/')}/_delta_log/")
        .where(F.col("add.path").isNotNull() & F.col("add.dataChange"))
        .select(
            F.element_at(F.split(F.col("add.path"), "/"), -1).alias("_file"),
            F.col("_metadata.file_modification_time").alias("committed_at"),
        )
    )


def with_commit_time(spark: SparkSession, uri: str) -> DataFrame:
    """The rows of the Delta table at ``uri``, each with ``committed_at`` (see :func:`committed_at`)."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    rows = spark.read.format("delta").load(uri)
    named = rows.select("*", F.col("_metadata.file_name").alias("_file"))
    return named.join(F.broadcast(committed_at(spark, uri)), "_file").drop("_file")


def freshness(spark: SparkSession, silver_uri: str, *, since_epoch_s: float) -> dict[str, Any]:
    """Seconds from Kafka's timestamp to the silver commit, p50/p99, over the rows produced since ``since``."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    rows = with_commit_time(spark, silver_uri).where(F.col("kafka_timestamp").cast("double") >= since_epoch_s)
    return _lag_percentiles(rows)


def anomaly_freshness(
    spark: SparkSession, *, silver_uri: str, anomalies_uri: str, since_epoch_s: float
) -> dict[str, Any]:
    """Seconds from Kafka's timestamp to the commit of its anomaly flag, p50/p99, over the readings produced since
    ``since`` that were flagged: how soon gold shows what happened."""
    from delta.tables import DeltaTable  # noqa: PLC0415
    from pyspark.sql import functions as F  # noqa: PLC0415

    if not DeltaTable.isDeltaTable(spark, anomalies_uri):
        return {"p50_s": None, "p99_s": None, "rows": 0}
    sent = (
        spark.read.format("delta")
        .load(silver_uri)
        .where(F.col("kafka_timestamp").cast("double") >= since_epoch_s)
        .select("event_id", "kafka_timestamp")
    )
    flagged = with_commit_time(spark, anomalies_uri).select("event_id", "committed_at")
    return _lag_percentiles(flagged.join(sent, "event_id"))


def _lag_percentiles(rows: DataFrame) -> dict[str, Any]:
    """p50/p99 of ``committed_at`` minus ``kafka_timestamp`` in seconds, and the row count."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    lag = F.col("committed_at").cast("double") - F.col("kafka_timestamp").cast("double")
    row = rows.select(F.percentile_approx(lag, [0.5, 0.99]).alias("p"), F.count(F.lit(1)).alias("n")).first()
    p50, p99 = (row["p"] if row is not None and row["p"] else None) or (None, None)
    return {"p50_s": p50, "p99_s": p99, "rows": int(row["n"]) if row is not None else 0}
