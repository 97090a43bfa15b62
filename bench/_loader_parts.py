"""The loader bench's rounds, merged and compared (``bench/loader.py`` runs the paths; not a bench of its own).

A path run in rounds gets one result from its rounds (``median_run``), per-round ratios against another path in the
same round (``round_ratios``), the rounds' own figures (``rounds_figures``) and the bench's ratios (``ratios_of``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result for a path's rounds: the median time and first batch, the highest peaks; a round that failed, or
    that served other rows than the first, stands for them all."""
    if failed := [run for run in runs if "error" in run]:
        return failed[0]
    odd = [run for run in runs if (run["samples"], run["id_sum"]) != (runs[0]["samples"], runs[0]["id_sum"])]
    merged = dict(odd[0] if odd else runs[0])
    merged["seconds"] = statistics.median(run["seconds"] for run in runs)
    firsts = [run["first_batch_s"] for run in runs if run["first_batch_s"] is not None]
    merged["first_batch_s"] = statistics.median(firsts) if firsts else None
    merged["peak_rss_mb"] = max(run["peak_rss_mb"] for run in runs)
    merged["peak_tree_rss_mb"] = max(run["peak_tree_rss_mb"] for run in runs)
    return merged


def round_ratios(runs: dict[str, list[dict[str, Any]]], a: str, b: str) -> list[float]:
    """Per round: path ``a``'s samples/s over path ``b``'s in the same round (rounds where either failed left out)."""
    pairs = zip(runs.get(a, []), runs.get(b, []), strict=False)
    return [
        (ra["samples"] / ra["seconds"]) / (rb["samples"] / rb["seconds"])
        for ra, rb in pairs
        if "error" not in ra and "error" not in rb
    ]


def rounds_figures(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        "count": max((len(r) for r in runs.values()), default=0),
        "seconds": {name: [round(r.get("seconds", float("nan")), 3) for r in rs] for name, rs in runs.items()},
        "first_batch_s": {
            name: [None if r.get("first_batch_s") is None else round(r["first_batch_s"], 3) for r in rs]
            for name, rs in runs.items()
        },
        "vs_arrow_ceiling": [round(x, 3) for x in round_ratios(runs, "tierlake", "arrow_ceiling")],
    }


def ratios_of(figures: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> dict[str, float | None]:
    """Ratios of MB/s. Between two paths run in rounds: the median over rounds of the per-round ratio."""

    def ratio(a: str, b: str, pick: Callable[[list[float]], float] = statistics.median) -> float | None:
        if a in runs and b in runs:
            per_round = round_ratios(runs, a, b)
            return round(pick(per_round), 3) if per_round else None
        if "mb_per_s" not in figures.get(a, {}) or "mb_per_s" not in figures.get(b, {}):
            return None
        return round(float(figures[a]["mb_per_s"]) / float(figures[b]["mb_per_s"]), 3)

    return {
        "vs_arrow_ceiling": ratio("tierlake", "arrow_ceiling"),
        "vs_arrow_ceiling_min": ratio("tierlake", "arrow_ceiling", min),
        "vs_arrow_ceiling_max": ratio("tierlake", "arrow_ceiling", max),
        "vs_arrow_ceiling_1thread": ratio("tierlake", "arrow_ceiling_1thread"),
        "sequential_vs_arrow_ceiling": ratio("tierlake_sequential", "arrow_ceiling"),
        "arrow_decode_vs_arrow_ceiling": ratio("tierlake_arrow_decode", "arrow_ceiling"),
        "page_reader_vs_arrow_decode": ratio("tierlake", "tierlake_arrow_decode"),
        "vs_litdata": ratio("tierlake", "litdata"),
        "vs_mosaic": ratio("tierlake", "mosaic"),
        "vs_parquet_dataloader": ratio("tierlake", "parquet_dataloader"),
        "threads_vs_processes": ratio("tierlake", "tierlake_processes"),
        "threads_vs_slabs": ratio("tierlake", "tierlake_slabs"),
    }
