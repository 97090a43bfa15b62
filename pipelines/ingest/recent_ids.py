"""The duplicate check's history: silver's recent event ids, kept in the executors' memory between ingest batches.

A valid record is a duplicate when silver already holds its event id from an earlier batch, looked for among silver
rows whose event times reach within two watermarks of the high-water mark (``pipelines.ingest.silver.judge``). Each
batch used to read that from silver itself: Delta built the snapshot of silver's newest version (a listing of its
log and two to three Spark jobs), then the batch scanned every recent data file. On a live stream, where a batch is
a few hundred records, that was most of a batch's work, and it grew with the number of files in the window (one or
more per batch: an hour's watermark at a 2 s trigger is thousands of files).

The driver that ingests an entity is silver's only writer (the writer lease, ``pipelines.lake.lease``; the other
writers of silver's rows, ``replay-quarantine``, take the same lease), so it knows what silver gained: the ids of the
silver rows of each batch it committed (the batch's outcomes, decided on the driver: ``pipelines.ingest.outcomes``).
:class:`RecentIds` keeps them as Spark data: one small frame per batch, made from the driver's copy (no lineage back
to the batch, no job), merged every :data:`COMPACT_EVERY` batches into a local checkpoint in the executors' memory
(no copy in the object store) and pruned to the window as the high-water mark moves. An index of the same ids on the
driver (:class:`pipelines.ingest.id_index.IdIndex`) says which of a batch's ids the frames may hold, so a batch of
new ids looks nothing up (:meth:`RecentIds.among`). Silver is read
once per query (a start, or a restart after a crash): before it starts, for the batch its checkpoint says it runs
first (``pipelines.ingest.stream``), or else by that batch; rows of earlier batches only, as before, so a replayed
batch is judged as its first attempt was.

If the executors lose that memory (an executor of a cluster dies), the batch that reads it fails, and the driver's
restart of the query (the failure policy) reads silver again. A state that cannot be kept up (a merge failed after
silver's commit) is dropped and read again by the next batch. Rows deleted from silver inside the window while the
driver runs stay in the history until it restarts: a later copy of such an event is dropped as a duplicate (counted
in dropped, never silent), not added again.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import TYPE_CHECKING, Any

from pipelines.ingest.id_index import IdIndex
from tierlake.entities import EntitySpec
from tierlake.errors import first_line

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame, SparkSession

logger = logging.getLogger(__name__)

COMPACT_EVERY = 16
"""Per-batch frames kept before they are merged into one (each frame is one more branch in every batch's plan)."""
SEEN_ID, SEEN_TIME = "_seen_id", "_seen_time"


def window_start(entity: EntitySpec, high_water: datetime) -> Column:
    """The earliest event time the duplicate check looks at: two watermarks before the high-water mark.

    A row still valid after the late rule has an event time of at least ``high_water - watermark``; its earlier
    copies are looked for from one more watermark back.
    """
    from pyspark.sql import functions as F  # noqa: PLC0415

    watermark = F.expr(f"INTERVAL {entity.watermark_s} SECONDS")
    return F.lit(high_water) - watermark - watermark


def latest_version(spark: SparkSession, uri: str) -> int:
    """The table's latest version, from Delta's own log of it in this JVM (brought up to date: one listing of
    ``_delta_log``, no Spark job; ``DeltaTable.history`` ran one).

    The duplicate check reads silver pinned to it (:func:`silver_ids`). Spark re-plans
    every cached plan that reads a table after each write to it (``SaveIntoDataSourceCommand`` calls
    ``recacheByPlan``): a judged batch that read silver unpinned was judged again after silver's append. A read
    pinned to a version is another relation to Spark, so the cache stands.
    """
    try:
        return int(_updated_snapshot(spark, uri).version())
    except Exception:  # a changed internal signature: the public history says the same, with a job
        from delta.tables import DeltaTable  # noqa: PLC0415

        row = DeltaTable.forPath(spark, uri).history(1).select("version").first()
        assert row is not None  # only asked of a table with rows (the duplicate check runs after the first batch)
        return int(row[0])


def _updated_snapshot(spark: SparkSession, uri: str) -> Any:
    """Delta's newest snapshot of the table in this JVM (``DeltaLog.update``: one listing of ``_delta_log``)."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    none = jvm.scala.Option.empty()
    return jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, uri).update(False, none, none)


def silver_ids(
    spark: SparkSession, silver_uri: str, entity: EntitySpec, batch_id: int, high_water: datetime
) -> DataFrame:
    """Silver's ids (``_seen_id``, once each) of batches before ``batch_id`` within the check's window, read from
    the table's latest version (Delta skips files whose event times end before the window by their statistics)."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    return (
        spark.read.format("delta")
        .option("versionAsOf", latest_version(spark, silver_uri))
        .load(silver_uri)
        .where((F.col("_batch_id") < batch_id) & (F.col(entity.event_time) >= window_start(entity, high_water)))
        .groupBy(F.col(entity.event_id).alias(SEEN_ID))
        .agg(F.max(entity.event_time).alias(SEEN_TIME))
    )


IN_LIST_LIMIT = 2_000
"""Up to this many ids the history is probed with an ``IN`` list, beyond it by a join (each faster there:
0.10 s against 0.13 s for 500 ids, 0.35 s against 1.10 s for 50,000, over 30,000 ids on 2 cores)."""


def seen_among(seen: DataFrame | None, ids: pa.Array | list[str]) -> set[str]:
    """Which of ``ids`` the history ``seen`` (column ``_seen_id``) holds: one job scans the history for them.

    A live batch's few hundred ids reach the JVM as one string, split there into the ``IN`` list (Spark turns it
    into a hash set): one call to the JVM per id would cost more than the scan. Valid event ids hold no control
    character (the ``control_character`` rule), so a newline separates them. More ids (a backlog's batch) are sent
    to the executors as a table of their own and joined.
    """
    import pyarrow as pa  # noqa: PLC0415
    from pyspark.sql import functions as F  # noqa: PLC0415
    from pyspark.sql.classic.column import Column  # noqa: PLC0415 - a column of a JVM expression built here

    if seen is None or len(ids) == 0:
        return set()
    if len(ids) > IN_LIST_LIMIT:
        probe = seen.sparkSession.createDataFrame(pa.table({SEEN_ID: pa.array(ids, pa.string())}))
        found = seen.join(F.broadcast(probe), SEEN_ID, "left_semi").select(SEEN_ID).toArrow()
        return set(found.column(SEEN_ID).to_pylist())
    wanted = ids if isinstance(ids, list) else ids.to_pylist()
    if any("\n" in value for value in wanted):
        raise ValueError("an event id to look for holds a newline; the control_character rule should have caught it")
    jvm = seen.sparkSession.sparkContext._jvm
    assert jvm is not None
    split = jvm.java.util.regex.Pattern.compile("\n").splitAsStream("\n".join(wanted))
    listed = split.collect(jvm.java.util.stream.Collectors.toList())  # stays in the JVM
    found = seen.where(Column(F.col(SEEN_ID)._jc.isInCollection(listed))).select(SEEN_ID).toArrow()  # type: ignore[operator]
    return set(found.column(SEEN_ID).to_pylist())


class RecentIds:
    """Silver's ids within the duplicate check's window, as of the batches this query committed (see the module)."""

    def __init__(
        self, spark: SparkSession, *, silver_uri: str, entity: EntitySpec, compact_every: int = COMPACT_EVERY
    ) -> None:
        self._spark = spark
        self._silver_uri = silver_uri
        self._entity = entity
        self._compact_every = compact_every
        self._frames: list[DataFrame] = []
        self._union: DataFrame | None = None  # the frames as one frame, built once and grown by each batch's
        self._through: int | None = None  # the frames hold every batch up to this one; None: not read yet
        self._index = IdIndex()  # on the driver: which ids the frames may hold
        self.loads = 0  # times silver was read (a start, a restart, a state dropped)
        self.probes = 0  # batches whose ids were looked for in the frames (the others: the index said none)

    @property
    def through(self) -> int | None:
        """The last batch the history holds (every one before it too); None: silver is read at the next batch."""
        return self._through

    @property
    def frames(self) -> int:
        """How many frames the history is kept in (one per batch since the last merge)."""
        return len(self._frames)

    def seen(self, batch_id: int, high_water: datetime | None) -> DataFrame | None:
        """The ids (``_seen_id``) that silver holds from batches before ``batch_id`` within the window of
        ``high_water`` (the mark of those batches); None when no earlier batch put a row in silver."""
        from pyspark.sql import functions as F  # noqa: PLC0415

        if not self._ready(batch_id, high_water) or high_water is None:
            return None
        if not self._frames:
            return self._spark.createDataFrame([], f"{SEEN_ID} string")
        if self._union is None:  # every frame has the columns (_seen_id, _seen_time), in that order
            self._union = reduce(lambda left, right: left.union(right), self._frames)
        # One task per core reads them all (a task per frame partition cost more to schedule than to run).
        inside = self._union.where(F.col(SEEN_TIME) >= window_start(self._entity, high_water))
        return inside.select(SEEN_ID).coalesce(self._cores())

    def among(self, batch_id: int, high_water: datetime | None, ids: pa.Array) -> set[str]:
        """Which of ``ids`` silver holds from batches before ``batch_id`` within the window of ``high_water``
        (:meth:`seen`): only the ids the driver's index may hold are looked for, by one Spark job (none at all in
        a batch whose ids are all new)."""
        if not self._ready(batch_id, high_water):
            return set()
        wanted = self._index.maybe(ids.to_pylist())
        if not wanted:  # no plan is built either: planning the probe cost as much as running it
            return set()
        self.probes += 1
        return seen_among(self.seen(batch_id, high_water), wanted)

    def _ready(self, batch_id: int, high_water: datetime | None) -> bool:
        """Make the frames the history of the batches before ``batch_id`` (reading silver if they are not);
        False when there is none (no mark: no silver row)."""
        if high_water is None:  # every silver row has an event time: no mark, no silver row, nothing seen
            self._replace([], through=batch_id - 1)
            return False
        if self._through != batch_id - 1:
            self._load(batch_id, high_water)
        return True

    def add(self, batch_id: int, rows: pa.Table, high_water: datetime | None) -> None:
        """After silver's append of ``batch_id`` (or its skip, on a replay of a batch silver holds): the ids of its
        silver rows (``rows``, columns ``_seen_id`` and ``_seen_time``, on the driver) join the history;
        ``high_water``, the mark after it, prunes what fell out of the window when the frames are merged. The rows
        become a frame without a job (a local checkpoint of each batch's was one, at the end of every batch);
        the frames are checkpointed when merged. Never raises: a state it cannot keep is dropped, and the next
        batch reads silver."""
        import pyarrow.compute as pc  # noqa: PLC0415

        if self._through != batch_id - 1:  # not the history of the batch before: read afresh next time
            self._replace([], through=None)
            return
        try:
            frames = [*self._frames, self._spark.createDataFrame(rows.select([SEEN_ID, SEEN_TIME]))]
            micros = pc.cast(rows.column(SEEN_TIME), "int64")
            self._index.add(rows.column(SEEN_ID).to_pylist(), micros.to_pylist())
            if len(frames) > self._compact_every and high_water is not None:
                merged = self._merge(frames, high_water)
                self._release(frames)
                frames = [merged]
                self._index.compact(_micros(high_water - 2 * timedelta(seconds=self._entity.watermark_s)))
        except Exception as exc:
            logger.warning(
                "the duplicate check's history could not take batch %d (%s); silver is read again by the next batch",
                batch_id,
                first_line(exc),
            )
            self._replace([], through=None)
            return
        if len(frames) == len(self._frames) + 1 and self._union is not None:  # one more frame: one more branch
            self._union = self._union.union(frames[-1])
        else:
            self._union = None
        self._frames, self._through = frames, batch_id

    def close(self) -> None:
        """Free the executors' memory the history holds."""
        self._replace([], through=None)

    def _load(self, batch_id: int, high_water: datetime) -> None:
        from pyspark.sql import functions as F  # noqa: PLC0415

        ids = silver_ids(self._spark, self._silver_uri, self._entity, batch_id, high_water)
        frame = ids.localCheckpoint(eager=True)
        self._replace([frame], through=batch_id - 1)
        loaded = frame.select(SEEN_ID, F.unix_micros(F.col(SEEN_TIME))).toArrow()
        self._index.add(loaded.column(0).to_pylist(), loaded.column(1).to_pylist())
        self.loads += 1
        logger.info("duplicate check of %s: silver's recent ids read for batch %d", self._entity.name, batch_id)

    def _merge(self, frames: list[DataFrame], high_water: datetime) -> DataFrame:
        from pyspark.sql import functions as F  # noqa: PLC0415

        union = reduce(lambda left, right: left.union(right), frames)
        # Frames are disjoint by construction (a batch's silver ids were not in the history): no distinct needed.
        window = union.where(F.col(SEEN_TIME) >= window_start(self._entity, high_water)).coalesce(self._cores())
        return window.localCheckpoint(eager=True)

    def _cores(self) -> int:
        return int(self._spark.sparkContext.defaultParallelism)

    def _replace(self, frames: list[DataFrame], *, through: int | None) -> None:
        kept = {id(frame) for frame in frames}
        self._release([frame for frame in self._frames if id(frame) not in kept])
        self._frames, self._through, self._union = frames, through, None
        self._index = IdIndex()  # filled again by _load

    @staticmethod
    def _release(frames: list[DataFrame]) -> None:
        """Drop the checkpointed blocks of ``frames`` now (Spark frees them only when the JVM collects the RDD)."""
        for frame in frames:
            try:
                frame._jdf.queryExecution().logical().rdd().unpersist(False)
            except Exception as exc:  # an internal API that moved: the JVM's cleaner frees them later
                logger.debug("checkpointed history not released: %s", first_line(exc))


def _micros(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
