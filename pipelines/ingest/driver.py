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
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.ingest.gold import run_gold_until_caught_up, schema_changed, start_gold
from pipelines.ingest.silver import silver_tables
from pipelines.ingest.stream import data_loss, run_ingest_until_caught_up, start_ingest
from pipelines.lake.lease import TableLease, lease_client
from tierlake import catalog
from tierlake.config import Settings
from tierlake.errors import CommitConflict, IngestFailed, TierlakeError, first_line

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

try:  # pyspark is installed with tierlake; the import only names the error a failed query raises
    from pyspark.errors import StreamingQueryException as StreamingQueryError
except ImportError:  # pragma: no cover
    StreamingQueryError = RuntimeError  # type: ignore[misc,assignment]

logger = logging.getLogger(__name__)


def entity_leases(settings: Settings, entities: list[str]) -> list[TableLease]:
    """The writer lease of each entity's tables (not yet taken), on a client of single short calls: a renewal is
    retried by the lease itself, within its TTL."""
    ttl_s = settings.maintenance.lease_ttl_s
    client = lease_client(settings.s3, ttl_s=ttl_s)
    return [TableLease(client, settings.s3.lake_bucket, f"ingest-{entity}", ttl_s=ttl_s) for entity in entities]


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


def fence_commits(spark: SparkSession, settings: Settings, leases: dict[str, TableLease]) -> None:
    """Give each entity's lease deadline to Spark's Delta log store, as a fence at the storage layer.

    The lease's own check (the ledger's gate) runs before Delta plans a commit; a driver paused (SIGSTOP, a long GC)
    after it and resumed once another driver took over would still finish that commit. The log store
    (``infra/logstore``) checks the deadline again right before its PUT, on the JVM's monotonic clock, which runs on
    while the process is stopped. Only the conditional log store has the fence.
    """
    if settings.spark.delta_commits != "conditional":
        return
    store = spark._jvm.io.tierlake.delta.ConditionalPutLogStore  # type: ignore[union-attr]
    for entity, lease in leases.items():
        spec = settings.entities[entity]
        prefixes = [f"{t.s3a}/" for t in catalog.entity_tables(settings.s3.lake_bucket, entity, spec.topic)]

        def tell(seconds: float, prefixes: list[str] = prefixes) -> None:
            for prefix in prefixes:
                store.fence(prefix, int(seconds * 1000))

        lease.on_confirmed = tell
        tell(lease.valid_until - lease.margin_s - time.monotonic() if lease.may_commit() else 0.0)


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
    fence_commits(spark, settings, dict(zip(entities, leases, strict=True)))
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


# Gold's windows are 1 and 15 minutes long and its anomaly flags are written by the ingest batch itself, so gold
# need not run as often as ingestion: once per its shortest window is enough. Every gold batch is a MERGE with a
# fixed cost (8-9 s of a quiet 2-core machine): at a 10 s interval gold was busy most of the time and took a core
# from the ingest batches that freshness waits on (docs/decisions.md, "Gold on its own trigger").
GOLD_TRIGGER_FLOOR_S = 60.0


def gold_trigger(trigger_s: float, gold_trigger_s: float | None) -> float:
    """Gold's interval: ``gold_trigger_s`` if given, else the ingest trigger but at least 60 s."""
    return gold_trigger_s if gold_trigger_s is not None else max(trigger_s, GOLD_TRIGGER_FLOOR_S)


def run_continuous(
    spark: SparkSession,
    settings: Settings,
    *,
    entities: list[str],
    trigger_s: float,
    stop: threading.Event,
    status_file: Path | None = None,
    leases: list[TableLease] | None = None,
    gold_trigger_s: float | None = None,
) -> dict[str, Any]:
    """Keep the ingest (bronze + silver) queries of ``entities`` running on a ``trigger_s`` trigger, and their gold
    queries on ``gold_trigger_s`` (default :func:`gold_trigger`), until ``stop`` is set.

    Holds every entity's writer lease throughout (``leases`` if the caller took them, else taken here); a lost
    lease or a failed query stops all queries and raises. A gold query starts once its silver table exists, and
    starts again when a silver schema upgrade ends it (Delta stops readers of a table whose schema changed).
    """
    if leases is None:
        with holding(entity_leases(settings, entities)) as held:
            return run_continuous(
                spark,
                settings,
                entities=entities,
                trigger_s=trigger_s,
                stop=stop,
                status_file=status_file,
                leases=held,
                gold_trigger_s=gold_trigger_s,
            )
    fence_commits(spark, settings, dict(zip(entities, leases, strict=True)))
    ingest = IngestQueries(spark, settings, trigger_s=trigger_s, leases=dict(zip(entities, leases, strict=True)))
    gold = GoldQueries(spark, settings, trigger_s=gold_trigger(trigger_s, gold_trigger_s))

    def report() -> None:
        if status_file is not None:
            queries = [*ingest.queries.values(), *gold.queries.values()]
            _write_status(status_file, queries, ingest.failed, ingest.paused, paused_since=ingest.paused_since)

    try:
        for entity in entities:
            ingest.start(entity)
        gold.start_missing(entities)
        report()
        while not stop.wait(min(trigger_s, 2.0)):
            ingest.watch()
            # Gold writes under its entity's lease too: it stops with a paused or failed entity (its streaming
            # checkpoint is no Delta log, so the store's fence would not keep it from writing there), and starts
            # only where the lease is confirmed (the store answers: a start reads silver's log).
            gold.stop([*ingest.paused, *ingest.failed])
            gold.watch()
            gold.start_missing([e for e in entities if e in ingest.queries and leases[entities.index(e)].may_commit()])
            report()
    finally:
        logger.info("stopping the streaming queries of %s", entities)
        report()  # a driver that ends on failures leaves them for `ingest status`
        for query in [*ingest.queries.values(), *gold.queries.values()]:
            query.stop()
        gold.close()
    return {"stopped": [q.name for q in [*ingest.queries.values(), *gold.queries.values()]], "failed": ingest.failed}


class GoldQueries:
    """The gold queries of a driver. Each starts in the background once its silver table exists: a start reads
    silver's Delta log, which an object-store outage can hold for minutes, and the driver's loop (fencing,
    ``ingest status``) must not wait on it. A gold query that stops is started again (silver's schema changed, or
    it failed: logged, tried again after :attr:`RETRY_S`); it never takes the driver, and so ingestion, down."""

    RETRY_S = 30.0

    def __init__(self, spark: SparkSession, settings: Settings, *, trigger_s: float) -> None:
        self._spark, self._settings, self._trigger_s = spark, settings, trigger_s
        self.queries: dict[str, Any] = {}
        self._pending: dict[str, Future[Any]] = {}
        self._not_before: dict[str, float] = {}
        self._starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gold-start")

    def start_missing(self, entities: list[str]) -> None:
        """Collect finished starts; begin one for each of ``entities`` that has no gold query yet."""
        for entity, started in list(self._pending.items()):
            if not started.done():
                continue
            del self._pending[entity]
            try:
                query = started.result()
            except Exception as exc:  # one entity's gold must not stop the others
                logger.warning("gold %s cannot start yet: %s", entity, first_line(exc), extra={"entity": entity})
                self._not_before[entity] = time.monotonic() + self.RETRY_S
                continue
            if query is not None and entity in entities:
                self.queries[entity] = query
            elif query is not None:  # its entity paused or failed while the query started
                self._stop(entity, query)
        for entity in entities:
            if entity in self.queries or entity in self._pending:
                continue
            if time.monotonic() < self._not_before.get(entity, 0.0):
                continue
            self._pending[entity] = self._starter.submit(self._start, entity)

    def _start(self, entity: str) -> Any:
        return start_gold(self._spark, self._settings, entity=entity, trigger_s=self._trigger_s)

    def watch(self) -> None:
        for entity, query in list(self.queries.items()):
            if query.isActive:
                continue
            del self.queries[entity]
            if schema_changed(query.exception()):
                logger.info("gold %s: silver's schema changed; starting the gold query again", entity)
            else:
                logger.error("gold %s: %s; starting it again", entity, _stopped(query), extra={"entity": entity})
                self._not_before[entity] = time.monotonic() + self.RETRY_S

    def stop(self, entities: list[str]) -> None:
        """Stop the gold queries of ``entities`` (their lease is unconfirmed or lost); :meth:`start_missing` starts
        a paused one's again once its lease is confirmed."""
        for entity in entities:
            if (query := self.queries.pop(entity, None)) is not None:
                self._stop(entity, query)

    @staticmethod
    def _stop(entity: str, query: Any) -> None:
        logger.warning("gold %s stopped: its writer lease is not confirmed", entity, extra={"entity": entity})
        threading.Thread(target=query.stop, name=f"stop-gold-{entity}", daemon=True).start()

    def close(self) -> None:
        self._starter.shutdown(wait=False, cancel_futures=True)


class IngestQueries:
    """The running ingest queries of a driver. A query that stops is started again from its checkpoint (exactly
    once: the ledger skips what its failed batch already wrote), at most :attr:`RESTARTS` times in a row with a
    growing pause; then its entity is marked failed (batch, offsets, reason: ``ingest status`` shows it) and the
    other entities run on. Data loss is not retried. When no entity is left running, :meth:`watch` raises.

    Fencing: an entity whose writer lease cannot be confirmed (an object-store outage) is *paused*: its query is
    stopped and every commit checks the lease first (``gate``), so nothing is written on an unconfirmed lease; it
    starts again from its checkpoint once the lease is confirmed, however long that took (its next renewal then took
    the lease again: nobody else had). A lease taken over by another driver fails the entity for good, even if that
    driver has let it go since: two drivers would otherwise trade the entity at every blip, and this one's gold
    query of it ran on meanwhile; ``ingest stop`` and ``ingest start`` give a clean driver (docs/decisions.md, "A
    fenced driver takes its lease again only if nobody else took it").
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
        self.paused_since: dict[str, float] = {}  # entity -> when (unix) it was paused; kept while it stays paused
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

    def _stop_in_background(self, entity: str) -> None:
        """Stop ``entity``'s query without waiting: a batch stuck on an unreachable store would hold this loop
        (and ``ingest status``) for as long as its retries last. It starts again only once Spark no longer lists it."""
        query = self.queries.pop(entity)
        threading.Thread(target=query.stop, name=f"stop-{entity}", daemon=True).start()

    def _fence(self) -> None:
        """Pause the entities whose lease is unconfirmed, resume those confirmed again, fail those lost."""
        for entity, lease in self._leases.items():
            if lease.lost.is_set() and entity not in self.failed:
                if entity in self.queries:
                    self._stop_in_background(entity)
                self.paused.pop(entity, None)
                self.paused_since.pop(entity, None)
                self.failed[entity] = {"error": f"ingest {entity}: the writer lease {lease.name!r} was taken over"}
                logger.error("ingest %s stopped for good: its lease was taken over", entity, extra={"entity": entity})
            elif entity in self.queries and not lease.may_commit():
                self._stop_in_background(entity)
                self.paused[entity] = f"writer lease {lease.name!r} unconfirmed: {lease.last_error or 'no answer'}"
                self.paused_since.setdefault(entity, time.time())
                logger.error("ingest %s paused: %s", entity, self.paused[entity], extra={"entity": entity})
        running = {query.name for query in self._spark.streams.active}  # a query being stopped is still listed
        for entity in list(self.paused):
            held = self._leases.get(entity)
            if (held is None or held.may_commit()) and f"ingest_{entity}" not in running:
                logger.warning("ingest %s resumes", entity, extra={"entity": entity})
                self._restart(entity)

    def _restart(self, entity: str) -> None:
        """Start ``entity``'s query again; one that cannot start yet (the object store still down) stays paused."""
        self.paused.pop(entity, None)
        try:
            self.start(entity)
        except Exception as exc:  # retried on the next round; the lease decides when writing may go on
            self.paused[entity] = f"could not start again: {first_line(exc)}"
            self.paused_since.setdefault(entity, time.time())
            logger.warning("ingest %s %s", entity, self.paused[entity], extra={"entity": entity})
            return
        self.paused_since.pop(entity, None)

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
                self._restart(entity)
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


def _write_status(
    path: Path,
    queries: list[Any],
    failed: dict[str, dict[str, Any]] | None = None,
    paused: dict[str, str] | None = None,
    *,
    paused_since: dict[str, float] | None = None,
) -> None:
    progress = {q.name: (q.lastProgress or {}) for q in queries}
    status = {
        "updated": time.time(),
        "failed": failed or {},
        "paused": paused or {},
        "paused_since": paused_since or {},  # entity -> unix time: the supervisor judges how long it lasts
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
