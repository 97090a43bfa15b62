"""Capacity model: the figures the benches recorded on this machine, projected to the seed's targets per site.

Reads the latest recorded run of each bench from ``bench/results/<bench>.jsonl`` (a run without ``--quick`` when
one has the figure, else the latest), turns it into a per-core, per-worker or per-drive rate, and sizes each site
for the seed's targets: 40 GB/s sustained edge read per gateway site, 10 GB/s read per region from Ceph (50 PB
usable, erasure-coded), the EV feed's events per second within a freshness target, and the daily archive volume
onto LTO-8 drives (360 MB/s native) at two sites. Every input is either a measured figure (bench, date, command
and how it was derived) or a named assumption; figures no bench records yet are listed as such and replaced by an
assumption, never invented.

The model is linear in cores and drives: it scales what 2 cores did here and says so. It does not model network
fabric, Kafka broker limits, Ceph recovery traffic or power, and a per-core rate on 2 shared cores under load is a
floor, not a prediction of a 64-core node's rate.

Re-run it whenever a bench result changes: ``tests/unit/test_capacity.py`` fails while docs/capacity.md's table
differs from what this script prints from bench/results/ (fix: ``--write-doc``).

Usage::

    .venv/bin/python bench/capacity.py [--write-doc | --check]
    .venv/bin/python bench/report.py record -- .venv/bin/python bench/capacity.py
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "capacity.md"
TABLE_START = "<!-- capacity table: written by bench/capacity.py --write-doc; do not edit -->"
TABLE_END = "<!-- end of capacity table -->"


@dataclass(frozen=True, kw_only=True)
class Targets:
    """The seed's scale. Where the seed gives no number, the value is an assumption and says so."""

    edge_read_gb_s: float = 40.0  # sustained edge read per gateway site (seed)
    region_read_gb_s: float = 10.0  # read per region from Ceph (seed)
    region_usable_pb: float = 50.0  # erasure-coded Ceph per region (seed)
    ev_events_per_s: float = 1_000_000.0  # assumption: the seed names the EV feed, not its rate
    ev_freshness_p99_s: float = 60.0  # assumption: a reading is in silver within a minute
    archive_tb_per_day: float = 200.0  # assumption: the seed names the daily archive, not its volume
    archive_sites: int = 2  # one copy per site (seed: 2 copies at 2 sites)


@dataclass(frozen=True, kw_only=True)
class Assumptions:
    """Hardware and operating assumptions, each named in the output; none of them is measured here."""

    bench_cores: int = 2  # the build machine every recorded run used ("2 shared cores")
    node_cores: int = 64
    node_nic_gbit: float = 100.0
    nic_usable: float = 0.7  # of line rate, for TCP + S3/HTTP framing
    cpu_usable: float = 0.6  # the rest is headroom: a lost node's share, peaks, compaction
    edge_hit_ratio: float = 0.9  # of edge reads served from NVMe; misses go to the region's RGW
    nvme_read_mb_s: float = 3000.0  # one PCIe Gen4 NVMe drive, sustained read
    nvme_per_edge_node: int = 8
    hdd_tb: float = 20.0
    hdd_mb_s: float = 150.0  # one OSD's HDD, sequential, before erasure coding
    hdds_per_osd_node: int = 24
    ec_k: int = 8
    ec_m: int = 3
    ceph_fill: float = 0.8  # usable-to-raw headroom: Ceph's nearfull ratio is 0.85
    lto8_mb_s: float = 360.0  # LTO-8 native (seed)
    lto8_tb: float = 12.0  # LTO-8 native capacity
    drive_hours_per_day: float = 20.0  # the rest: mounts, verify reads, recalls
    loader_mb_s_per_worker: float = 45.0  # used only when no bench/loader.py run is recorded (DESIGN.md #4)


# What each input no bench measures stands for; the table lists every one of them with its value.
ASSUMED = {
    "ev_events_per_s": "EV feed rate (target; the seed names the feed, not its rate)",
    "ev_freshness_p99_s": "p99 freshness target of the EV feed (the seed gives none)",
    "archive_tb_per_day": "daily archive volume (target; the seed names the archive, not its volume)",
    "bench_cores": "cores every recorded bench run had (the rates are divided by it)",
    "node_cores": "cores of one node",
    "node_nic_gbit": "NIC line rate of one node, Gbit/s",
    "nic_usable": "share of line rate usable for S3 over TCP",
    "cpu_usable": "share of a node's cores planned busy (the rest: a lost node's share, peaks)",
    "edge_hit_ratio": "share of edge reads served from NVMe (misses go to the region's RGW)",
    "nvme_read_mb_s": "sustained read of one NVMe drive, MB/s",
    "nvme_per_edge_node": "NVMe drives in one edge node",
    "hdd_tb": "capacity of one OSD HDD, TB",
    "hdd_mb_s": "sequential rate of one OSD HDD, MB/s",
    "hdds_per_osd_node": "HDDs in one OSD node",
    "ec_k": "EC data chunks",
    "ec_m": "EC coding chunks",
    "ceph_fill": "usable share of raw Ceph capacity",
    "lto8_mb_s": "LTO-8 native rate, MB/s (specification)",
    "lto8_tb": "LTO-8 native capacity, TB (specification)",
    "drive_hours_per_day": "hours a day a drive writes (the rest: mounts, verify reads, recalls)",
    "loader_mb_s_per_worker": "loader MB/s per worker, used only while no bench/loader.py run is recorded",
}


@dataclass(frozen=True, kw_only=True)
class Figure:
    """One rate taken from a recorded bench run, with where it came from."""

    value: float
    unit: str
    bench: str
    date: str
    command: str
    derived: str


@dataclass(frozen=True, kw_only=True)
class Site:
    """What one site needs: machines, cores, disks and drives, and what bounds each count."""

    name: str
    nodes: int
    cores: int
    disks: int = 0
    drives: int = 0
    bound: str = ""
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# reading the recorded runs


def load_runs(results: Path, bench: str) -> list[dict[str, Any]]:
    path = results / f"{bench}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pick(runs: list[dict[str, Any]], has: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """The latest run that has the figure, preferring full runs over ``--quick`` ones (steadier on 2 cores)."""
    usable = [run for run in runs if has(run["result"])]
    full = [run for run in usable if "--quick" not in run["command"]]
    chosen = full or usable
    return chosen[-1] if chosen else None


def low_end(value: Any) -> float:
    """A recorded figure as a number: ranges such as ``"1,450-1,520"`` give their low (conservative) end."""
    if isinstance(value, int | float):
        return float(value)
    first = re.split(r"(?<=\d)-", str(value).replace(",", ""))[0]
    return float(first)


def high_end(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    return float(str(value).replace(",", "").split("-")[-1])


def _figure(run: dict[str, Any], bench: str, value: float, unit: str, derived: str) -> Figure:
    return Figure(
        value=round(value, 1), unit=unit, bench=bench, date=run["date"], command=run["command"], derived=derived
    )


def measured(results: Path, assume: Assumptions) -> tuple[dict[str, Figure], list[str]]:
    """Per-core (or per-worker) rates from the recorded runs, and the figures no bench has recorded yet."""
    found: dict[str, Figure] = {}
    missing: list[str] = []
    for read in (_ingest_figures, _cache_figures, _archive_figures, _loader_figures):
        read(results, assume, found, missing)
    return found, missing


def _ingest_figures(results: Path, assume: Assumptions, found: dict[str, Figure], missing: list[str]) -> None:
    run = pick(load_runs(results, "ingest"), lambda r: "silver_end_to_end_eps" in r["figures"])
    if run is None:
        missing.append("ingest: silver_end_to_end_eps")
        return
    figures = run["result"]["figures"]
    run_cores = int(run["result"]["setup"].get("cores", assume.bench_cores))
    eps = figures["silver_end_to_end_eps"] / run_cores
    found["ingest_eps_per_core"] = _figure(
        run, "ingest", eps, "events/s/core", f"silver_end_to_end_eps / {run_cores} cores"
    )
    found["ingest_p99_freshness_s"] = _figure(run, "ingest", figures["p99_freshness_s"], "s", "p99_freshness_s")


def _cache_figures(results: Path, assume: Assumptions, found: dict[str, Figure], missing: list[str]) -> None:
    cores = assume.bench_cores
    run = pick(load_runs(results, "cache"), lambda r: "site_mode_mb_s" in r["figures"])
    if run is None:
        missing.append("cache: site_mode_mb_s")
    else:
        result = run["result"]
        site = low_end(result["figures"]["site_mode_mb_s"])
        found["edge_hit_mb_s_per_core"] = _figure(
            run, "cache", site / cores, "MB/s/core", f"site_mode_mb_s (low end) / {cores} cores"
        )
        rgw = site / high_end(result["ratios"]["site_vs_rgw_direct_4_readers"]) / cores
        found["rgw_get_mb_s_per_core"] = _figure(
            run,
            "cache",
            rgw,
            "MB/s/core",
            f"site_mode_mb_s (low end) / site_vs_rgw_direct_4_readers (high end) / {cores} cores",
        )
        if "miss_vs_boto3_get" in result["ratios"]:
            # No absolute miss MB/s is recorded: a miss is measured against a plain GET from RGW of the same object.
            found["edge_miss_mb_s_per_core"] = _figure(
                run,
                "cache",
                rgw * low_end(result["ratios"]["miss_vs_boto3_get"]),
                "MB/s/core",
                "rgw_get_mb_s_per_core x miss_vs_boto3_get (low end)",
            )
    if "edge_miss_mb_s_per_core" not in found:
        missing.append("cache: miss_vs_boto3_get (a miss is costed at the hit rate)")
    missing.append("rgw PUT MB/s per OSD: no bench records it (writes are sized by the ingest and archive rates)")


def _archive_figures(results: Path, assume: Assumptions, found: dict[str, Figure], missing: list[str]) -> None:
    cores = assume.bench_cores
    run = pick(load_runs(results, "archive"), lambda r: "tierlake_write_mb_s" in r["figures"])
    if run is None:
        missing.append("archive: tierlake_write_mb_s")
        return
    mb_s = run["result"]["figures"]["tierlake_write_mb_s"]
    found["archive_write_mb_s_per_core"] = _figure(
        run, "archive", mb_s / cores, "MB/s/core", f"tierlake_write_mb_s (2 copies) / {cores} cores"
    )


def _loader_figures(results: Path, assume: Assumptions, found: dict[str, Figure], missing: list[str]) -> None:
    run = pick(load_runs(results, "loader"), lambda r: "mb_per_s" in r["figures"].get("tierlake", {}))
    if run is None:
        missing.append(
            f"loader: no bench/loader.py run recorded; assumed {assume.loader_mb_s_per_worker} MB/s per worker "
            "(DESIGN.md decision 4: 90 MB/s through 2 DataLoader workers on 2 cores)"
        )
        return
    workers = int(run["result"]["setup"].get("workers", assume.bench_cores))
    mb_s = run["result"]["figures"]["tierlake"]["mb_per_s"] / workers
    found["loader_mb_s_per_worker"] = _figure(run, "loader", mb_s, "MB/s/worker", f"tierlake.mb_per_s / {workers}")


# ---------------------------------------------------------------------------------------------------------------
# the model


def _nodes_for_cores(cores: float, assume: Assumptions) -> int:
    return max(1, math.ceil(cores / (assume.node_cores * assume.cpu_usable)))


def _nic_mb_s(assume: Assumptions) -> float:
    return assume.node_nic_gbit * 1000 / 8 * assume.nic_usable


def edge_site(target: Targets, assume: Assumptions, found: dict[str, Figure]) -> Site:
    read_mb_s = target.edge_read_gb_s * 1000
    hit_rate = found["edge_hit_mb_s_per_core"].value
    miss_rate = found["edge_miss_mb_s_per_core"].value if "edge_miss_mb_s_per_core" in found else hit_rate
    # Hits are served from NVMe at the hit rate; a miss is fetched from the region's RGW through the cache.
    cores = read_mb_s * assume.edge_hit_ratio / hit_rate + read_mb_s * (1 - assume.edge_hit_ratio) / miss_rate
    by_cpu = _nodes_for_cores(cores, assume)
    by_nic = math.ceil(read_mb_s / _nic_mb_s(assume))
    hit_mb_s = read_mb_s * assume.edge_hit_ratio
    by_nvme = math.ceil(hit_mb_s / (assume.nvme_read_mb_s * assume.nvme_per_edge_node))
    nodes = max(by_cpu, by_nic, by_nvme)
    bound = {by_cpu: "cpu", by_nvme: "nvme", by_nic: "nic"}[nodes]
    return Site(
        name="edge gateway site",
        nodes=nodes,
        cores=nodes * assume.node_cores,
        disks=nodes * assume.nvme_per_edge_node,
        bound=bound,
        notes=[f"nodes by cpu {by_cpu}, by nic {by_nic}, by nvme {by_nvme}; cores busy {math.ceil(cores)}"],
    )


def loader_workers(target: Targets, assume: Assumptions, found: dict[str, Figure]) -> int:
    per_worker = found["loader_mb_s_per_worker"].value if "loader_mb_s_per_worker" in found else None
    return math.ceil(target.edge_read_gb_s * 1000 / (per_worker or assume.loader_mb_s_per_worker))


def region_site(target: Targets, assume: Assumptions, found: dict[str, Figure]) -> Site:
    raw_pb = target.region_usable_pb * (assume.ec_k + assume.ec_m) / assume.ec_k / assume.ceph_fill
    by_capacity = math.ceil(raw_pb * 1000 / assume.hdd_tb)
    # A read of one object touches k data chunks; the HDDs must stream the region's read rate in total.
    by_throughput = math.ceil(target.region_read_gb_s * 1000 / assume.hdd_mb_s)
    disks = max(by_capacity, by_throughput)
    osd_nodes = math.ceil(disks / assume.hdds_per_osd_node)
    rgw_cores = target.region_read_gb_s * 1000 / found["rgw_get_mb_s_per_core"].value
    rgw_nodes = max(_nodes_for_cores(rgw_cores, assume), math.ceil(target.region_read_gb_s * 1000 / _nic_mb_s(assume)))
    return Site(
        name="Ceph region",
        nodes=osd_nodes + rgw_nodes,
        cores=(osd_nodes + rgw_nodes) * assume.node_cores,
        disks=disks,
        bound="capacity" if by_capacity >= by_throughput else "throughput",
        notes=[
            f"{osd_nodes} OSD nodes of {assume.hdds_per_osd_node} HDDs, {rgw_nodes} RGW nodes; raw {raw_pb:.1f} PB "
            f"for EC {assume.ec_k}+{assume.ec_m}; disks by capacity {by_capacity}, by read rate {by_throughput}; "
            f"RGW cores busy {math.ceil(rgw_cores)}"
        ],
    )


def ingest_site(target: Targets, assume: Assumptions, found: dict[str, Figure]) -> Site:
    cores = target.ev_events_per_s / found["ingest_eps_per_core"].value
    nodes = _nodes_for_cores(cores, assume)
    freshness = found["ingest_p99_freshness_s"].value
    meets = "meets" if freshness <= target.ev_freshness_p99_s else "misses"
    return Site(
        name="ingest (Spark executors)",
        nodes=nodes,
        cores=nodes * assume.node_cores,
        bound="cpu",
        notes=[
            f"cores busy {math.ceil(cores)}; measured p99 freshness {freshness} s {meets} the "
            f"{target.ev_freshness_p99_s:.0f} s target at the bench's trigger (held only if every core keeps its "
            "measured rate)"
        ],
    )


def archive_site(target: Targets, assume: Assumptions, found: dict[str, Figure], index: int) -> Site:
    # One copy per site: each site writes the whole daily volume once.
    mb_per_day = target.archive_tb_per_day * 1e6
    drive_mb_per_day = assume.lto8_mb_s * 3600 * assume.drive_hours_per_day
    drives = math.ceil(mb_per_day / drive_mb_per_day)
    # The writer hashes and streams each drive's bytes; its measured rate per core sets the cores behind the drives.
    cores = drives * assume.lto8_mb_s / found["archive_write_mb_s_per_core"].value
    nodes = _nodes_for_cores(cores, assume)
    cartridges = math.ceil(target.archive_tb_per_day / assume.lto8_tb)
    return Site(
        name=f"archive site {index}",
        nodes=nodes,
        cores=nodes * assume.node_cores,
        drives=drives,
        bound="drives",
        notes=[f"{cartridges} LTO-8 cartridges a day; writer cores busy {math.ceil(cores)}"],
    )


def plan(results: Path, target: Targets, assume: Assumptions) -> dict[str, Any]:
    found, missing = measured(results, assume)
    needed = {"ingest_eps_per_core", "edge_hit_mb_s_per_core", "rgw_get_mb_s_per_core", "archive_write_mb_s_per_core"}
    if lacking := sorted(needed - set(found)):
        raise SystemExit(f"bench/results/ lacks {lacking}. Fix: record the benches named in {missing}")
    sites = [
        edge_site(target, assume, found),
        region_site(target, assume, found),
        ingest_site(target, assume, found),
        *(archive_site(target, assume, found, i) for i in range(1, target.archive_sites + 1)),
    ]
    figures: dict[str, Any] = {f"{s.name}": {k: v for k, v in asdict(s).items() if k != "name"} for s in sites}
    figures["loader_workers_for_edge_read"] = loader_workers(target, assume, found)
    return {
        "bench": "capacity",
        "figures": figures,
        "ratios": {
            "edge_hit_vs_rgw_get_per_core": round(
                found["edge_hit_mb_s_per_core"].value / found["rgw_get_mb_s_per_core"].value, 2
            ),
            "lto8_vs_archive_writer_per_core": round(assume.lto8_mb_s / found["archive_write_mb_s_per_core"].value, 3),
        },
        "setup": {
            "measured": {name: asdict(f) for name, f in found.items()},
            "not_measured": missing,
            "targets": asdict(target),
            "assumptions": asdict(assume),
            "model": "linear in cores, disks and drives; nodes = ceil(busy cores / (node_cores * cpu_usable))",
        },
    }


# ---------------------------------------------------------------------------------------------------------------
# output


def table(result: dict[str, Any]) -> str:
    """The per-site table that docs/capacity.md holds between its markers."""
    rows = ["| site | nodes | cores | disks | LTO-8 drives | bound by | notes |", "|---|---:|---:|---:|---:|---|---|"]
    for name, site in result["figures"].items():
        if not isinstance(site, dict):
            continue
        notes = "; ".join(site["notes"])
        rows.append(
            f"| {name} | {site['nodes']:,} | {site['cores']:,} | {site['disks']:,} | {site['drives']:,} | "
            f"{site['bound']} | {notes} |"
        )
    rows.append("")
    rows.append(f"Loader workers to consume the edge read: {result['figures']['loader_workers_for_edge_read']:,}.")
    rows.append("")
    rows.append("| measured | value | unit | bench | run | derived as |")
    rows.append("|---|---:|---|---|---|---|")
    for name, fig in result["setup"]["measured"].items():
        rows.append(
            f"| {name} | {fig['value']:,} | {fig['unit']} | {fig['bench']} | {fig['date']}: `{fig['command']}` | "
            f"{fig['derived']} |"
        )
    rows.append("")
    rows.extend(f"- not measured: {item}" for item in result["setup"]["not_measured"])
    rows.append("")
    rows.append("| assumed (not measured) | value | what |")
    rows.append("|---|---:|---|")
    inputs = {**result["setup"]["targets"], **result["setup"]["assumptions"]}
    rows.extend(f"| {name} | {inputs[name]:,} | {what} |" for name, what in ASSUMED.items() if name in inputs)
    return "\n".join(rows)


def doc_with_table(doc: str, rendered: str) -> str:
    start, end = doc.index(TABLE_START) + len(TABLE_START), doc.index(TABLE_END)
    return f"{doc[:start]}\n{rendered}\n{doc[end:]}"


def lines_of(result: dict[str, Any]) -> Iterable[str]:
    yield table(result)
    yield json.dumps(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write-doc", action="store_true", help="rewrite the table in docs/capacity.md")
    mode.add_argument("--check", action="store_true", help="exit 1 when docs/capacity.md's table is out of date")
    args = parser.parse_args(argv)
    result = plan(RESULTS, Targets(), Assumptions())
    doc = DOC.read_text()
    wanted = doc_with_table(doc, table(result))
    if args.check:
        if wanted != doc:
            sys.stderr.write("docs/capacity.md is out of date. Fix: .venv/bin/python bench/capacity.py --write-doc\n")
            return 1
        return 0
    if args.write_doc and wanted != doc:
        DOC.write_text(wanted)
    sys.stdout.write("\n".join(lines_of(result)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
