"""Where each row of a micro-batch goes, decided on the driver from a few columns of the batch.

A batch's rows are judged by the rules in the streaming plan (:mod:`pipelines.ingest.rules`) and by the high-water
mark (``late_event``, :func:`pipelines.ingest.silver.with_late_rule`). What is left needs the batch as a whole and
silver's history: a valid record is a duplicate (dropped, ``duplicate_event_id``) when an earlier copy of its event
id is in this batch or in silver. That used to be decided in Spark: a window over the batch by event id (a shuffle)
and a join against silver's recent ids, which Spark broadcast in full each batch. On a live batch of a few hundred
records those were four of its Spark jobs, waiting on each other and on bronze's append for the two cores.

Here the batch's *facts* come to the driver instead (:func:`batch_facts`: per row its Kafka position and time, its
event id, whether it is valid, its event time and whether it is flagged, with the record of a flagged one; one job,
which also fills the batch's cache that the appends read). The history is probed for this batch's ids only, and
only for those the driver's index may hold (:meth:`pipelines.ingest.recent_ids.RecentIds.among`: usually none),
and :func:`decide` settles the rest in plain Python. The appends then read the cached batch and filter it by what
was decided (:func:`with_dropped`): no shuffle, and every outcome's count is known before any append starts, so a
table that gets no row is not written at all. The flagged rows (a few in a hundred) come with their records, so
the flags' append writes them from the driver: no scan of the cached batch beside silver's append (a 20,000-record
batch took 0.55 s longer with the flags' append than without it when it scanned, about 0.4 s from the driver,
docs/decisions.md).

The rule is the same as before, a pure function of the records: the first copy of an id is the one Kafka received
first (its timestamp), then partition, then offset, among the batch's rows that carry a typed record (valid rows and
``late_event`` ones: a late copy received first makes a later valid copy a duplicate); a valid row is dropped when
it is not that first copy, or when silver holds the id from an earlier batch. A replayed batch collects the same
facts and probes the same history (batches before it), so it is decided as its first attempt was.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from pipelines.ingest.high_water import from_micros
from pipelines.ingest.offsets import Ranges
from pipelines.ingest.recent_ids import SEEN_ID, SEEN_TIME
from pipelines.session import built
from tierlake.entities import EntitySpec

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame

DUPLICATE = "duplicate_event_id"
KEY = ("topic", "partition", "offset")
"""A row of a batch, by its place in Kafka."""
FLAG_RECORD = "_flag_rec"
"""The facts' column with a flagged row's record (the struct ``_rec``; null for every other row)."""


@dataclass(frozen=True)
class Outcomes:
    """What :func:`decide` settled for one batch."""

    counts: dict[str, int]  # silver, quarantine, dropped (and flagged, with a flag rule)
    high: datetime | None  # the highest event time among its silver rows
    offsets: Ranges  # topic -> partition -> (first, last offset) of its rows
    dropped: pa.Table  # KEY of each row dropped as a duplicate
    kept: pa.Table  # _seen_id and _seen_time of each silver row (what the duplicate check's history gains)
    flags: pa.Table | None = None  # the record (the entity's fields) of each flagged silver row; None: no flag rule


def batch_facts(judged: DataFrame, *, entity: EntitySpec, flag_rule: Callable[[], Column] | None = None) -> pa.Table:
    """The facts :func:`decide` needs, one row per row of ``judged`` (a batch with ``rule`` including
    ``late_event``): KEY, ``kafka_us``, ``event_id`` (null without a typed record), ``valid``, ``event_us`` and
    ``flagged`` (``flag_rule()`` on the record struct ``_rec``; false without one), and with a flag rule
    :data:`FLAG_RECORD`, the record of each valid row it flags."""

    def columns() -> list[Column | str]:
        from pyspark.sql import functions as F  # noqa: PLC0415

        valid = F.col("rule").isNull()
        flagged = valid & (F.coalesce(flag_rule(), F.lit(False)) if flag_rule is not None else F.lit(False))
        record = [F.when(flagged, F.col("_rec")).alias(FLAG_RECORD)] if flag_rule is not None else []
        return [
            *KEY,
            F.unix_micros("kafka_timestamp").alias("kafka_us"),
            F.col(f"_rec.`{entity.event_id}`").alias("event_id"),
            valid.alias("valid"),
            F.when(valid, F.unix_micros(F.col(f"_rec.`{entity.event_time}`"))).alias("event_us"),
            flagged.alias("flagged"),
            *record,
        ]

    key = ("facts", repr(entity), repr(flag_rule))
    return judged.select(*built(judged.sparkSession, key, columns)).toArrow()


def probe_ids(facts: pa.Table) -> pa.Array:
    """The distinct event ids of the batch's valid rows: the ones to look for in the history."""
    import pyarrow.compute as pc  # noqa: PLC0415

    return pc.unique(facts.filter(facts["valid"])["event_id"])


def decide(facts: pa.Table, seen: Collection[str]) -> Outcomes:
    """Each row's outcome from the batch's facts (:func:`batch_facts`) and the ids silver already holds (``seen``,
    from earlier batches)."""
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.compute as pc  # noqa: PLC0415

    typed = facts.filter(pc.is_valid(facts["event_id"]))
    repeated = pc.value_counts(typed["event_id"])
    twice = repeated.field("values").filter(pc.greater(repeated.field("counts"), 1))
    dropped: list[tuple[str, int, int]] = []
    if len(twice):  # rare: the copies of the ids seen twice, in the order that makes the first one first
        copies = typed.filter(pc.is_in(typed["event_id"], value_set=twice))
        # As Spark orders: a missing Kafka timestamp (never seen) first.
        copies = copies.set_column(
            copies.schema.get_field_index("kafka_us"), "kafka_us", pc.fill_null(copies["kafka_us"], -(2**63))
        ).sort_by([(name, "ascending") for name in ("event_id", "kafka_us", "partition", "offset")])
        previous = None
        for row in copies.to_pylist():
            if row["event_id"] == previous and row["valid"]:
                dropped.append((row["topic"], row["partition"], row["offset"]))
            previous = row["event_id"]
    if seen:
        known = pa.array(list(seen), typed.schema.field("event_id").type)
        again = typed.filter(pc.and_(typed["valid"], pc.is_in(typed["event_id"], value_set=known)))
        dropped += zip(*(again[name].to_pylist() for name in KEY), strict=True)
    dropped = sorted(set(dropped))
    keys = pa.table(
        {name: pa.array([row[i] for row in dropped], facts.schema.field(name).type) for i, name in enumerate(KEY)}
    )

    valid = pc.sum(facts["valid"].cast(pa.int64())).as_py() or 0
    out = facts.filter(facts["valid"])
    if dropped:  # Arrow's join carries no struct column (the flagged records): join the places, then take the rows
        place = out.select(list(KEY)).append_column("_row", pa.array(range(out.num_rows), pa.int64()))
        rows = place.join(keys, list(KEY), join_type="left anti")["_row"]
        out = out.take(pc.take(rows, pc.sort_indices(rows)))
    counts = {"silver": out.num_rows, "quarantine": facts.num_rows - valid, "dropped": len(dropped)}
    counts["flagged"] = pc.sum(out["flagged"].cast(pa.int64())).as_py() or 0
    high = pc.max(out["event_us"]).as_py()
    offsets: Ranges = {}
    for row in facts.group_by(["topic", "partition"]).aggregate([("offset", "min"), ("offset", "max")]).to_pylist():
        offsets.setdefault(row["topic"], {})[int(row["partition"])] = (row["offset_min"], row["offset_max"])
    high_water = from_micros(high) if high is not None else None
    kept = pa.table({SEEN_ID: out["event_id"], SEEN_TIME: out["event_us"].cast(pa.timestamp("us", tz="UTC"))})
    flags = None
    if FLAG_RECORD in out.column_names:
        records = out.filter(out["flagged"])[FLAG_RECORD].combine_chunks()
        flags = pa.Table.from_struct_array(records)
    return Outcomes(counts, high_water, offsets, keys, kept, flags)


def with_dropped(judged: DataFrame, dropped: pa.Table) -> DataFrame:
    """``judged`` with the column ``dropped``: ``duplicate_event_id`` on the rows :func:`decide` dropped, else null
    (no join at all in the usual batch, which drops nothing)."""
    from pyspark.sql import functions as F  # noqa: PLC0415

    if dropped.num_rows == 0:
        return judged.withColumn("dropped", F.lit(None).cast("string"))
    marks = judged.sparkSession.createDataFrame(dropped).withColumn("dropped", F.lit(DUPLICATE))
    return judged.join(F.broadcast(marks), list(KEY), "left")
