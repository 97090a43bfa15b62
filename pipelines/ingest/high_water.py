"""Silver's high-water mark for the ``late_event`` rule, from the Delta log's file statistics.

A driver that starts (or restarts after a crash) needs, for the batch it is about to judge, the highest event time
that earlier batches committed to silver. It used to scan silver whole for it (``max(ts)`` per ``_batch_id``), and
so opened every data file: after the lifecycle purged old days from the object store (their copies on tape), the
scan failed and ingestion could not start. Every ``add`` action in the log already holds what is needed: the
minimum and maximum of ``_batch_id`` and the maximum event time of its file (written by Spark and by delta-rs for
the first 32 columns). So :class:`HighWater` reads the log (delta-rs, no Spark job, no data file) and opens a data
file only in two cases, both of recent files, never of a purged day:

- a file without those statistics (a table written with statistics off for them);
- a file that holds the batch being judged *and* earlier ones (OPTIMIZE merged them) while that batch is replayed
  after a crash: its statistics cannot say which of its rows are earlier, so those rows are read.

Exactness. Delta keeps timestamp statistics to the millisecond (truncated: Spark and delta-rs both write them so),
so the mark is kept to the millisecond everywhere: the mark a running driver notes after each batch
(:meth:`HighWater.record`) is truncated the same way, and a batch replayed by a restarted driver is judged exactly
as its first attempt was. The late rule's boundary moves by less than a millisecond against a mark to the
microsecond; its limit, ``watermark_s``, is whole seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from tierlake.errors import NotFound, StorageError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

logger = logging.getLogger(__name__)
BATCH = "_batch_id"
_MAX_MICROS = int((datetime(9999, 12, 31, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 10**6


def from_micros(micros: int) -> datetime:
    """Microseconds since the epoch as an aware datetime, held within the years 1970-9999.

    Spark timestamps reach past Python's year 9999; a value there (only a table written before strict parsing can
    hold one) must not stop a batch: it is clamped, and so judges every later event as not late.
    """
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=min(max(int(micros), 0), _MAX_MICROS))


def to_millis(moment: datetime) -> datetime:
    """``moment`` in UTC, truncated to the millisecond (the precision of Delta's timestamp statistics)."""
    moment = moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


@dataclass(frozen=True)
class FileSpan:
    """One data file of silver as its log entry describes it: its batches and its highest event time."""

    path: str  # as the log names it (relative to the table, or absolute)
    first_batch: int
    last_batch: int
    high: datetime | None  # None: the file holds no event time (every row null)


@dataclass(frozen=True)
class LogScan:
    """Silver's data files from its log: those with statistics, and those that have none for the mark."""

    spans: list[FileSpan]
    unknown: list[str]  # paths of files without _batch_id or event-time statistics


def scan_log(rows: list[dict[str, Any]], event_time: str) -> LogScan:
    """Split the log's ``add`` actions (delta-rs ``get_add_actions(flatten=True)``, as rows) by their statistics."""
    spans, unknown = [], []
    for row in rows:
        first, last = row.get(f"min.{BATCH}"), row.get(f"max.{BATCH}")
        high, records, nulls = row.get(f"max.{event_time}"), row.get("num_records"), row.get(f"null_count.{event_time}")
        if first is None or last is None:
            unknown.append(str(row["path"]))
        elif high is None and not (records is not None and nulls is not None and nulls == records):
            unknown.append(str(row["path"]))  # no statistics for the event time (not: every value null)
        else:
            spans.append(FileSpan(str(row["path"]), int(first), int(last), to_millis(high) if high else None))
    return LogScan(spans, unknown)


class HighWater:
    """Silver's highest event time of the batches before a given one, for the ``late_event`` rule.

    Loaded once, the first time it is asked, from silver's Delta log (:func:`scan_log`; see the module's
    docstring), then kept up to date by :meth:`record` as the query commits batches: a batch costs no read of
    silver however large silver grows, and a restart opens no data file of a purged day.

    ``storage_options``: delta-rs options for the table's object store (:func:`tiers.s3.delta_storage_options`).
    """

    def __init__(
        self, spark: SparkSession, silver_uri: str, event_time: str, *, storage_options: Mapping[str, str]
    ) -> None:
        self._spark, self._uri, self._event_time = spark, silver_uri, event_time
        self._options = dict(storage_options)
        self._scan: LogScan | None = None
        self._settled: tuple[int, datetime | None] = (-1, None)  # (highest batch in the log, its files' mark)
        self._by_batch: dict[int, datetime] = {}  # exact marks: files without statistics, then recorded batches

    def _load(self) -> LogScan:
        if self._scan is None:
            self._scan = scan_log(_add_actions(self._uri, self._options), self._event_time)
            spans = self._scan.spans
            highs = [s.high for s in spans if s.high is not None]
            self._settled = (max((s.last_batch for s in spans), default=-1), max(highs) if highs else None)
            if self._scan.unknown:
                logger.warning(
                    "silver %s: %d file(s) without _batch_id/%s statistics; reading them for the high-water mark",
                    self._uri,
                    len(self._scan.unknown),
                    self._event_time,
                )
                self._by_batch.update(self._read(self._scan.unknown, below=None))
        return self._scan

    def before(self, batch_id: int) -> datetime | None:
        """The highest event time in silver from batches earlier than ``batch_id`` (None: no history)."""
        scan = self._load()
        highs = [high for batch, high in self._by_batch.items() if batch < batch_id]
        top, settled = self._settled
        if batch_id > top:  # every file of the log is earlier: their statistics answer (the usual case)
            highs += [settled] if settled is not None else []
        else:  # a replay of a batch the log already holds
            highs += [s.high for s in scan.spans if s.last_batch < batch_id and s.high is not None]
            mixed = [s.path for s in scan.spans if s.first_batch < batch_id <= s.last_batch]
            highs += self._read(mixed, below=batch_id).values() if mixed else []
        return max(highs) if highs else None

    def warm(self) -> None:
        """Read silver's log now (a query's start) rather than in its first batch."""
        self._load()

    def record(self, batch_id: int, high: datetime | None) -> None:
        """Note the highest event time that batch ``batch_id`` committed to silver."""
        if high is not None:
            high = to_millis(high)
            self._by_batch[batch_id] = max(high, self._by_batch.get(batch_id, high))

    def _read(self, paths: list[str], *, below: int | None) -> dict[int, datetime]:
        """The exact mark per batch of the rows of ``paths`` (only batches before ``below``), read by Spark."""
        from pyspark.errors import PySparkException  # noqa: PLC0415
        from pyspark.sql import functions as F  # noqa: PLC0415

        uris = [p if "://" in p else f"{self._uri.rstrip('/')}/{p}" for p in paths]
        try:
            frame = self._spark.read.parquet(*uris).select(BATCH, self._event_time)
            if below is not None:
                frame = frame.where(F.col(BATCH) < below)
            rows = frame.groupBy(BATCH).agg(F.max(F.unix_micros(F.col(self._event_time))).alias("high")).collect()
        except PySparkException as exc:  # PySpark raises the JVM's errors as these (UnknownException at least)
            raise NotFound(
                f"silver {self._uri}: the high-water mark needs {len(uris)} data file(s) the log has no statistics "
                f"for, and reading them failed ({str(exc).splitlines()[0][:300]}); first: {uris[0]}. Fix: recall "
                "them if they were purged (`tierlake archive recall`), or give the table statistics for _batch_id "
                "and the event time (`delta.dataSkippingStatsColumns`) and rewrite those files (OPTIMIZE)"
            ) from exc
        return {int(r[BATCH]): to_millis(from_micros(r["high"])) for r in rows if r["high"] is not None}


def _add_actions(uri: str, storage_options: Mapping[str, str]) -> list[dict[str, Any]]:
    """The ``add`` actions of the table's latest version (flattened statistics); none if there is no table yet."""
    import pyarrow as pa  # noqa: PLC0415
    from deltalake import DeltaTable  # noqa: PLC0415
    from deltalake.exceptions import DeltaError, TableNotFoundError  # noqa: PLC0415

    location = uri.replace("s3a://", "s3://", 1)
    try:
        table = DeltaTable(location, storage_options=dict(storage_options))
    except TableNotFoundError:
        return []
    except (DeltaError, OSError) as exc:
        raise StorageError(
            f"silver {location}: reading its Delta log for the high-water mark failed ({exc}). "
            "Fix: check that the object store is up (`tierlake stack status`) and the table's log is readable"
        ) from exc
    rows: list[dict[str, Any]] = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    return rows
