"""The report's figures as Prometheus metrics, for ``tierlake metrics serve``: one endpoint for the whole lake.

Names follow Prometheus' conventions: one ``tierlake_`` prefix, base units (seconds, bytes), ``_total`` on counters,
ratios from 0 to 1, and labels of bounded cardinality only (table, topic and partition, site, cartridge, state,
rule, level, tier). The edge cache's counters come from its own collector (``tiers.cache.metrics``) and the tables'
carry the names of the text file that ``tierlake table stats`` writes (one name table for both:
``pipelines.lake.maintenance.TABLE_METRICS``), read live, so the text files are no longer needed where the endpoint
is scraped.

A scrape does not gather the lake: ``metrics serve`` starts the collector's background thread, which gathers a new
report every ``max_age_s`` (gathering reads every table's log and Kafka's offsets, seconds of work) while scrapes
are answered from the last one; ``tierlake_report_age_seconds`` says how old it is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipelines.lake.maintenance import TABLE_METRICS
from pipelines.observe.gather import LakeReport
from pipelines.observe.verdicts import Level

logger = logging.getLogger(__name__)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"tierlake_{name}", doc, labels=labels)


def ingestion_families(report: LakeReport) -> Iterator[Metric]:
    fresh = _gauge(
        "ingest_freshness_seconds", "Kafka timestamp to the silver commit, latest commit", ["entity", "quantile"]
    )
    window = _gauge(
        "ingest_window_records", "records Kafka stamped in the report window, by outcome", ["entity", "outcome"]
    )
    quarantine = _gauge("ingest_quarantine_records", "quarantined records in the window, by rule", ["entity", "rule"])
    unbalanced = _gauge(
        "reconcile_problem_offsets", "offsets that do not reconcile, by kind", ["topic", "partition", "kind"]
    )
    for ingest in report.ingestion:
        if ingest.freshness:
            _, p50, p99, _ = ingest.freshness[-1]
            fresh.add_metric([ingest.entity, "0.5"], p50)
            fresh.add_metric([ingest.entity, "0.99"], p99)
        for outcome, n in ingest.window_counts.items():
            window.add_metric([ingest.entity, outcome], n)
        for rule, n in ingest.quarantine_by_rule.items():
            quarantine.add_metric([ingest.entity, rule], n)
        for p in ingest.reconcile:
            for kind in ("missing", "unexpected", "repeated", "holes"):
                unbalanced.add_metric([str(p["topic"]), str(p["partition"]), kind], p[kind])
    yield from (fresh, window, quarantine, unbalanced)


def lag_families(report: LakeReport) -> Iterator[Metric]:
    labels = ["topic", "partition"]
    lag = _gauge("kafka_consumer_lag_records", "records Kafka holds past the ingest query's committed offset", labels)
    end = _gauge("kafka_end_offset", "the partition's log end offset", labels)
    committed = _gauge("kafka_committed_offset", "the next offset the ingest query reads", labels)
    state = _gauge("kafka_lag_state", "Burrow-style state over the window: 1 for the current state", [*labels, "state"])
    for p in report.lag:
        key = [p.topic, str(p.partition)]
        lag.add_metric(key, p.window[-1].lag)
        end.add_metric(key, p.window[-1].end)
        committed.add_metric(key, p.window[-1].committed)
        state.add_metric([*key, p.state.value], 1)
    yield from (lag, end, committed, state)


def table_extra_families(report: LakeReport) -> Iterator[Metric]:
    """What the report adds to ``table stats``' families: the last OPTIMIZE, VACUUM and checkpoint."""
    optimize = _gauge(
        "table_last_optimize_timestamp_seconds",
        "Unix time of the last OPTIMIZE within the commits scanned (pipelines.observe.tables.OPERATION_SCAN)",
        ["table"],
    )
    vacuum = _gauge(
        "table_last_vacuum_timestamp_seconds", "Unix time of the last VACUUM (its lineage record)", ["table"]
    )
    since = _gauge("table_versions_since_checkpoint", "commits since the table's last checkpoint", ["table"])
    checkpointed = _gauge(
        "table_last_checkpoint_timestamp_seconds", "Unix time the last checkpoint was written", ["table"]
    )
    for row in report.tables:
        if not row.exists:
            continue
        if row.last_optimize_s is not None:
            optimize.add_metric([row.table], row.last_optimize_s)
        if row.last_vacuum_s is not None:
            vacuum.add_metric([row.table], row.last_vacuum_s)
        since.add_metric([row.table], row.version - (row.last_checkpoint if row.last_checkpoint is not None else -1))
        if row.last_checkpoint_s is not None:
            checkpointed.add_metric([row.table], row.last_checkpoint_s)
    yield from (optimize, vacuum, since, checkpointed)


def archive_families(report: LakeReport) -> Iterator[Metric]:
    used = _gauge("tape_site_used_bytes", "bytes written to the site's cartridges", ["site"])
    capacity = _gauge("tape_site_capacity_bytes", "capacity of the site's cartridges", ["site"])
    files = _gauge("archive_files", "archived files by state", ["state"])
    holds = _gauge("archive_legal_hold_files", "archived files under legal hold", [])
    bad = _gauge("archive_verify_bad_files", "bad files found by the cartridge's last verify", ["cartridge"])
    last = _gauge("archive_verify_last_timestamp_seconds", "Unix time of the cartridge's last verify", ["cartridge"])
    archive = report.archive or {}
    for site in archive.get("sites", []):
        used.add_metric([site["site"]], site["used_bytes"])
        capacity.add_metric([site["site"]], site["capacity_bytes"])
    for state, n in archive.get("states", {}).items():
        files.add_metric([state], n)
    holds.add_metric([], archive.get("holds", 0))
    for cartridge, verify in archive.get("verifies", {}).items():
        bad.add_metric([cartridge], verify["bad"])
        last.add_metric([cartridge], verify["at_s"])
    yield from (used, capacity, files, holds, bad, last)


def report_families(report: LakeReport) -> Iterator[Metric]:
    verdicts = _gauge("report_verdicts", "verdicts of the last report by level", ["level"])
    for level in Level:
        verdicts.add_metric([level.name], sum(1 for x in report.verdicts if x.level is level))
    built = _gauge("report_timestamp_seconds", "Unix time the figures were gathered", [])
    built.add_metric([], report.generated_s)
    yield from (verdicts, built)


def training_families(report: LakeReport) -> Iterator[Metric]:
    """Committed checkpoints per tier and the newest committed step (a tier that could not be listed has neither:
    its figures are unknown, and its verdict is ERR)."""
    count = _gauge(
        "training_checkpoints", "committed training checkpoints (steps, over every run) on the tier", ["tier"]
    )
    newest = _gauge("training_newest_committed_step", "the highest committed step of any run on the tier", ["tier"])
    for row in report.checkpoints or []:
        if row.error:
            continue
        count.add_metric([row.tier], row.checkpoints)
        if row.newest_step is not None:
            newest.add_metric([row.tier], row.newest_step)
    yield from (count, newest)


def table_families(report: LakeReport) -> Iterator[Metric]:
    rows = [r for r in report.tables if r.exists]
    for field_name, (name, doc) in TABLE_METRICS.items():  # the names of `table stats`' text file, shared
        family = _gauge(f"table_{name}", doc, ["table"])
        for row in rows:
            family.add_metric([row.table], float(getattr(row, field_name)))
        yield family


def lake_families(report: LakeReport) -> Iterator[Metric]:
    """Every family of one report (the edge cache's are its own collector's)."""
    yield from table_families(report)
    yield from table_extra_families(report)
    yield from ingestion_families(report)
    yield from lag_families(report)
    yield from archive_families(report)
    yield from report_families(report)
    yield from training_families(report)


class LakeCollector(Collector):
    """Serves the last report's families. Started (:meth:`start`, as ``metrics serve`` does), a background thread
    gathers a new report every ``max_age_s`` and a scrape never gathers: it answers at once with the last report
    (only the very first scrape waits for the first one), so a slow lake never times a scrape out. Not started (a
    test, a one-off), a scrape gathers when the last report is older than ``max_age_s``."""

    def __init__(self, gather: Callable[[], LakeReport], *, max_age_s: float) -> None:
        self._gather = gather
        self._max_age_s = max_age_s
        self._lock = threading.Lock()
        self._report: LakeReport | None = None
        self._took_s = 0.0
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> LakeReport:
        """Gather a report now and serve it from here on."""
        started = time.monotonic()
        report = self._gather()
        with self._lock:
            self._report, self._took_s = report, time.monotonic() - started
        self._ready.set()
        return report

    def _loop(self) -> None:
        from pipelines.observe.gather import source_errors  # noqa: PLC0415

        while not self._stop.is_set():
            try:
                self.refresh()
            except source_errors() as exc:  # the last report is served meanwhile; its age gauge shows it growing
                logger.warning("metrics: gathering the lake failed, the last figures stay: %s", exc)
            finally:
                self._ready.set()  # with no report yet, the first scrape gathers itself and shows the error
            self._stop.wait(self._max_age_s)

    def start(self) -> None:
        """Gather in the background from now on (every ``max_age_s``)."""
        self._thread = threading.Thread(target=self._loop, name="tierlake-metrics-gather", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def report(self) -> LakeReport:
        if self._thread is not None:
            self._ready.wait()  # the first gathering (done or failed); later scrapes never wait
        with self._lock:
            current = self._report
        if current is None:  # nothing gathered yet (or the first background gathering failed): gather here
            return self.refresh()
        if self._thread is None and time.time() - current.generated_s > self._max_age_s:
            return self.refresh()
        return current

    def collect(self) -> Iterator[Metric]:
        report = self.report()
        yield from lake_families(report)
        took = GaugeMetricFamily("tierlake_report_build_seconds", "how long the last gathering took")
        took.add_metric([], self._took_s)
        age = GaugeMetricFamily("tierlake_report_age_seconds", "age of the figures served (gathered in the background)")
        age.add_metric([], max(0.0, time.time() - report.generated_s))
        yield from (took, age)
