"""The operator report's verdicts: Burrow-style lag over a window, table, ingestion, cache and tape judgements, and
the ``--since`` durations. Pure logic, no services."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.observe import verdicts as v
from pipelines.observe.archive import last_verifies
from pipelines.observe.lag import parse_offsets_file
from pipelines.observe.verdicts import LagSample, LagState, Level, judge_lag
from tierlake.commands.report import duration_s

GRACE = 60.0


def window(commits: list[tuple[float, int, int]]) -> list[LagSample]:
    return [LagSample(at, committed, end) for at, committed, end in commits]


def test_a_query_that_keeps_up_is_ok() -> None:
    assert judge_lag(window([(0, 10, 10), (5, 20, 20), (10, 30, 30)]), waiting_s=None) is LagState.OK


def test_a_stopped_driver_behind_its_topic_is_stalled() -> None:
    samples = window([(0, 100, 100), (10, 200, 200), (400, 200, 500)])  # no commit for 390 s, 300 records waiting
    assert judge_lag(samples, waiting_s=300.0, grace_s=GRACE) is LagState.STALLED


def test_records_waiting_less_than_the_grace_are_not_a_stall() -> None:
    samples = window([(0, 100, 100), (10, 200, 200), (400, 200, 500)])
    assert judge_lag(samples, waiting_s=5.0, grace_s=GRACE) is LagState.OK  # a burst just arrived


def test_a_driver_that_moves_but_falls_further_behind_is_lagging() -> None:
    samples = window([(0, 100, 150), (5, 150, 220), (10, 200, 300), (12, 200, 330)])
    assert judge_lag(samples, waiting_s=3.0, grace_s=GRACE) is LagState.LAGGING


def test_a_driver_catching_up_is_ok() -> None:
    samples = window([(0, 100, 400), (5, 200, 420), (10, 300, 430), (12, 300, 440)])
    assert judge_lag(samples, waiting_s=2.0, grace_s=GRACE) is LagState.OK


def test_two_samples_say_nothing_about_a_trend() -> None:
    assert judge_lag(window([(0, 100, 150), (5, 150, 250)]), waiting_s=1.0) is LagState.OK


offsets = st.integers(min_value=0, max_value=10**9)


@st.composite
def windows(draw: st.DrawFn) -> list[LagSample]:
    """Samples in time order with committed offsets that never go back and ends never below them."""
    n = draw(st.integers(min_value=1, max_value=12))
    at, committed, end = 0.0, draw(offsets), 0
    samples = []
    for _ in range(n):
        at += draw(st.floats(min_value=0.1, max_value=600))
        committed += draw(st.integers(min_value=0, max_value=1000))
        end = max(end, committed) + draw(st.integers(min_value=0, max_value=1000))
        samples.append(LagSample(at, committed, end))
    return samples


waits = st.one_of(st.none(), st.floats(min_value=0, max_value=10**6))


@given(windows(), waits)
def test_no_lag_now_is_always_ok(samples: list[LagSample], waiting: float | None) -> None:
    last = samples[-1]
    caught_up = [*samples[:-1], LagSample(last.at_s, last.committed, last.committed)]
    assert judge_lag(caught_up, waiting_s=waiting) is LagState.OK


@given(windows(), waits, st.integers(min_value=0, max_value=10**9))
def test_shifting_every_offset_changes_nothing(samples: list[LagSample], waiting: float | None, by: int) -> None:
    shifted = [LagSample(s.at_s, s.committed + by, s.end + by) for s in samples]
    assert judge_lag(shifted, waiting_s=waiting) is judge_lag(samples, waiting_s=waiting)


@given(windows(), st.floats(min_value=0, max_value=10**5), st.floats(min_value=0, max_value=10**5))
def test_waiting_longer_never_makes_a_stall_better(samples: list[LagSample], wait: float, more: float) -> None:
    if judge_lag(samples, waiting_s=wait) is LagState.STALLED:
        assert judge_lag(samples, waiting_s=wait + more) is LagState.STALLED


@given(windows(), waits)
def test_a_window_of_one_sample_never_lags(samples: list[LagSample], waiting: float | None) -> None:
    assert judge_lag(samples[-1:], waiting_s=waiting) is not LagState.LAGGING


def test_every_problem_verdict_names_its_fix() -> None:
    with pytest.raises(ValueError, match="names no fix"):
        v.Verdict(section="s", subject="x", level=Level.WARN, value="bad")


def test_lag_fix_depends_on_whether_a_driver_runs() -> None:
    sample = LagSample(10, 5, 505)
    stopped = v.lag_verdict("ev.telemetry", 0, LagState.STALLED, sample, waiting_s=400.0, driver_running=False)
    running = v.lag_verdict("ev.telemetry", 0, LagState.STALLED, sample, waiting_s=400.0, driver_running=True)
    assert stopped.level is Level.ERR
    assert "lag 500 records" in stopped.value
    assert "`tierlake ingest start`" in stopped.fix
    assert "`tierlake ingest status`" in running.fix


def test_many_small_files_and_no_checkpoint_warn_with_their_commands() -> None:
    found = v.table_verdicts("scratch/t", files=500, small_files=500, version=499, last_checkpoint=None)
    assert [x.level for x in found] == [Level.WARN, Level.WARN]
    assert "500 of 500 files are small" in found[0].value
    assert found[0].fix.startswith("`tierlake table optimize scratch/t`")
    assert found[1].fix == "`tierlake table checkpoint scratch/t`"
    healthy = v.table_verdicts("silver/ev", files=500, small_files=100, version=40, last_checkpoint=30)
    assert [x.level for x in healthy] == [Level.OK]


def test_reconcile_and_quarantine_verdicts() -> None:
    assert v.reconcile_verdict("t/0", missing=0, unexpected=0, repeated=0, holes=0).level is Level.OK
    bad = v.reconcile_verdict("t/0", missing=2, unexpected=0, repeated=0, holes=0)
    assert bad.level is Level.ERR
    assert "missing 2" in bad.value
    warn = v.quarantine_verdict("ev", quarantined=30, total=100, top_rule="out_of_range")
    assert warn.level is Level.WARN
    assert "--rule out_of_range" in warn.fix
    assert v.quarantine_verdict("ev", quarantined=2, total=100, top_rule="out_of_range").level is Level.OK


def test_cache_and_tape_verdicts() -> None:
    cold = v.cache_verdicts(hits=10, misses=190, used_bytes=99, capacity_bytes=100)
    assert [x.subject for x in cold] == ["edge cache hit ratio", "edge cache budget"]
    assert v.cache_verdicts(hits=1, misses=9, used_bytes=0, capacity_bytes=100)[0].level is Level.OK  # few reads
    failed = v.verify_verdict("A00001", checked=4, bad=1, at="2026-01-01T00:00:00+00:00")
    assert failed.level is Level.ERR
    assert "`tierlake archive verify --cartridge A00001`" in failed.fix
    assert v.site_verdict("site-a", used_bytes=95, capacity_bytes=100).level is Level.WARN


def test_last_verify_per_cartridge_takes_the_newest_event_covering_it() -> None:
    def event(minute: int, target: str, **detail: object) -> dict[str, object]:
        return {"at": datetime(2026, 1, 1, 0, minute, tzinfo=UTC), "target": target, "detail": json.dumps(detail)}

    events = [
        event(1, "*", checked=8, bad=1, cartridges=["A00001", "B00001"], bad_cartridges=["A00001"]),
        event(2, "B00001", checked=4, bad=0, cartridges=["B00001"], bad_cartridges=[]),
    ]
    found = last_verifies(events, ["A00001", "B00001"])
    assert found["A00001"]["bad"] == 1
    assert found["B00001"]["bad"] == 0
    assert found["B00001"]["at"].endswith("00:02:00+00:00")


def test_offsets_file_of_a_streaming_checkpoint() -> None:
    text = 'v1\n{"batchWatermarkMs":0,"batchTimestampMs":1}\n{"ev.telemetry":{"2":17,"0":20,"1":3}}\n'
    assert parse_offsets_file(text, "ev.telemetry") == {0: 20, 1: 3, 2: 17}
    assert parse_offsets_file(text, "corpus.docs") is None
    assert parse_offsets_file("", "ev.telemetry") is None


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800)])
def test_since_durations(text: str, seconds: float) -> None:
    assert duration_s(text) == seconds


def test_since_a_moment_is_the_seconds_before_now() -> None:
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    assert 7199 < duration_s(moment.isoformat()) < 7260


@pytest.mark.parametrize("text", ["24", "h", "-1h", "0h", "1y", "2026-05-01T12:00:00", "2999-01-01T00:00:00Z"])
def test_since_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="Fix:"):
        duration_s(text)
