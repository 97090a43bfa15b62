"""``tierlake ingest run``: for each entity, Kafka -> bronze and silver/quarantine/dropped in one query
(``pipelines.ingest.stream``), then silver -> gold, until caught up. The driver holds the writer lease of each entity's
tables while it writes them (``pipelines.lake.lease``): Delta on S3 without DynamoDB needs a single writer, and a second
driver refuses to start, naming the owner."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.ingest.gold import run_gold_until_caught_up, schema_changed, start_gold
from pipelines.ingest.silver import silver_tables
from pipelines.ingest.stream import data_loss, run_ingest_until_caught_up, start_ingest
from pipelines.lake.lease import TableLease
from tierlake.config import Settings
from tierlake.errors import CommitConflict, IngestFailed, TierlakeError, first_line
from tiers.s3 import s3_client

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

try:  # pyspark is installed with tierlake; the import only names the error a failed query raises
    from pyspark.errors import StreamingQueryException as StreamingQueryError
except ImportError:  # pragma: no cover
    StreamingQueryError = RuntimeError  # type: ignore[misc,assignment]

logger = logging.getLogger(__name__)


def entity_leases(settings: Settings, entities: list[str]) -> list[TableLease]:
    """The writer lease of each entity's tables (not yet taken)."""
    client = s3_client(settings.s3)
    return [TableLease(client, settings.s3.lake_bucket, f"ingest-{entity}") for entity in entities]


@contextmanager
def holding(leases: list[TableLease]) -> Iterator[list[TableLease]]:
    """Take every lease (refusing at once, naming the owner, if one is held) and renew them until the end."""
    taken: list[TableLease] = []
    try:
        for lease in leases:
            lease.acquire()
            taken.append(lease)
            lease.start_renewing()
        yield leases
    finally:
        for lease in taken:
            lease.release()


def run_until_caught_up(
    spark: SparkSession, settings: Settings, *, entities: list[str], leases: list[TableLease] | None = None
) -> dict[str, Any]:
    """Bronze and silver, then gold, for each entity; returns per-entity row counts and seconds.

    ``leases``: already held by the caller (the CLI takes them before it pays for a JVM); else taken here.
    """
    for entity in entities:
        silver_tables(settings, entity)  # refuse unknown entities before any work
    if leases is None:
        with holding(entity_leases(settings, entities)) as held:
            return run_until_caught_up(spark, settings, entities=entities, leases=held)
    report: dict[str, Any] = {}
    errors: list[TierlakeError] = []
    for entity in entities:
        started = time.monotonic()
        failures: dict[str, dict[str, Any]] = {}
        try:
            lease = dict(zip(entities, leases, strict=True))[entity]
            counts = run_ingest_until_caught_up(spark, settings, entity=entity, failures=failures, gate=lease.check)
        except (TierlakeError, StreamingQueryError) as exc:
            # One entity's failure does not stop the others; the run ends with its error once they are done.
            error = exc if isinstance(exc, TierlakeError) else IngestFailed(f"ingest {entity}: {first_line(exc)}")
            errors.append(error)
            report[entity] = {"failed": str(error), **failures.get(entity, {})}
            logger.error("ingest %s failed: %s", entity, error, extra={"entity": entity})
            continue
        _check(leases)
        run_gold_until_caught_up(spark, settings, entity=entity)
        _check(leases)
        report[entity] = {
            **{k: counts[k] for k in ("bronze", "silver", "quarantine", "dropped")},
            "seconds": round(time.monotonic() - started, 1),
        }
        logger.info("ingest %s: %s", entity, report[entity], extra={"entity": entity})
    if errors:
        raise IngestFailed("; ".join(str(e) for e in errors), report=report) from errors[0]
    return report


def _check(leases: list[TableLease]) -> None:
    for lease in leases:
        if lease.lost.is_set():
            raise CommitConflict(f"lost the writer lease {lease.name!r} mid-run; another driver owns these tables now")


def run_continuous(
    spark: SparkSession,
    settings: Settings,
    *,
    entities: list[str],
    trigger_s: float,
    stop: threading.Event,
    status_file: Path | None = None,
    leases: list[TableLease] | None = None,
) -> dict[str, Any]:
    """Keep the ingest (bronze + silver) and gold queries of ``entities`` running on a ``trigger_s`` trigger until
    ``stop`` is set.

    Holds every entity's writer lease throughout (``leases`` if the caller took them, else taken here); a lost
    lease or a failed query stops all queries and raises. A gold query starts once its silver table exists, and
    starts again when a silver schema upgrade ends it (Delta stops readers of a table whose schema changed).
    """
    if leases is None:
        with holding(entity_leases(settings, entities)) as held:
            return run_continuous(
                spark, settings, entities=entities, trigger_s=trigger_s, stop=stop, status_file=status_file, leases=held
            )
    ingest = IngestQueries(spark, settings, trigger_s=trigger_s, leases=dict(zip(entities, leases, strict=True)))
    gold: dict[str, Any] = {}  # entity -> its gold query, once started
    try:
        for entity in entities:
            ingest.start(entity)
        _start_gold(spark, settings, entities, trigger_s, gold)
        if status_file is not None:
            _write_status(status_file, [*ingest.queries.values(), *gold.values()], ingest.failed, ingest.paused)
        while not stop.wait(min(trigger_s, 2.0)):
            ingest.watch()
            for entity, query in list(gold.items()):
                if not query.isActive:
                    if not schema_changed(query.exception()):
                        raise _stopped(query)
                    logger.info("gold %s: silver's schema changed; starting the gold query again", entity)
                    del gold[entity]
            _start_gold(spark, settings, [e for e in entities if e not in ingest.failed], trigger_s, gold)
            if status_file is not None:
                _write_status(status_file, [*ingest.queries.values(), *gold.values()], ingest.failed, ingest.paused)
    finally:
        logger.info("stopping the streaming queries of %s", entities)
        if status_file is not None:  # a driver that ends on failures leaves them for `ingest status`
            _write_status(status_file, [*ingest.queries.values(), *gold.values()], ingest.failed, ingest.paused)
        for query in [*ingest.queries.values(), *gold.values()]:
            query.stop()
    return {"stopped": [q.name for q in [*ingest.queries.values(), *gold.values()]], "failed": ingest.failed}


class IngestQueries:
    """The running ingest queries of a driver. A query that stops is started again from its checkpoint (exactly
    once: the ledger skips what its failed batch already wrote), at most :attr:`RESTARTS` times in a row with a
    growing pause; then its entity is marked failed (batch, offsets, reason: ``ingest status`` shows it) and the
    other entities run on. Data loss is not retried. When no entity is left running, :meth:`watch` raises.

    Fencing: an entity whose writer lease cannot be confirmed (an object-store outage) is *paused*: its query is
    stopped and every commit checks the lease first (``gate``), so nothing is written on an unconfirmed lease; it
    starts again from its checkpoint once the lease is confirmed. A lease taken over by another driver fails the
    entity for good.
    """

    RESTARTS = 3

    def __init__(
        self,
        spark: SparkSession,
        settings: Settings,
        *,
        trigger_s: float,
        leases: Mapping[str, TableLease] | None = None,
    ) -> None:
        self._spark, self._settings, self._trigger_s = spark, settings, trigger_s
        self._leases = dict(leases or {})
        self.queries: dict[str, Any] = {}
        self.failed: dict[str, dict[str, Any]] = {}
        self.paused: dict[str, str] = {}  # entity -> why (its lease is unconfirmed)
        self._batch_failures: dict[str, dict[str, Any]] = {}
        self._restarts: dict[str, int] = {}

    def start(self, entity: str) -> None:
        lease = self._leases.get(entity)
        self.queries[entity] = start_ingest(
            self._spark,
            self._settings,
            entity=entity,
            trigger_s=self._trigger_s,
            failures=self._batch_failures,
            gate=lease.check if lease is not None else None,
        )

    def _fence(self) -> None:
        """Pause the entities whose lease is unconfirmed, resume those confirmed again, fail those lost."""
        for entity, lease in self._leases.items():
            if lease.lost.is_set() and entity not in self.failed:
                if (query := self.queries.pop(entity, None)) is not None:
                    query.stop()
                self.paused.pop(entity, None)
                self.failed[entity] = {"error": f"ingest {entity}: the writer lease {lease.name!r} was taken over"}
                logger.error("ingest %s stopped for good: its lease was taken over", entity, extra={"entity": entity})
            elif entity in self.paused and lease.may_commit():
                del self.paused[entity]
                logger.warning("ingest %s resumes: its lease is confirmed again", entity, extra={"entity": entity})
                self.start(entity)
            elif entity in self.queries and not lease.may_commit():
                self.queries.pop(entity).stop()
                self.paused[entity] = f"writer lease {lease.name!r} unconfirmed: {lease.last_error or 'no answer'}"
                logger.error("ingest %s paused: %s", entity, self.paused[entity], extra={"entity": entity})

    def watch(self) -> None:
        """Fence by the leases, restart or mark failed each stopped query; raise when none is left to run."""
        self._fence()
        for entity, query in list(self.queries.items()):
            if query.isActive:
                if (query.lastProgress or {}).get("numInputRows"):
                    self._restarts.pop(entity, None)  # it got past the batch that failed
                continue
            lost = data_loss(query.exception(), self._settings, entity=entity)
            error = lost or _stopped(query)
            del self.queries[entity]
            tries = self._restarts.get(entity, 0)
            if lost is None and tries < self.RESTARTS:
                self._restarts[entity] = tries + 1
                logger.warning("ingest %s stopped (%s); restart %d of %d", entity, error, tries + 1, self.RESTARTS)
                time.sleep(2.0**tries)
                self.start(entity)
                continue
            self.failed[entity] = {"error": str(error), **self._batch_failures.get(entity, {})}
            logger.error("ingest %s failed for good: %s", entity, self.failed[entity], extra={"entity": entity})
        if not self.queries and not self.paused:
            raise IngestFailed("; ".join(f["error"] for f in self.failed.values()))


def _stopped(query: Any) -> CommitConflict:
    """The error for a streaming query that stopped: the first line of Spark's message (the rest, a query plan,
    goes to the log)."""
    error = query.exception()
    logger.error("streaming query %s stopped", query.name, exc_info=error)  # the whole error: log file only
    return CommitConflict(f"streaming query {query.name} stopped: {first_line(error)} (the whole error is in the log)")


def _start_gold(
    spark: SparkSession, settings: Settings, entities: list[str], trigger_s: float, gold: dict[str, Any]
) -> None:
    """Start the gold query of each entity that has none yet and whose silver table exists.

    A gold query that cannot start (its silver table unreadable) is logged and tried again on the next round: it
    never takes the driver, and so the other entities' ingestion, down with it.
    """
    for entity in entities:
        if entity not in gold:
            try:
                query = start_gold(spark, settings, entity=entity, trigger_s=trigger_s)
            except Exception as exc:  # one entity's gold must not stop the others
                logger.warning("gold %s cannot start yet: %s", entity, first_line(exc), extra={"entity": entity})
                continue
            if query is not None:
                gold[entity] = query


def _write_status(
    path: Path,
    queries: list[Any],
    failed: dict[str, dict[str, Any]] | None = None,
    paused: dict[str, str] | None = None,
) -> None:
    progress = {q.name: (q.lastProgress or {}) for q in queries}
    status = {
        "updated": time.time(),
        "failed": failed or {},
        "paused": paused or {},
        "queries": {
            name: {
                k: p.get(k)
                for k in ("batchId", "numInputRows", "inputRowsPerSecond", "processedRowsPerSecond", "timestamp")
            }
            for name, p in progress.items()
        },
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status), encoding="utf-8")
    os.replace(tmp, path)
