"""Reconciliation: per topic and partition, bronze = silver + quarantine + dropped, exactly, offset by offset.

It joins on (topic, partition, offset), so a count that balances by accident (one row lost, another doubled)
still shows up: ``missing`` (in bronze, in no output), ``unexpected`` (in an output, not in bronze) and
``repeated`` (in more than one output, or twice in one). Offsets are listed, a few per partition, to start from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.bronze import bronze_table
from pipelines.silver import silver_tables
from tierlake.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

SAMPLE = 5


def _keys(spark: SparkSession, uri: str, label: str) -> DataFrame | None:
    from delta.tables import DeltaTable  # noqa: PLC0415
    from pyspark.sql import functions as F  # noqa: PLC0415

    if not DeltaTable.isDeltaTable(spark, uri):
        return None
    rows = spark.read.format("delta").load(uri)
    if label == "quarantine":
        rows = rows.where(~F.col("replayed"))  # a replayed record is counted by its silver row
    return rows.select("topic", "partition", "offset", F.lit(label).alias("out"))


def reconcile(spark: SparkSession, settings: Settings, *, entity: str) -> dict[str, Any]:
    """The reconciliation report of one entity; ``balanced`` is true only when every offset is accounted once."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    tables = silver_tables(settings, entity)
    bronze_uri = bronze_table(settings, settings.entities[entity].topic).table_uri
    bronze = _keys(spark, bronze_uri, "bronze")
    if bronze is None:
        return {"entity": entity, "balanced": False, "error": f"no bronze table at {bronze_uri}", "partitions": []}
    parts = [
        _keys(spark, uri, name)
        for name, uri in (("silver", tables.silver), ("quarantine", tables.quarantine), ("dropped", tables.dropped))
    ]
    outputs = None
    for part in parts:
        if part is not None:
            outputs = part if outputs is None else outputs.unionByName(part)
    if outputs is None:
        outputs = bronze.limit(0)
    key = ["topic", "partition", "offset"]
    per_offset = outputs.groupBy(*key).agg(F.count("*").alias("n"))
    in_bronze = bronze.groupBy(*key).agg(F.count("*").alias("nb"))
    flagged = (
        in_bronze.join(per_offset, key, "full_outer")
        .select(
            *key,
            F.coalesce("n", F.lit(0)).alias("n"),
            F.coalesce("nb", F.lit(0)).alias("nb"),
        )
        .persist()
    )
    try:
        summary = _summarise(flagged, outputs)
    finally:
        flagged.unpersist()
    balanced = all(p["missing"] == 0 and p["unexpected"] == 0 and p["repeated"] == 0 for p in summary)
    return {"entity": entity, "topic": settings.entities[entity].topic, "balanced": balanced, "partitions": summary}


def _summarise(flagged: DataFrame, outputs: DataFrame) -> list[dict[str, Any]]:
    from pyspark.sql import functions as F  # noqa: PLC0415

    missing = (F.col("nb") > 0) & (F.col("n") == 0)
    unexpected = F.col("nb") == 0
    repeated = (F.col("n") > 1) | (F.col("nb") > 1)

    def sample(cond: Any) -> Any:
        return F.slice(F.sort_array(F.collect_list(F.when(cond, F.col("offset")))), 1, SAMPLE)

    stats = flagged.groupBy("topic", "partition").agg(
        F.sum("nb").alias("bronze"),
        F.min("offset").alias("min_offset"),
        F.max("offset").alias("max_offset"),
        F.sum(missing.cast("long")).alias("missing"),
        F.sum(unexpected.cast("long")).alias("unexpected"),
        F.sum(repeated.cast("long")).alias("repeated"),
        sample(missing).alias("missing_offsets"),
        sample(unexpected | repeated).alias("other_offsets"),
    )
    counts = outputs.groupBy("topic", "partition").pivot("out", ["silver", "quarantine", "dropped"]).count()
    rows = stats.join(counts, ["topic", "partition"], "left").orderBy("topic", "partition").collect()
    return [
        {
            **{k: row[k] for k in ("topic", "partition", "bronze", "min_offset", "max_offset")},
            **{k: int(row[k] or 0) for k in ("silver", "quarantine", "dropped", "missing", "unexpected", "repeated")},
            "missing_offsets": list(row["missing_offsets"]),
            "other_offsets": list(row["other_offsets"]),
        }
        for row in rows
    ]
