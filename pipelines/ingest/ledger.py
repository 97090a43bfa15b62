"""Which micro-batch each table last committed: exactly-once appends without Delta's per-commit ``txnVersion`` check.

Delta's idempotent writes (``txnAppId``/``txnVersion``) look the application's last version up in the table's state
on every commit; measured on this stack that added ~1.4 s to an append of a few hundred rows (0.7 s -> 2.1 s, the
same table shape, one JVM, RGW on loopback), and an ingest batch makes two to four appends.

tierlake has one writing driver per table (``pipelines.lake.lease``), and a query runs its batches one after another, so
the driver can keep the answer itself. Every row an ingest batch appends carries the batch id in ``_batch_id``.
When a query starts, the ledger reads each table's highest ``_batch_id`` once (a MAX that Delta answers from its
file statistics); afterwards it notes each append. A batch replayed after a crash skips the tables that already
hold its rows and writes the others, as Delta's transaction ids would.

Rows written outside the streaming batches carry a negative ``_batch_id`` (``replay-quarantine`` writes -1) and never
count as a committed batch.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

from tierlake.errors import SchemaMismatch

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

# Fault injection for tests (not a setting): while the file this names exists, the next commit, after its lease
# check, deletes it and stops the driver's whole process group (SIGSTOP), as a long pause would; the test resumes it.
PAUSE_AFTER_GATE_ENV = "TIERLAKE_FAULT_PAUSE_AFTER_GATE"


def _pause_point() -> None:
    trigger = os.environ.get(PAUSE_AFTER_GATE_ENV)
    if trigger and os.path.exists(trigger):
        os.unlink(trigger)
        logger.warning("fault injection: pausing after the lease check, before the commit")
        os.killpg(os.getpgrp(), signal.SIGSTOP)


# Delta writes a checkpoint of a table's log every 10 commits by default, inside the commit that reaches it (a Spark
# job that reads the whole state and writes Parquet). An ingest batch commits to three or four tables, so about a
# third of live batches carried one, and they made the slow tail: 40 appends of 400 rows, interleaved, load 20-28,
# took p90 17.2 s / max 153 s at 10 against p90 9.4 s / max 12.7 s at 100 (docs/decisions.md). The tables ingestion
# only appends to and never reads back (bronze, quarantine, dropped, the flags) are created with this interval;
# silver keeps Delta's 10, as every batch's duplicate check reads its state and a longer log costs that read.
APPEND_ONLY_CHECKPOINT_INTERVAL = 100


class CommitLedger:
    """The last streaming batch committed to each table this driver writes."""

    def __init__(self, spark: SparkSession, *, gate: Callable[[], None] | None = None) -> None:
        """``gate``: called right before each commit; it raises to stop it (the writer lease's check)."""
        self._spark = spark
        self._gate = gate
        self._last: dict[str, int] = {}
        self._metadata: dict[int, str] = {}
        self._layout_checked: set[str] = set()

    def describe(self, batch_id: int, metadata: str) -> None:
        """What every commit of batch ``batch_id`` records as Delta ``userMetadata`` (query, batch, offsets)."""
        self._metadata = {batch_id: metadata}  # one batch at a time per query: earlier ones are done

    def last(self, uri: str) -> int:
        """The highest batch id in the table (-1: no batch yet, or no table)."""
        if uri not in self._last:
            from delta.tables import DeltaTable  # noqa: PLC0415
            from pyspark.sql import functions as F  # noqa: PLC0415

            last = -1
            if DeltaTable.isDeltaTable(self._spark, uri):
                table = self._spark.read.format("delta").load(uri)
                if "_batch_id" in table.columns:  # a table made before the column existed holds no batch of ours
                    row = table.agg(F.max("_batch_id")).first()
                    last = int(row[0]) if row is not None and row[0] is not None else -1
            self._last[uri] = last
        return self._last[uri]

    def append(
        self,
        frame: DataFrame,
        uri: str,
        batch_id: int,
        *,
        merge_schema: bool = False,
        partition_by: str | None = None,
        append_only: bool = False,
    ) -> bool:
        """Append ``frame`` (its rows carry ``_batch_id`` = ``batch_id``) unless the table already holds the batch.

        ``partition_by``: the table's day column (``tierlake.catalog.day_layout``); a new table is created
        partitioned by it, and a table laid out otherwise is refused with the command that migrates it.
        ``append_only``: ingestion never reads the table back; a new table gets a log checkpoint every
        :data:`APPEND_ONLY_CHECKPOINT_INTERVAL` commits (Delta applies the option when it creates the table only).
        Returns whether it wrote.
        """
        if batch_id <= self.last(uri):
            logger.info("batch %d is already in %s (a replay after a crash); not written again", batch_id, uri)
            return False
        writer = frame.write.format("delta").mode("append")
        if partition_by is not None:
            self.check_layout(uri, partition_by)
            writer = writer.partitionBy(partition_by)
        if batch_id in self._metadata:
            writer = writer.option("userMetadata", self._metadata[batch_id])
        if merge_schema:
            writer = writer.option("mergeSchema", "true")
        if append_only:
            writer = writer.option("delta.checkpointInterval", str(APPEND_ONLY_CHECKPOINT_INTERVAL))
        if self._gate is not None:
            self._gate()  # before Delta plans the commit: a driver whose lease is unconfirmed writes nothing
            _pause_point()
        writer.save(uri)  # the log store checks the lease's deadline again right before its PUT
        self._last[uri] = batch_id
        return True

    def check_layout(self, uri: str, column: str) -> None:
        """Refuse to append to a table partitioned otherwise than by ``column`` (once per table and ledger: Delta
        computes the table's state for it, so an ingest query does it before it starts, ``stream.warm_up``)."""
        if uri in self._layout_checked:
            return
        from delta.tables import DeltaTable  # noqa: PLC0415

        if DeltaTable.isDeltaTable(self._spark, uri):
            detail = DeltaTable.forPath(self._spark, uri).detail().first()
            current = list(detail["partitionColumns"]) if detail is not None else []
            if current != [column]:
                path = uri.split("://", 1)[-1].partition("/")[2]
                raise SchemaMismatch(
                    f"table {uri} is partitioned by {current}, the writer lays it out by [{column!r}]. "
                    f"Fix: run `tierlake table migrate --table {path} --execute` once (a rewrite, nothing lost), "
                    "then start the ingestion again"
                )
        self._layout_checked.add(uri)
