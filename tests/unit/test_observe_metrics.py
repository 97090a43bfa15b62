"""Every metric ``tierlake metrics serve`` exposes follows Prometheus' naming conventions, and the Grafana dashboard
in infra/grafana/ asks only for metrics that exist. The families are built from a report with every part filled in
and from a real edge cache on a local folder, so a name added anywhere is linted here."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from pipelines.lake.maintenance import TABLE_METRICS, TableStats, export_metrics
from pipelines.observe import verdicts as v
from pipelines.observe.checkpoints import CheckpointTierRow
from pipelines.observe.gather import LakeReport, TableRow
from pipelines.observe.ingestion import EntityIngest
from pipelines.observe.lag import PartitionLag
from pipelines.observe.metrics import LakeCollector, lake_families
from tiers.cache import CacheOptions, EdgeCache
from tiers.cache.metrics import CacheCollector
from tiers.store import LocalStore

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "infra" / "grafana" / "tierlake.json"
NAME = re.compile(r"^tierlake_[a-z][a-z0-9]*(_[a-z0-9]+)*$")
UNIT_ABBREVIATIONS = {"s", "ms", "us", "sec", "secs", "min", "kb", "mb", "gb", "kib", "mib", "pct", "percent"}
BOUNDED_LABELS = {
    "table", "topic", "partition", "entity", "quantile", "outcome", "rule", "kind", "state", "site", "cartridge",
    "level", "tier",
}  # fmt: skip


def full_report() -> LakeReport:
    sample = v.LagSample(100.0, 5, 505)
    lag = PartitionLag(
        topic="ev.telemetry",
        partition=0,
        window=[v.LagSample(50.0, 5, 5), sample],
        waiting_s=400.0,
        state=v.LagState.STALLED,
        verdict=v.lag_verdict("ev.telemetry", 0, v.LagState.STALLED, sample, waiting_s=400.0, driver_running=False),
    )
    ingest = EntityIngest(
        entity="ev",
        topic="ev.telemetry",
        freshness=[(90.0, 1.2, 3.4, 50)],
        rates=[(80.0, 10, 5.0), (90.0, 40, 10.0)],
        quarantine_by_rule={"out_of_range": 3},
        window_counts={"silver": 50, "quarantine": 3, "dropped": 1},
        reconcile=[{"topic": "ev.telemetry", "partition": 0, "missing": 0, "unexpected": 0, "repeated": 0, "holes": 0}],
    )
    table = TableRow(
        table="silver/ev",
        exists=True,
        version=12,
        files=3,
        small_files=3,
        bytes=3000,
        rows=50,
        last_commit_s=90.0,
        last_checkpoint=10,
        last_optimize_s=70.0,
        last_vacuum_s=60.0,
    )
    archive = {
        "sites": [{"site": "site-a", "cartridges": 2, "used_bytes": 10, "capacity_bytes": 100, "per_cartridge": {}}],
        "states": {"VERIFIED": 4},
        "holds": 1,
        "cartridges": {"A00001": {"cartridge": "A00001", "site": "site-a", "files": 4, "bytes": 10}},
        "verifies": {"A00001": {"at": "2026-01-01T00:00:00+00:00", "at_s": 1.7e9, "checked": 4, "bad": 1}},
    }
    return LakeReport(
        generated_s=100.0,
        since_s=0.0,
        verdicts=[lag.verdict],
        ingestion=[ingest],
        lag=[lag],
        tables=[table],
        archive=archive,
        checkpoints=[
            CheckpointTierRow(tier="local", runs=1, checkpoints=3, newest_step=300, newest_run="r1"),
            CheckpointTierRow(tier="rgw", error="endpoint unreachable"),
        ],
    )


def cache_collector(tmp_path: Path) -> CacheCollector:
    (tmp_path / "origin" / "lake").mkdir(parents=True)
    store = LocalStore(tmp_path / "origin")
    store.pipe_file("lake", "t/part-0.parquet", b"x" * 5000)
    cache = EdgeCache(store, CacheOptions(directory=tmp_path / "cache", max_bytes=1 << 20))
    cache.cat("lake", "t/part-0.parquet")
    cache.cat("lake", "t/part-0.parquet")
    return CacheCollector(cache)


def all_families(tmp_path: Path) -> list[Metric]:
    registry = CollectorRegistry()
    registry.register(LakeCollector(full_report, max_age_s=1e12))
    registry.register(cache_collector(tmp_path))
    return list(registry.collect())


def naming_problems(families: list[Metric]) -> list[str]:
    """Every way the families break Prometheus' naming conventions (empty: none)."""
    problems = []
    for family in families:
        name, words = family.name, family.name.split("_")
        if not NAME.match(name):
            problems.append(f"{name}: not tierlake_ followed by lower-case words")
        if abbreviated := UNIT_ABBREVIATIONS & set(words[1:]):
            problems.append(f"{name}: unit abbreviation {sorted(abbreviated)}; use base units (seconds, bytes)")
        if "timestamp" in words and not name.endswith("_timestamp_seconds"):
            problems.append(f"{name}: a time of day is *_timestamp_seconds")
        for sample in family.samples:
            if family.type == "counter" and not sample.name.endswith(("_total", "_created")):
                problems.append(f"{sample.name}: a counter's sample ends in _total")
            if family.type == "gauge" and sample.name.endswith("_total"):
                problems.append(f"{sample.name}: _total is for counters")
            if name.endswith("_ratio") and not 0 <= sample.value <= 1:
                problems.append(f"{sample.name} = {sample.value}: a ratio lies in 0..1")
            if unbounded := set(sample.labels) - BOUNDED_LABELS:
                problems.append(f"{sample.name}: label(s) {sorted(unbounded)} may have unbounded cardinality")
    return problems


def test_every_metric_name_follows_the_conventions(tmp_path: Path) -> None:
    families = all_families(tmp_path)
    assert len(families) > 30
    problems = naming_problems(families)
    assert not problems, "\n".join(problems)


def tables_text_file(tmp_path: Path) -> list[Metric]:
    """The families of the text file ``tierlake table stats`` writes, parsed back."""
    stats = TableStats(
        table="silver/ev",
        version=12,
        files=3,
        bytes=3000,
        rows=50,
        small_files=3,
        last_commit_s=90.0,
        partitions=2,
        max_files_per_partition=2,
    )
    text = export_metrics([stats], tmp_path / "tables.prom").read_text()
    return list(text_string_to_metric_families(text))


def test_the_tables_text_file_follows_the_conventions_and_the_endpoint_serves_its_names(tmp_path: Path) -> None:
    families = tables_text_file(tmp_path)
    assert len(families) == len(TABLE_METRICS)
    problems = naming_problems(families)
    assert not problems, "\n".join(problems)
    served = {family.name for family in lake_families(full_report())}
    missing = sorted({family.name for family in families} - served)
    assert not missing, f"in table stats' text file but not on the endpoint: {missing}"
    assert 'tierlake_table_last_commit_timestamp_seconds{table="silver/ev"} 90.0' in generate_latest_text(tmp_path)


def generate_latest_text(tmp_path: Path) -> str:
    registry = CollectorRegistry()
    registry.register(LakeCollector(full_report, max_age_s=1e12))
    return generate_latest(registry).decode()


def test_the_endpoint_text_holds_the_lake_and_the_cache(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    registry.register(LakeCollector(full_report, max_age_s=1e12))
    registry.register(cache_collector(tmp_path))
    text = generate_latest(registry).decode()
    assert 'tierlake_kafka_consumer_lag_records{partition="0",topic="ev.telemetry"} 500.0' in text
    assert 'tierlake_kafka_lag_state{partition="0",state="STALLED",topic="ev.telemetry"} 1.0' in text
    assert 'tierlake_table_small_files{table="silver/ev"} 3.0' in text
    assert 'tierlake_archive_verify_bad_files{cartridge="A00001"} 1.0' in text
    assert "tierlake_cache_hits_total 1.0" in text
    assert "tierlake_cache_misses_total 1.0" in text
    assert 'tierlake_training_checkpoints{tier="local"} 3.0' in text
    assert 'tierlake_training_newest_committed_step{tier="local"} 300.0' in text
    assert 'tier="rgw"' not in text  # could not be listed: unknown, not 0


def test_a_scrape_reuses_a_fresh_report() -> None:
    built: list[LakeReport] = []

    def gather() -> LakeReport:
        report = full_report()
        report.generated_s = datetime.now(UTC).timestamp()
        built.append(report)
        return report

    collector = LakeCollector(gather, max_age_s=3600)
    list(collector.collect())
    list(collector.collect())
    assert len(built) == 1
    stale = LakeCollector(gather, max_age_s=0)
    list(stale.collect())
    list(stale.collect())
    assert len(built) == 3


def test_a_started_collector_gathers_in_the_background_and_a_scrape_never_waits_for_it() -> None:
    gathered: list[LakeReport] = []
    slow_started, release = threading.Event(), threading.Event()

    def gather() -> LakeReport:
        if gathered:  # every gathering after the first is slow, as a busy lake's is
            slow_started.set()
            release.wait(30)
        report = full_report()
        report.generated_s = time.time()
        gathered.append(report)
        return report

    collector = LakeCollector(gather, max_age_s=0.01)
    collector.start()
    try:
        first = collector.report()  # the very first scrape waits for the first report
        assert slow_started.wait(10), "the background did not gather again"
        for _ in range(3):  # while the background is stuck in a slow gathering
            started = time.monotonic()
            families = {family.name: family for family in collector.collect()}
            assert time.monotonic() - started < 1.0, "a scrape waited for a gathering"
            assert families["tierlake_report_age_seconds"].samples[0].value >= 0
            assert collector.report() is first
        release.set()
        deadline = time.monotonic() + 10
        while collector.report() is first and time.monotonic() < deadline:
            time.sleep(0.01)
        assert collector.report() is not first  # the newer report is served once gathered
    finally:
        release.set()
        collector.stop()


def exposed_names(tmp_path: Path) -> set[str]:
    return {sample.name for family in all_families(tmp_path) for sample in family.samples} | {
        family.name for family in lake_families(full_report())
    }


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]


def test_the_dashboard_asks_only_for_metrics_that_exist(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 8
    asked = {name for expr in exprs for name in re.findall(r"\btierlake_[a-z0-9_]+", expr)}
    missing = sorted(asked - exposed_names(tmp_path))
    assert not missing, f"infra/grafana/tierlake.json asks for metrics nobody exposes: {missing}"


@pytest.mark.parametrize("part", ["kafka_", "table_", "ingest_", "cache_", "tape_", "archive_", "training_"])
def test_the_dashboard_covers_each_part(part: str) -> None:
    assert any(f"tierlake_{part}" in expr for expr in dashboard_exprs()), f"no panel on tierlake_{part}*"
