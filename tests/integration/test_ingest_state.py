"""The ingest driver's state beside its batches: the duplicate check's in-memory history
(``pipelines.ingest.recent_ids``) against a silver-shaped Delta table (it holds what silver holds of earlier batches
in the window, reads silver only when it must, merges and prunes), and silver's log checkpoints written beside the
commits (``pipelines.ingest.log_checkpoints``).

The whole ingest path with duplicates across batches, driver kills and restarts is the exactly-once oracle
(``test_ingest.py``); this pins the history's own rules, each of which the oracle would only see as a wrong count.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from pipelines.ingest.log_checkpoints import LogCheckpoints
from pipelines.ingest.recent_ids import SEEN_ID, SEEN_TIME, RecentIds
from tierlake.config import Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

MARK = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def ids_table(batch: list[tuple[str, datetime]]) -> pa.Table:
    """A batch's silver ids as the driver hands them to the history (``Outcomes.kept``)."""
    return pa.table(
        {
            SEEN_ID: pa.array([i for i, _ in batch], pa.string()),
            SEEN_TIME: pa.array([t for _, t in batch], pa.timestamp("us", tz="UTC")),
        }
    )


def _ids(frame: DataFrame | None) -> set[str]:
    assert frame is not None
    return {row[SEEN_ID] for row in frame.collect()}


def test_history_is_silver_of_earlier_batches_and_reads_it_only_when_it_must(
    spark: SparkSession, settings: Settings, tmp_path: Path
) -> None:
    entity = settings.entities["ev"]
    watermark = timedelta(seconds=entity.watermark_s)
    uri = f"file://{tmp_path}/silver"
    schema = f"`{entity.event_id}` string, `{entity.event_time}` timestamp, _batch_id long"

    def append(rows: list[tuple[str, datetime, int]]) -> None:
        spark.createDataFrame(rows, schema).write.format("delta").mode("append").save(uri)

    def batch_ids(batch: list[tuple[str, datetime]]) -> pa.Table:
        return ids_table(batch)

    append(
        [
            ("a", MARK - watermark, 0),
            ("b", MARK, 0),
            ("c", MARK - timedelta(minutes=1), 1),
            ("old", MARK - 3 * watermark, 0),  # before the window: never looked at
            ("later", MARK, 2),  # the batch being judged (a replay): not its own history
        ]
    )
    history = RecentIds(spark, silver_uri=uri, entity=entity, compact_every=2)

    assert _ids(history.seen(2, MARK)) == {"a", "b", "c"}
    assert (history.loads, history.through) == (1, 1)

    # Kept in memory from now on: a row written to silver behind the driver's back is not read.
    append([("sneaky", MARK, 0)])
    history.add(2, batch_ids([("d", MARK)]), MARK)
    assert _ids(history.seen(3, MARK)) == {"a", "b", "c", "d"}
    history.add(3, batch_ids([("e", MARK + watermark)]), MARK)  # a third frame: the frames are merged into one
    assert history.frames == 1
    history.add(4, batch_ids([("f", MARK + watermark)]), MARK + watermark)
    assert history.frames == 2
    assert history.loads == 1
    # The window moves with the mark: from two watermarks before it.
    assert _ids(history.seen(5, MARK + 2 * watermark)) == {"b", "d", "e", "f"}
    assert _ids(history.seen(5, MARK + 3 * watermark)) == {"e", "f"}

    # A batch that does not follow the last one taken (another query wrote in between): silver is read again,
    # as of the batches before it (d, e and f were never written to this silver).
    assert _ids(history.seen(7, MARK)) == {"a", "b", "c", "later", "sneaky"}
    assert (history.loads, history.through) == (2, 6)
    # An add out of turn drops the history; the next batch reads silver.
    history.add(9, batch_ids([("g", MARK)]), MARK)
    assert history.through is None
    assert _ids(history.seen(10, MARK)) == {"a", "b", "c", "sneaky", "later"}
    assert history.loads == 3

    # No mark: no silver row before this batch, so nothing seen, and the next batch follows on without a read.
    fresh = RecentIds(spark, silver_uri=f"file://{tmp_path}/none", entity=entity)
    assert fresh.seen(0, None) is None
    fresh.add(0, batch_ids([("h", MARK)]), MARK)
    assert _ids(fresh.seen(1, MARK)) == {"h"}
    assert fresh.loads == 0
    history.close()
    fresh.close()
    assert history.frames == fresh.frames == 0


def test_log_checkpoints_are_written_beside_the_commits(spark: SparkSession, tmp_path: Path) -> None:
    """Silver's log checkpoints (``pipelines.ingest.log_checkpoints``): at each multiple of ``every`` on a table with
    a long interval, none inside the commits and none on a table whose interval Delta keeps short."""

    def commits(uri: str, count: int, interval: int) -> None:
        for index in range(count):
            rows = spark.createDataFrame([(index,)], "n long").write.format("delta").mode("append")
            rows.option("delta.checkpointInterval", str(interval)).save(uri)
            checkpoints.after_commit(uri)
            assert checkpoints.wait(timeout_s=60)  # one commit after the other, as a live stream's

    checkpoints = LogCheckpoints(spark, every=3)
    long_interval, short_interval = tmp_path / "long", tmp_path / "short"
    commits(f"file://{long_interval}", 8, interval=100)
    assert sorted(path.name for path in (long_interval / "_delta_log").glob("*.checkpoint.parquet")) == [
        "00000000000000000003.checkpoint.parquet",
        "00000000000000000006.checkpoint.parquet",
    ]
    assert checkpoints.written == 2
    # A reader no one here wrote starts from the last checkpoint and replays the one commit after it.
    from deltalake import DeltaTable  # noqa: PLC0415

    outside = DeltaTable(str(long_interval))
    assert outside.version() == 7
    assert sorted(outside.to_pyarrow_table().column("n").to_pylist()) == list(range(8))
    commits(f"file://{short_interval}", 4, interval=2)  # Delta writes these itself (versions 2): none of ours
    assert checkpoints.written == 2
    assert [path.name for path in (short_interval / "_delta_log").glob("*.checkpoint.parquet")] == [
        "00000000000000000002.checkpoint.parquet"
    ]


def test_a_batch_looks_up_only_the_ids_the_drivers_index_may_hold_and_both_probes_agree(
    spark: SparkSession, settings: Settings, tmp_path: Path
) -> None:
    """``RecentIds.among``: the driver's index (``pipelines.ingest.id_index``) lets a batch of new ids skip the
    probe; a repeated id is looked up in the executors' frames and found, also after a merge pruned the window.
    ``seen_among`` gives the same answer with its ``IN`` list and with its join."""
    from pipelines.ingest import recent_ids  # noqa: PLC0415

    entity = settings.entities["ev"]
    watermark = timedelta(seconds=entity.watermark_s)
    schema = f"`{entity.event_id}` string, `{entity.event_time}` timestamp, _batch_id long"
    uri = f"file://{tmp_path}/silver"
    spark.createDataFrame([("a", MARK, 0), ("b", MARK - watermark, 0)], schema).write.format("delta").save(uri)

    def add(history: RecentIds, batch_id: int, rows: list[tuple[str, datetime]], mark: datetime) -> None:
        history.add(batch_id, ids_table(rows), mark)

    history = RecentIds(spark, silver_uri=uri, entity=entity, compact_every=2)
    assert history.among(1, MARK, pa.array(["new", "other"])) == set()  # silver read (a, b): neither is there
    assert (history.loads, history.probes) == (1, 0)
    assert history.among(1, MARK, pa.array(["new", "a"])) == {"a"}
    assert history.probes == 1
    later = MARK + 2 * watermark  # the window then starts at MARK: b falls out
    add(history, 1, [("c", MARK)], MARK)
    add(history, 2, [("d", MARK + watermark)], later)  # a third frame: merged and pruned, index with it
    assert history.frames == 1
    assert history.among(3, later, pa.array(["b", "c", "d", "x"])) == {"c", "d"}
    assert history.among(3, later, pa.array(["x", "y"])) == set()
    assert history.probes == 2
    add(history, 3, [("f", MARK)], later)
    assert history.among(4, later, pa.array(["x", "f"])) == {"f"}
    assert history.probes == 3
    history.close()

    seen = spark.createDataFrame([(f"id{i}",) for i in range(3000)], f"{SEEN_ID} string")
    wanted = [f"id{i}" for i in range(0, 6000, 2)]  # 3,000 ids: past the IN list's limit
    expected = {f"id{i}" for i in range(0, 3000, 2)}
    assert recent_ids.seen_among(seen, pa.array(wanted)) == expected
    assert len(wanted) > recent_ids.IN_LIST_LIMIT >= 200
    assert recent_ids.seen_among(seen, wanted[:200]) == {f"id{i}" for i in range(0, 400, 2)}
    assert recent_ids.seen_among(None, wanted) == set()
