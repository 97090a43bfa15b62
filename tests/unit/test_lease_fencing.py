"""What a fenced entity means to the driver and to its supervisor: paused while the writer lease is unconfirmed
(with the time it began), resumed when the lease is confirmed again, failed for good once another writer took it;
and ``ingest_health`` calls an entity paused longer than a lease TTL degraded."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from pipelines.ingest import driver
from pipelines.ingest.driver import GoldQueries, IngestQueries
from pipelines.lake.lease import TableLease
from pipelines.lake.maintenance import MAX_PAUSED_S, ingest_health
from tierlake.config import Settings
from tierlake.errors import IngestFailed

NOW = 1_800_000_000.0
WHY = "writer lease 'ingest-ev' unconfirmed: EndpointConnectionError: Could not connect to the endpoint URL"


def _status(paused_s: float | None, **more: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"running": True, "pid": 7, "seconds_since_update": 1.0, "paused": {"ev": WHY}}
    if paused_s is not None:
        status["paused_since"] = {"ev": NOW - paused_s}
    return status | more


def test_a_short_pause_is_a_blip_and_still_ok() -> None:
    health = ingest_health(_status(MAX_PAUSED_S - 1), max_staleness_s=300, now=NOW)
    assert (health.verdict, health.reason) == ("ok", "alive and fresh")


def test_an_entity_paused_longer_than_the_threshold_is_degraded_with_why_and_the_fix() -> None:
    health = ingest_health(_status(95), max_staleness_s=300, now=NOW)
    assert health.verdict == "degraded"
    assert health.reason.startswith(f"ev paused for 95 s > max_paused_s 30: {WHY}. Fix: ")
    assert "`tierlake stack status`" in health.reason
    assert "`tierlake ingest stop` then `tierlake ingest start`" in health.reason


def test_the_threshold_is_the_callers_and_a_pause_with_no_start_counts_as_long() -> None:
    assert ingest_health(_status(95), max_staleness_s=300, max_paused_s=120, now=NOW).verdict == "ok"
    unknown = ingest_health(_status(None), max_staleness_s=300, now=NOW)
    assert unknown.verdict == "degraded"
    assert "ev paused for an unknown time" in unknown.reason


def test_dead_failed_and_stale_outrank_a_long_pause() -> None:
    assert ingest_health(_status(95, running=False), max_staleness_s=300, now=NOW).verdict == "dead"
    failed = _status(95, failed={"corpus": {"error": "boom"}})
    assert ingest_health(failed, max_staleness_s=300, now=NOW).verdict == "failed"
    assert ingest_health(_status(95, seconds_since_update=301.0), max_staleness_s=300, now=NOW).verdict == "stale"


def test_no_pause_is_ok() -> None:
    status = {"running": True, "pid": 7, "seconds_since_update": 1.0, "paused": {}, "paused_since": {}}
    assert ingest_health(status, max_staleness_s=300, now=NOW).verdict == "ok"


class _Lease:
    """What the driver reads of a lease: ``may_commit``, ``lost``, ``last_error``, ``name``, ``check``."""

    def __init__(self) -> None:
        self.name = "ingest-ev"
        self.lost = threading.Event()
        self.confirmed = True
        self.last_error = ""

    def may_commit(self) -> bool:
        return self.confirmed and not self.lost.is_set()

    def check(self) -> None:
        return None


class _Query:
    def __init__(self, name: str) -> None:
        self.name, self.isActive, self.lastProgress = name, True, None

    def stop(self) -> None:
        self.isActive = False


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The entities whose ingest query was started (start_ingest stubbed: no Spark)."""
    calls: list[str] = []

    def start_ingest(spark: Any, settings: Any, *, entity: str, **_: Any) -> _Query:
        calls.append(entity)
        return _Query(f"ingest_{entity}")

    monkeypatch.setattr(driver, "start_ingest", start_ingest)
    return calls


def _queries(lease: _Lease) -> IngestQueries:
    spark = SimpleNamespace(streams=SimpleNamespace(active=[]))
    leases = {"ev": cast("TableLease", lease)}
    return IngestQueries(cast("Any", spark), cast("Settings", None), trigger_s=1.0, leases=leases)


def test_an_unconfirmed_lease_pauses_and_a_confirmed_one_resumes_however_long_it_took(started: list[str]) -> None:
    lease = _Lease()
    ingest = _queries(lease)
    ingest.start("ev")
    lease.confirmed, lease.last_error = False, "ReadTimeoutError: Read timeout"
    before = time.time()
    ingest.watch()
    assert "ev" not in ingest.queries
    assert ingest.paused == {"ev": "writer lease 'ingest-ev' unconfirmed: ReadTimeoutError: Read timeout"}
    assert before <= ingest.paused_since["ev"] <= time.time()
    since = ingest.paused_since["ev"]
    ingest.watch()
    assert ingest.paused_since == {"ev": since}  # the pause keeps its start while it lasts
    lease.confirmed = True  # the next renewal created the next generation: nobody else took the lease
    ingest.watch()
    assert "ev" in ingest.queries
    assert (ingest.paused, ingest.paused_since, ingest.failed) == ({}, {}, {})
    assert started == ["ev", "ev"]


def test_a_lease_taken_over_fails_the_entity_for_good_even_once_it_is_free(started: list[str]) -> None:
    lease = _Lease()
    ingest = _queries(lease)
    ingest.start("ev")
    lease.confirmed = False
    ingest.watch()
    lease.lost.set()
    with pytest.raises(IngestFailed, match="the writer lease 'ingest-ev' was taken over"):
        ingest.watch()
    assert (ingest.paused, ingest.paused_since) == ({}, {})
    assert set(ingest.failed) == {"ev"}
    assert started == ["ev"]


def test_the_status_file_says_since_when_an_entity_is_paused(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    driver._write_status(path, [], {}, {"ev": WHY}, paused_since={"ev": NOW})
    status = json.loads(path.read_text(encoding="utf-8"))
    assert (status["paused"], status["paused_since"]) == ({"ev": WHY}, {"ev": NOW})
    health = ingest_health(status | {"running": True, "seconds_since_update": 0.0}, max_staleness_s=300, now=NOW + 31)
    assert health.verdict == "degraded"


def _gold(monkeypatch: pytest.MonkeyPatch) -> tuple[GoldQueries, list[_Query]]:
    """Gold queries whose start is stubbed (no Spark); the queries it started, in order."""
    made: list[_Query] = []

    def start_gold(spark: Any, settings: Any, *, entity: str, **_: Any) -> _Query:
        made.append(_Query(f"gold_{entity}"))
        return made[-1]

    monkeypatch.setattr(driver, "start_gold", start_gold)
    return GoldQueries(cast("Any", None), cast("Settings", None), trigger_s=60.0), made


def _settle(gold: GoldQueries, entities: list[str]) -> None:
    """Let the background starts end, then collect them."""
    gold._starter.submit(lambda: None).result(timeout=10)  # the one starter thread runs in order
    gold.start_missing(entities)


def test_gold_stops_with_a_paused_or_failed_entity_and_starts_only_when_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gold, made = _gold(monkeypatch)
    gold.start_missing(["ev"])
    _settle(gold, ["ev"])
    assert list(gold.queries) == ["ev"]
    gold.stop(["ev"])  # the driver's loop: ev is paused or failed
    assert gold.queries == {}
    _wait_for(lambda: not made[0].isActive)
    gold.start_missing([])  # ev is not allowed (its lease unconfirmed): nothing starts
    _settle(gold, [])
    assert (gold.queries, len(made)) == ({}, 1)
    gold.start_missing(["ev"])  # confirmed again: gold starts again
    _settle(gold, ["ev"])
    assert list(gold.queries) == ["ev"]
    assert len(made) == 2
    gold.close()


def test_a_gold_start_that_ends_after_its_entity_paused_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    gold, made = _gold(monkeypatch)
    gold.start_missing(["ev"])
    _settle(gold, [])  # collected after ev was paused: the new query is stopped, not kept
    assert gold.queries == {}
    _wait_for(lambda: not made[0].isActive)
    gold.close()


def _wait_for(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
