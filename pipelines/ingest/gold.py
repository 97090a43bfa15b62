"""gold.<entity>: a streaming query of its own that reads new silver rows and updates the entity's gold tables.

Gold used to run inside the silver micro-batch, so every silver batch waited for two MERGEs before the next one
could start. As its own query (checkpoint ``gold/_checkpoints/<entity>``) it runs beside silver: silver's
freshness no longer pays for gold, and gold catches up from its checkpoint after a crash. Which gold an entity
has comes from ``gold:`` in conf/: ``ev`` (windows, ``pipelines.ingest.gold_ev``; its anomaly flags are written by
the ingest batch itself, so they are visible with silver) or ``corpus`` (packed token rows,
``pipelines.ingest.gold_corpus``).

Exactly once: EV windows are MERGEd by key (a replay rewrites the same rows); token rows are appended with the gold
batch id as Delta's ``txnVersion``, so a replayed batch is skipped.

Silver's metadata changes under gold: an optional field added in conf/ (a new column), and `tierlake table migrate`
(a new ``event_date`` column and a new partitioning, written in one overwrite). A plain Delta stream restarted from
its checkpoint checks the schema of the version it resumes at against the table's latest, and a partitioning change
fails that check on every restart: gold could never pass a migration. So the source keeps a *schema tracking log*
(Delta's ``schemaTrackingLocation``, beside gold's checkpoint): the stream reads each span of versions with the
schema and partitioning that span was written with, and at a metadata change it records the new metadata and stops
once (``DELTA_STREAMING_METADATA_EVOLUTION``). :func:`schema_changed` recognises that end and gold starts again, on
the new metadata, from the same checkpoint: rows before the change are read once with the old schema, the
migration's rewrite is skipped (``skipChangeCommits``: it holds no new rows), rows after it are read once with the
new. A checkpoint written before the log existed costs one more such restart, the first time (the log starts at the
checkpoint's version). Moving gold's checkpoint past the migration version inside ``migrate`` was the other way:
it means writing Spark's offset log and Delta's source offset by hand (formats internal to Spark and Delta), needs
gold fully caught up before the rewrite, and leaves every other metadata change to fail the same way.
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
SCHEMA_RESTARTS = 8  # metadata changes of silver one gold catch-up may pass (each costs one restart)
# How Delta ends a stream at a schema change: without a tracking log, and with one (the log was updated).
_SCHEMA_ENDS = ("DELTA_SCHEMA_CHANGED", "DELTA_STREAMING_METADATA_EVOLUTION")


def gold_checkpoint(settings: Settings, entity: str) -> str:
    return catalog.gold_checkpoint(settings.s3.lake_bucket, entity).s3a


def gold_schema_log(settings: Settings, entity: str) -> str:
    """Gold's Delta schema tracking log: inside its checkpoint (Delta requires it there), so it moves with it."""
    return f"{gold_checkpoint(settings, entity)}/_schema_log"


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
        # Each span of silver's versions read with its own schema and partitioning (see the module's docstring).
        .option("schemaTrackingLocation", gold_schema_log(settings, entity))
        .load(silver_uri)
        .writeStream.foreachBatch(handle)
        .option("checkpointLocation", gold_checkpoint(settings, entity))
        .queryName(f"gold_{entity}")
    )
    return with_trigger(writer, trigger_s).start()


def run_gold_until_caught_up(spark: SparkSession, settings: Settings, *, entity: str) -> dict[str, Any]:
    """Bring gold up to date with silver, then stop. A change of silver's metadata ends a pass; run again.

    Each such end has recorded one change in the schema tracking log, so every restart makes progress; the bound
    only stops a loop that does not (:data:`SCHEMA_RESTARTS` changes in one backlog).
    """
    for _ in range(SCHEMA_RESTARTS):
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
        f"gold {entity}: silver's schema changed {SCHEMA_RESTARTS} times in a row under the gold query "
        f"(SCHEMA_RESTARTS = {SCHEMA_RESTARTS}). Fix: look for an incompatible change of the entity's fields in "
        f"conf/ (a type change or a removed field), and at the schema log {gold_schema_log(settings, entity)}, "
        "then run `tierlake ingest run`"
    )


def schema_changed(exc: BaseException | None) -> bool:
    """Whether a streaming query ended because the Delta table it reads changed its schema."""
    text = str(exc or "")
    return any(mark in text for mark in _SCHEMA_ENDS) or "schema change" in text.lower()
