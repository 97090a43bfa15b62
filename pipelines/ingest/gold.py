"""gold.<entity>: a streaming query of its own that reads new silver rows and updates the entity's gold tables.

Gold used to run inside the silver micro-batch, so every silver batch waited for two MERGEs before the next one
could start. As its own query (checkpoint ``gold/_checkpoints/<entity>``) it runs beside silver: silver's
freshness no longer pays for gold, and gold catches up from its checkpoint after a crash. Which gold an entity
has comes from ``gold:`` in conf/: ``ev`` (windows, ``pipelines.ingest.gold_ev``; its anomaly flags are written by
the ingest batch itself, so they are visible with silver) or ``corpus`` (packed token rows,
``pipelines.ingest.gold_corpus``).

Exactly once: EV windows are MERGEd by key (a replay rewrites the same rows); token rows are appended with the gold
batch id as Delta's ``txnVersion``, so a replayed batch is skipped.

A silver schema upgrade (an optional field added in conf/) ends a stream that reads silver: Delta stops readers
when the schema changes. :func:`schema_changed` recognises that end, and the ingest driver starts the gold query
again, which then reads the new schema.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from pipelines.ingest.gold_corpus import gold_tokens_uri, packed_rows
from pipelines.ingest.gold_ev import update_gold
from pipelines.ingest.silver import silver_tables, table_exists
from pipelines.ingest.stream import with_trigger
from pipelines.session import batch_codegen, use_pool
from tierlake import catalog
from tierlake.config import Settings
from tierlake.errors import SchemaMismatch

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery

logger = logging.getLogger(__name__)


def gold_checkpoint(settings: Settings, entity: str) -> str:
    return catalog.gold_checkpoint(settings.s3.lake_bucket, entity).s3a


def has_gold(settings: Settings, entity: str) -> bool:
    return settings.entities[entity].gold is not None


def process_gold_batch(rows: DataFrame, batch_id: int, *, settings: Settings, entity: str) -> int:
    """One batch of new silver rows into the entity's gold tables. Returns how many silver rows it held."""
    spec = settings.entities[entity]
    spark = rows.sparkSession
    began = time.monotonic()
    read = 0
    if spec.gold == "ev":
        read = update_gold(
            spark,
            silver_uri=silver_tables(settings, entity).silver,
            batch_rows=rows,
            lake_bucket=settings.s3.lake_bucket,
            entity=entity,
        )
    elif spec.gold == "corpus":
        packed = packed_rows(rows, batch_id=batch_id)
        read = len({doc for docs in packed.column("doc_ids").to_pylist() for doc in docs})
        if packed.num_rows:
            (
                spark.createDataFrame(packed)
                .write.format("delta")
                .mode("append")
                .option("txnAppId", f"tierlake-gold-{entity}-tokens")
                .option("txnVersion", batch_id)
                .save(gold_tokens_uri(settings.s3.lake_bucket, entity))
            )
    logger.info("gold %s batch %d done in %.1f s", entity, batch_id, time.monotonic() - began, extra={"entity": entity})
    return read


def start_gold(
    spark: SparkSession, settings: Settings, *, entity: str, trigger_s: float | None
) -> StreamingQuery | None:
    """Start the silver -> gold query (``trigger_s`` None = until caught up). None: no gold, or no silver yet."""
    silver_uri = silver_tables(settings, entity).silver
    if not has_gold(settings, entity) or not table_exists(spark, silver_uri):
        return None

    previous_rows: list[int] = []  # the size of the query's last batch (batch_codegen)

    def handle(batch: DataFrame, batch_id: int) -> None:
        use_pool(batch.sparkSession, "gold")
        with batch_codegen(batch.sparkSession, settings, previous_rows[-1] if previous_rows else None):
            previous_rows[:] = [process_gold_batch(batch, batch_id, settings=settings, entity=entity)]

    writer = (
        spark.readStream.format("delta")
        # A commit that rewrites silver's rows (`tierlake table migrate`, a GDPR delete) holds no new rows: gold
        # has seen them. OPTIMIZE commits are skipped by Delta anyway (dataChange false).
        .option("skipChangeCommits", "true")
        .load(silver_uri)
        .writeStream.foreachBatch(handle)
        .option("checkpointLocation", gold_checkpoint(settings, entity))
        .queryName(f"gold_{entity}")
    )
    return with_trigger(writer, trigger_s).start()


def run_gold_until_caught_up(spark: SparkSession, settings: Settings, *, entity: str) -> dict[str, Any]:
    """Bring gold up to date with silver, then stop. A silver schema upgrade ends the first pass; run again."""
    for _ in range(3):
        query = start_gold(spark, settings, entity=entity, trigger_s=None)
        if query is None:
            return {"entity": entity, "gold": None}
        try:
            query.awaitTermination()
            return {"entity": entity, "gold": settings.entities[entity].gold}
        except Exception as exc:
            if not schema_changed(exc):
                raise
            logger.info("gold %s: silver's schema changed; starting again on the new schema", entity)
    raise SchemaMismatch(
        f"gold {entity}: silver's schema changed three times under the gold query. Fix: look for an incompatible "
        "change of the entity's fields in conf/ (a type change or a removed field), then run `tierlake ingest run`"
    )


def schema_changed(exc: BaseException | None) -> bool:
    """Whether a streaming query ended because the Delta table it reads changed its schema."""
    text = str(exc or "")
    return "DELTA_SCHEMA_CHANGED" in text or "schema change" in text.lower()
