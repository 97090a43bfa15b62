"""bench/capacity.py: docs/capacity.md's table is what the script prints from bench/results/, and the projection
follows the recorded figures (a changed bench result changes the plan; a missing one is named, not invented)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_capacity", REPO / "bench" / "capacity.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


capacity = _load()


def _plan(results: Path) -> dict[str, Any]:
    result: dict[str, Any] = capacity.plan(results, capacity.Targets(), capacity.Assumptions())
    return result


def test_doc_table_is_what_the_recorded_results_give() -> None:
    doc = (REPO / "docs" / "capacity.md").read_text()
    expected = capacity.doc_with_table(doc, capacity.table(_plan(REPO / "bench" / "results")))
    assert doc == expected, "docs/capacity.md is out of date. Fix: .venv/bin/python bench/capacity.py --write-doc"


def test_the_latest_recorded_capacity_run_is_what_the_results_give() -> None:
    # docs/benchmarks.md shows this run: it must be the plan of the results recorded now, not of older ones.
    runs = capacity.load_runs(REPO / "bench" / "results", "capacity")
    assert runs, "bench/results/capacity.jsonl has no run"
    expected = json.loads(json.dumps(_plan(REPO / "bench" / "results")))
    assert runs[-1]["result"] == expected, (
        "bench/results/capacity.jsonl is out of date. Fix: .venv/bin/python bench/report.py record -- "
        ".venv/bin/python bench/capacity.py, then .venv/bin/python bench/capacity.py --write-doc"
    )


def test_the_plan_is_a_pure_function_of_the_results() -> None:
    first, second = (_plan(REPO / "bench" / "results") for _ in range(2))
    assert first == second


def test_a_cache_miss_is_costed_at_the_measured_miss_rate(tmp_path: Path) -> None:
    results = _results_copy(tmp_path)
    before = _plan(results)
    miss = before["setup"]["measured"]["edge_miss_mb_s_per_core"]
    assert miss["derived"] == "rgw_get_mb_s_per_core x miss_vs_boto3_get (low end)"
    # A cache run without miss_vs_boto3_get: no miss rate, and that is named.
    _append(results, "cache", {"site_mode_mb_s": 1450.0}, ratios={"site_vs_rgw_direct_4_readers": 3.9})
    after = _plan(results)
    assert "edge_miss_mb_s_per_core" not in after["setup"]["measured"]
    assert any(item.startswith("cache: miss_vs_boto3_get") for item in after["setup"]["not_measured"])
    busy = [p["figures"]["edge gateway site"]["notes"][0].rsplit(" ", 1)[-1] for p in (before, after)]
    assert int(busy[1]) < int(busy[0]), "misses costed at the (faster) hit rate need fewer cores"


def test_every_assumption_is_named_in_the_table() -> None:
    table = capacity.table(_plan(REPO / "bench" / "results"))
    for name in capacity.Assumptions.__dataclass_fields__:
        assert f"| {name} |" in table, name
    for name in ("ev_events_per_s", "ev_freshness_p99_s", "archive_tb_per_day"):
        assert f"| {name} |" in table, name


def _results_copy(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    shutil.copytree(REPO / "bench" / "results", results)
    return results


def _append(
    results: Path,
    bench: str,
    figures: dict[str, Any],
    *,
    setup: dict[str, Any] | None = None,
    ratios: dict[str, Any] | None = None,
) -> None:
    run = {
        "date": "9999-01-01",
        "machine": "test",
        "command": f".venv/bin/python bench/{bench}.py",
        "load_avg": "",
        "note": "",
        "result": {"bench": bench, "figures": figures, "ratios": ratios or {}, "setup": setup or {"cores": 2}},
    }
    with (results / f"{bench}.jsonl").open("a") as out:
        out.write(json.dumps(run) + "\n")


def test_a_faster_ingest_bench_needs_fewer_ingest_cores(tmp_path: Path) -> None:
    results = _results_copy(tmp_path)
    before = _plan(results)
    eps = before["setup"]["measured"]["ingest_eps_per_core"]["value"] * 2 * 4  # 4x the rate on 2 cores
    _append(results, "ingest", {"silver_end_to_end_eps": eps, "p99_freshness_s": 90.0})
    after = _plan(results)
    busy = [json.dumps(p["figures"]["ingest (Spark executors)"]["notes"]) for p in (before, after)]
    assert after["setup"]["measured"]["ingest_eps_per_core"]["date"] == "9999-01-01"
    assert busy[0] != busy[1]
    assert "misses the 60 s target" in busy[1], "a freshness above the target is reported as missed"
    assert capacity.table(before) != capacity.table(after), "the doc's table follows the results"


def test_a_loader_run_replaces_the_assumed_loader_rate(tmp_path: Path) -> None:
    results = _results_copy(tmp_path)
    (results / "loader.jsonl").unlink(missing_ok=True)
    assumed = _plan(results)
    assert any(item.startswith("loader:") for item in assumed["setup"]["not_measured"])
    _append(results, "loader", {"tierlake": {"mb_per_s": 400.0}}, setup={"workers": 2})
    measured = _plan(results)
    assert measured["setup"]["measured"]["loader_mb_s_per_worker"]["value"] == 200.0
    assert measured["figures"]["loader_workers_for_edge_read"] == 200  # 40 GB/s over 200 MB/s
    assert not any(item.startswith("loader:") for item in measured["setup"]["not_measured"])


def test_ranges_count_at_their_conservative_end() -> None:
    assert capacity.low_end("1,450-1,520") == 1450.0
    assert capacity.high_end("3.7-3.9") == 3.9
    assert capacity.low_end(12) == 12.0
