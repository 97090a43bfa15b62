"""The Kafka offsets of an ingest micro-batch, from the query's own checkpoint rather than from its rows.

Every Delta commit of an ingest batch records the Kafka offsets it covers (``userMetadata``, the lineage's link from
a table version back to Kafka), and the commit needs them before it is made. They used to come from the batch's
rows, in a job that judged and counted the whole batch before any table could be written: silver waited for it.
Spark has written them already, before running the batch: ``<checkpoint>/offsets/<batch>`` holds the offset each
partition is read up to (exclusive), the batch before holds where it starts, and the first batch starts where the
Kafka source recorded its initial offsets (``<checkpoint>/sources/0/0``). Reading those costs one small GET.

The ranges are Kafka's, ``[start, end - 1]`` for each partition the batch advanced. On a topic written without
transactions and not compacted they are exactly the offsets of the batch's rows (the batch's counts check that,
:func:`differences`); a transaction's commit marker or a compacted record makes a range reach an offset no row
holds, which is still the range of the log the batch consumed.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from tierlake.errors import first_line

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)

Ranges = dict[str, dict[int, tuple[int, int]]]
"""topic -> partition -> (first, last offset) of one batch."""
Positions = dict[str, dict[int, int]]
"""topic -> partition -> the next offset to read."""


def parse_positions(text: str) -> Positions:
    """The Kafka source's offsets from a checkpoint file's text.

    ``offsets/<batch>``: a version line (``v1``), the batch's metadata as JSON, then one line per source (a single
    Kafka source here: ``{"topic": {"0": 42, ...}}``). ``sources/0/0``: a NUL byte, a version line, then the JSON.
    Raises ``ValueError`` on anything else (the caller falls back to the batch's rows).
    """
    lines = [line for line in text.lstrip("\x00").splitlines() if line.strip()]
    if not lines or not lines[0].startswith("v"):
        raise ValueError(f"no version line: {text[:80]!r}")
    sources = lines[2:] if len(lines) >= 3 else lines[1:]
    if len(sources) != 1:
        raise ValueError(f"expected one source, found {len(sources)}")
    raw = json.loads(sources[0])
    if not isinstance(raw, dict):
        raise ValueError(f"not a Kafka source's offsets: {sources[0][:80]!r}")
    return {str(topic): {int(p): int(o) for p, o in parts.items()} for topic, parts in raw.items()}


def ranges_between(start: Positions, end: Positions) -> Ranges:
    """The offsets a batch read: ``[start, end - 1]`` per partition that moved (a new partition starts at 0)."""
    ranges: Ranges = {}
    for topic, parts in end.items():
        for partition, stop in parts.items():
            begin = start.get(topic, {}).get(partition, 0)
            if stop > begin:
                ranges.setdefault(topic, {})[partition] = (begin, stop - 1)
    return ranges


def differences(logged: Ranges, seen: Ranges) -> list[str]:
    """Where the batch's rows (``seen``: each partition's lowest and highest offset) differ from the logged ranges."""
    keys = {(t, p) for t, parts in (*logged.items(), *seen.items()) for p in parts}
    return [
        f"{t}-{p}: log {logged.get(t, {}).get(p)}, rows {seen.get(t, {}).get(p)}"
        for t, p in sorted(keys)
        if logged.get(t, {}).get(p) != seen.get(t, {}).get(p)
    ]


def first_batch(offsets: list[int], commits: list[int]) -> int:
    """The batch a streaming query runs first, from the batch ids in its checkpoint's offset and commit logs: the
    last planned batch again when it did not commit (a replay after a crash), else the one after it."""
    planned = max(offsets, default=-1)
    return planned if planned > max(commits, default=-1) else planned + 1


class CheckpointOffsets:
    """The offset ranges of a query's batches, read from its checkpoint (``checkpoint``: its URI, as Spark has it).

    Keeps the end of the batch it read last, so a query running batch after batch reads one file per batch.
    """

    def __init__(self, spark: SparkSession, checkpoint: str) -> None:
        self._spark = spark
        self._checkpoint = checkpoint.rstrip("/")
        self._ends: dict[int, Positions] = {}

    def ranges(self, batch_id: int) -> Ranges | None:
        """Batch ``batch_id``'s ranges; None when the checkpoint cannot say (the caller reads the rows instead)."""
        try:
            end = self._positions(batch_id)
            start = self._positions(batch_id - 1) if batch_id > 0 else self._initial()
        except Exception as exc:  # any unreadable or unexpected file: the rows still tell
            logger.warning("offsets of batch %d not read from %s: %s", batch_id, self._checkpoint, first_line(exc))
            return None
        if end is None or start is None:
            return None
        self._ends = {batch_id: end}
        return ranges_between(start, end)

    def next_batch(self) -> int | None:
        """The id of the batch a query started on this checkpoint runs first (:func:`first_batch`); None when the
        checkpoint cannot be listed."""
        try:
            return first_batch(self._batches("offsets"), self._batches("commits"))
        except Exception as exc:
            logger.warning("batches of %s not listed: %s", self._checkpoint, first_line(exc))
            return None

    def _batches(self, kind: str) -> list[int]:
        """The batch ids in the checkpoint's ``offsets`` or ``commits`` log (its files' names)."""
        context = self._spark.sparkContext
        jvm = context._jvm
        assert jvm is not None
        path = jvm.org.apache.hadoop.fs.Path(f"{self._checkpoint}/{kind}")
        fs = path.getFileSystem(context._jsc.hadoopConfiguration())
        if not fs.exists(path):
            return []
        names = [str(status.getPath().getName()) for status in fs.listStatus(path)]
        return [int(name) for name in names if name.isdigit()]

    def _positions(self, batch_id: int) -> Positions | None:
        if batch_id in self._ends:
            return self._ends[batch_id]
        text = self._read(f"{self._checkpoint}/offsets/{batch_id}")
        return parse_positions(text) if text is not None else None

    def _initial(self) -> Positions | None:
        text = self._read(f"{self._checkpoint}/sources/0/0")
        return parse_positions(text) if text is not None else None

    def _read(self, uri: str) -> str | None:
        """A small file through Spark's own Hadoop file system (the checkpoint's, whatever its scheme)."""
        context = self._spark.sparkContext
        jvm = context._jvm
        assert jvm is not None
        path = jvm.org.apache.hadoop.fs.Path(uri)
        fs = path.getFileSystem(context._jsc.hadoopConfiguration())
        if not fs.exists(path):
            return None
        stream = fs.open(path)
        try:
            return str(jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
        finally:
            stream.close()
