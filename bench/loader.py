"""Loader benchmark: tierlake's loader and its peers, side by side in one run, on the same token rows.

The data (as in ``../shared/reference/loader-anchors.md``): rows of ``id`` int64 and ``tokens`` int32 x 2048, random
tokens in [0, 50257) (incompressible), uncompressed Parquet in a Delta table, row groups of 4,096 rows (32 MiB),
8 files; 131,072 rows = 1 GiB of tokens (``--quick``: 32,768 rows, 4 files). The same rows are converted to MDS
(MosaicML Streaming) and to LitData's ``optimize()`` chunks. Every path reads one epoch in batches of 32 in a fresh
process; each run reports samples/s, MB/s (token payload, 8 KiB a row), first-batch latency (from constructing the
dataset, after imports) and peak RSS (the process alone, and summed with its worker processes).

Paths: ``arrow_ceiling`` (pyarrow ``read_row_group`` + ``to_numpy`` in one process, no loader),
``tierlake`` (DeltaLoader, 2 threads, shuffled), ``tierlake_sequential`` (no shuffle, like the peers),
``tierlake_processes`` (the same batches through ``torch.utils.data.DataLoader`` with 2 worker processes: the
per-batch pickling hand-off that the threads avoid), ``tierlake_slabs`` (2 worker processes writing into
preallocated shared-memory slabs; only slab numbers cross processes), ``parquet_dataloader`` (row groups striped
over 2 DataLoader workers, per-row samples, default collate), ``mosaic`` (StreamingDataset on MDS, 2 workers),
``litdata`` (StreamingDataset on optimize() output, 2 workers). The last line printed is the JSON result.
No asserts on time.

``figures.row_group_rereads``: row-group reads beyond one per row group in one shuffled epoch of the DeltaLoader
with its default row-group budget, on a second table of ``REREAD_ROW_GROUPS`` row groups (the main table has only
8 in ``--quick``); the goal is 0. ``figures.tierlake_rereads`` gives the row groups and reads behind it.

Usage: ``.venv/bin/python bench/loader.py [--quick] [--workdir DIR] [--only a,b]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

logger = logging.getLogger("bench.loader")
WIDTH = 2048
VOCAB = 50257
BATCH = 32
WORKERS = 2
ROW_GROUP = 4096
ROW_BYTES = WIDTH * 4
REREAD_ROW_GROUPS = 36
REREAD_ROW_GROUP_ROWS = 256
PATHS = (
    "tierlake_rereads",
    "arrow_ceiling",
    "tierlake",
    "tierlake_sequential",
    "tierlake_processes",
    "tierlake_slabs",
    "parquet_dataloader",
    "mosaic",
    "litdata",
)


# ---------------------------------------------------------------------------------------------------------
# Data


def token_chunks(rows: int, files: int, seed: int = 0) -> Iterator[tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
    rng = np.random.default_rng(seed)
    per_file = rows // files
    for index in range(files):
        ids = np.arange(index * per_file, (index + 1) * per_file, dtype=np.int64)
        yield ids, rng.integers(0, VOCAB, size=(per_file, WIDTH), dtype=np.int32)


def write_delta(path: Path, rows: int, files: int) -> None:
    import pyarrow as pa  # noqa: PLC0415
    from deltalake import WriterProperties, write_deltalake  # noqa: PLC0415

    props = WriterProperties(compression="UNCOMPRESSED", max_row_group_size=ROW_GROUP, write_batch_size=1024)
    for ids, tokens in token_chunks(rows, files):
        values = pa.array(tokens.reshape(-1))
        column = pa.ListArray.from_arrays(pa.array(np.arange(0, len(values) + 1, WIDTH, dtype=np.int32)), values)
        write_deltalake(str(path), pa.table({"id": ids, "tokens": column}), mode="append", writer_properties=props)


def write_mds(path: Path, delta: Path) -> None:
    from streaming import MDSWriter  # noqa: PLC0415

    columns = {"id": "int64", "tokens": f"ndarray:int32:{WIDTH}"}
    with MDSWriter(out=str(path), columns=columns, size_limit="128mb", compression=None) as writer:
        for ids, tokens in parquet_row_groups(delta):
            for i in range(len(ids)):
                writer.write({"id": int(ids[i]), "tokens": tokens[i]})


def parquet_row_groups(delta: Path) -> Iterator[tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
    import pyarrow.parquet as pq  # noqa: PLC0415

    for file in sorted(delta.glob("*.parquet")):
        parquet = pq.ParquetFile(file)
        for rg in range(parquet.num_row_groups):
            table = parquet.read_row_group(rg)
            tokens = table.column("tokens").combine_chunks().values.to_numpy().reshape(-1, WIDTH)
            yield table.column("id").to_numpy(), tokens


def _litdata_rows(file: str) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq  # noqa: PLC0415

    parquet = pq.ParquetFile(file)
    for rg in range(parquet.num_row_groups):
        table = parquet.read_row_group(rg)
        tokens = table.column("tokens").combine_chunks().values.to_numpy().reshape(-1, WIDTH)
        ids = table.column("id").to_numpy()
        for i in range(len(ids)):
            yield {"id": int(ids[i]), "tokens": tokens[i]}


def write_litdata(path: Path, delta: Path) -> None:
    from litdata import optimize  # type: ignore[import-untyped]  # noqa: PLC0415

    files = [str(f) for f in sorted(delta.glob("*.parquet"))]
    optimize(
        fn=_litdata_rows,
        inputs=files,
        output_dir=str(path),
        num_workers=WORKERS,
        chunk_bytes="128MB",
        verbose=False,
        start_method="fork",
    )


# ---------------------------------------------------------------------------------------------------------
# Runs (each in a fresh process)


def _consume(batches: Iterator[Any], get_ids: Callable[[Any], Any], started: float) -> dict[str, Any]:
    first = None
    samples = 0
    id_sum = 0
    for batch in batches:
        if first is None:
            first = time.perf_counter() - started
        ids = get_ids(batch)
        samples += len(ids)
        id_sum += int(ids.sum())
    seconds = time.perf_counter() - started
    return {"samples": samples, "seconds": seconds, "first_batch_s": first, "id_sum": id_sum}


def run_arrow_ceiling(data: Path) -> dict[str, Any]:
    started = time.perf_counter()
    return _consume(parquet_row_groups(data / "delta"), lambda b: b[0], started)


def write_reread_table(path: Path) -> None:
    """A table of ``REREAD_ROW_GROUPS`` small row groups (two files) for the row-group reread count."""
    import pyarrow as pa  # noqa: PLC0415
    from deltalake import WriterProperties, write_deltalake  # noqa: PLC0415

    rows = REREAD_ROW_GROUPS * REREAD_ROW_GROUP_ROWS
    props = WriterProperties(
        compression="UNCOMPRESSED", max_row_group_size=REREAD_ROW_GROUP_ROWS, write_batch_size=REREAD_ROW_GROUP_ROWS
    )
    for ids, tokens in token_chunks(rows, 2, seed=1):
        values = pa.array(tokens.reshape(-1))
        column = pa.ListArray.from_arrays(pa.array(np.arange(0, len(values) + 1, WIDTH, dtype=np.int32)), values)
        write_deltalake(str(path), pa.table({"id": ids, "tokens": column}), mode="append", writer_properties=props)


def run_tierlake_rereads(data: Path) -> dict[str, Any]:
    """One shuffled epoch of the default DeltaLoader over the many-row-group table: reads vs row groups."""
    from loaders.dataset import OrderOptions, delta_dataset  # noqa: PLC0415
    from loaders.loader import DeltaLoader  # noqa: PLC0415

    dataset = delta_dataset(data / "rereads", columns=["id", "tokens"], order=OrderOptions(seed=1, shuffle=True))
    loader = DeltaLoader(dataset, batch_size=BATCH, num_workers=WORKERS)
    started = time.perf_counter()
    result = _consume(iter(loader), lambda b: b["id"].numpy(), started)
    store = loader.stats.store
    result.update(row_groups=len(dataset.sources[0].plan), row_group_reads=store.reads, rereads=store.rereads)
    return result


def _tierlake_dataset(data: Path, *, shuffle: bool) -> Any:
    from loaders.dataset import OrderOptions, delta_dataset  # noqa: PLC0415

    return delta_dataset(data / "delta", columns=["id", "tokens"], order=OrderOptions(seed=1, shuffle=shuffle))


def run_tierlake(data: Path, *, shuffle: bool = True) -> dict[str, Any]:
    from loaders.loader import DeltaLoader  # noqa: PLC0415

    started = time.perf_counter()
    loader = DeltaLoader(_tierlake_dataset(data, shuffle=shuffle), batch_size=BATCH, num_workers=WORKERS, tail="pad")
    result = _consume(iter(loader), lambda b: b["id"].numpy(), started)
    result["peak_decoded_bytes"] = loader.stats.store.peak_resident_bytes
    result["row_group_reads"] = loader.stats.store.reads
    result["row_group_rereads"] = loader.stats.store.rereads
    return result


def run_tierlake_processes(data: Path) -> dict[str, Any]:
    from torch.utils.data import DataLoader  # noqa: PLC0415

    from loaders.order import TailRule  # noqa: PLC0415
    from loaders.workers import DeltaIterableDataset  # noqa: PLC0415

    started = time.perf_counter()
    iterable = DeltaIterableDataset(_tierlake_dataset(data, shuffle=True), batch_size=BATCH, tail=TailRule.PAD)
    loader = DataLoader(iterable, batch_size=None, num_workers=WORKERS)
    return _consume(iter(loader), lambda b: b["id"].numpy(), started)


def run_tierlake_slabs(data: Path) -> dict[str, Any]:
    from loaders.slabs import SlabLoader  # noqa: PLC0415

    started = time.perf_counter()
    loader = SlabLoader(_tierlake_dataset(data, shuffle=True), batch_size=BATCH, num_workers=WORKERS, tail="pad")
    return _consume(iter(loader), lambda b: b["id"].numpy(), started)


def run_parquet_dataloader(data: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq  # noqa: PLC0415
    import torch  # noqa: PLC0415
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info  # noqa: PLC0415

    class RowGroups(IterableDataset[dict[str, Any]]):
        def __init__(self, files: list[Path]) -> None:
            self.units = [(f, rg) for f in files for rg in range(pq.ParquetFile(f).num_row_groups)]

        def __iter__(self) -> Iterator[dict[str, Any]]:
            info = get_worker_info()
            worker, workers = (info.id, info.num_workers) if info else (0, 1)
            for file, rg in self.units[worker::workers]:
                table = pq.ParquetFile(file).read_row_group(rg)
                tokens = table.column("tokens").combine_chunks().values.to_numpy().reshape(-1, WIDTH)
                ids = table.column("id").to_numpy()
                for i in range(len(ids)):
                    yield {"id": int(ids[i]), "tokens": torch.from_numpy(tokens[i])}

    started = time.perf_counter()
    dataset = RowGroups(sorted((data / "delta").glob("*.parquet")))
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS)
    return _consume(iter(loader), lambda b: b["id"].numpy(), started)


def run_mosaic(data: Path) -> dict[str, Any]:
    from streaming import StreamingDataset  # noqa: PLC0415
    from streaming.base.util import clean_stale_shared_memory  # noqa: PLC0415
    from torch.utils.data import DataLoader  # noqa: PLC0415

    clean_stale_shared_memory()
    started = time.perf_counter()
    dataset = StreamingDataset(local=str(data / "mds"), batch_size=BATCH, shuffle=False)
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS)
    return _consume(iter(loader), lambda b: b["id"].numpy(), started)


def run_litdata(data: Path) -> dict[str, Any]:
    from litdata import StreamingDataLoader, StreamingDataset  # noqa: PLC0415

    started = time.perf_counter()
    dataset = StreamingDataset(input_dir=str(data / "litdata"), cache_dir=str(data / "litdata-cache"))
    loader = StreamingDataLoader(dataset, batch_size=BATCH, num_workers=WORKERS)
    return _consume(iter(loader), lambda b: b["id"].numpy(), started)


RUNS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "tierlake_rereads": run_tierlake_rereads,
    "arrow_ceiling": run_arrow_ceiling,
    "tierlake": run_tierlake,
    "tierlake_sequential": lambda data: run_tierlake(data, shuffle=False),
    "tierlake_processes": run_tierlake_processes,
    "tierlake_slabs": run_tierlake_slabs,
    "parquet_dataloader": run_parquet_dataloader,
    "mosaic": run_mosaic,
    "litdata": run_litdata,
}


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.extend(int(c) for c in task.read_text(encoding="ascii").split())
        except (OSError, ValueError):
            continue
    return found


class RssSampler:
    """Peak of the summed RSS of this process and its descendants (DataLoader workers), sampled every 20 ms.

    ``ru_maxrss`` would not do: Linux carries the high-water mark across exec, so a child would report the
    bench parent's peak. Forked workers share pages with their parent, so the sum over-counts them a little.
    """

    def __init__(self) -> None:
        self.peak_self_kb = 0
        self.peak_tree_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.02):
            own = _rss_kb(me)
            tree = own
            pending = _children(me)
            while pending:
                pid = pending.pop()
                tree += _rss_kb(pid)
                pending.extend(_children(pid))
            self.peak_self_kb = max(self.peak_self_kb, own)
            self.peak_tree_kb = max(self.peak_tree_kb, tree)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def child(name: str, data: Path) -> None:
    sampler = RssSampler()
    result = RUNS[name](data)
    sampler.stop()
    result["peak_rss_mb"] = sampler.peak_self_kb / 1024
    result["peak_tree_rss_mb"] = sampler.peak_tree_kb / 1024
    sys.stdout.write(json.dumps(result) + "\n")


def run_in_child(name: str, data: Path, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--workdir", str(data)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-3:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# ---------------------------------------------------------------------------------------------------------
# Orchestration


def prepare(data: Path, rows: int, files: int, wanted: set[str]) -> dict[str, float]:
    timings: dict[str, float] = {}
    steps: list[tuple[str, Callable[[], None]]] = [("delta", lambda: write_delta(data / "delta", rows, files))]
    if "tierlake_rereads" in wanted:
        steps.append(("rereads", lambda: write_reread_table(data / "rereads")))
    if "mosaic" in wanted:
        steps.append(("mds", lambda: write_mds(data / "mds", data / "delta")))
    if "litdata" in wanted:
        steps.append(("litdata", lambda: write_litdata(data / "litdata", data / "delta")))
    for name, step in steps:
        started = time.perf_counter()
        step()
        timings[f"write_{name}_s"] = round(time.perf_counter() - started, 2)
        logger.info("wrote %s in %.1f s", name, timings[f"write_{name}_s"])
    return timings


def figures_of(results: dict[str, dict[str, Any]], rows: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    expected_sum = rows * (rows - 1) // 2
    for name, result in results.items():
        if "error" in result:
            figures[name] = result
            continue
        seconds = result["seconds"]
        figures[name] = {
            "samples": result["samples"],
            "samples_per_s": round(result["samples"] / seconds, 1),
            "mb_per_s": round(result["samples"] * ROW_BYTES / seconds / 1e6, 1),
            "first_batch_s": None if result["first_batch_s"] is None else round(result["first_batch_s"], 3),
            "seconds": round(seconds, 2),
            "peak_rss_mb": round(result["peak_rss_mb"], 1),
            "peak_rss_with_workers_mb": round(result["peak_tree_rss_mb"], 1),
            "all_rows_once": result["samples"] == rows and result["id_sum"] == expected_sum,
        }
        for extra in ("peak_decoded_bytes", "row_group_reads", "row_group_rereads"):
            if extra in result:
                figures[name][extra] = result[extra]
    return figures


def reread_figures(result: dict[str, Any]) -> dict[str, Any]:
    if "error" in result:
        return result
    expected = REREAD_ROW_GROUPS * REREAD_ROW_GROUP_ROWS
    return {
        "row_groups": result["row_groups"],
        "row_group_reads": result["row_group_reads"],
        "rereads": result["rereads"],
        "samples": result["samples"],
        "rows": expected,
        "shuffle": True,
        "tail": "drop",
    }


def ratios_of(figures: dict[str, Any]) -> dict[str, float | None]:
    def ratio(a: str, b: str) -> float | None:
        if "mb_per_s" not in figures.get(a, {}) or "mb_per_s" not in figures.get(b, {}):
            return None
        return round(float(figures[a]["mb_per_s"]) / float(figures[b]["mb_per_s"]), 3)

    return {
        "vs_arrow_ceiling": ratio("tierlake", "arrow_ceiling"),
        "sequential_vs_arrow_ceiling": ratio("tierlake_sequential", "arrow_ceiling"),
        "vs_litdata": ratio("tierlake", "litdata"),
        "vs_mosaic": ratio("tierlake", "mosaic"),
        "vs_parquet_dataloader": ratio("tierlake", "parquet_dataloader"),
        "threads_vs_processes": ratio("tierlake", "tierlake_processes"),
        "threads_vs_slabs": ratio("tierlake", "tierlake_slabs"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32,768 rows (256 MiB), under 3 minutes on 2 cores")
    parser.add_argument("--rows", type=int, default=None, help="rows of int32 x 2048 tokens (default 131072)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the data goes (default: a temp dir)")
    parser.add_argument("--only", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.workdir)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    wanted = [name for name in args.only.split(",") if name]
    if unknown := sorted(set(wanted) - set(PATHS)):
        parser.error(f"--only: unknown paths {unknown}; choose from {list(PATHS)}")
    rows = args.rows or (32_768 if args.quick else 131_072)
    files = 4 if args.quick else 8
    data = args.workdir or Path(tempfile.mkdtemp(prefix="tierlake-bench-loader-"))
    try:
        started = time.perf_counter()
        timings = prepare(data, rows, files, set(wanted))
        results = {}
        for name in wanted:
            results[name] = run_in_child(name, data, timeout=600)
            logger.info("%s: %s", name, results[name])
        rereads = results.pop("tierlake_rereads", None)
        figures = figures_of(results, rows)
        tierlake = figures.get("tierlake", {})
        figures["first_batch_s"] = tierlake.get("first_batch_s")
        if rereads is not None:
            figures["row_group_rereads"] = rereads.get("rereads")
            figures["tierlake_rereads"] = reread_figures(rereads)
        setup = {
            "rows": rows,
            "gib": round(rows * ROW_BYTES / 2**30, 3),
            "files": files,
            "row_group_rows": ROW_GROUP,
            "batch_size": BATCH,
            "workers": WORKERS,
            "quick": args.quick,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "page_cache": "warm (data written just before; one run each)",
            "first_batch": "from dataset construction to the first batch, imports excluded",
            "total_s": round(time.perf_counter() - started, 1),
            **timings,
        }
        print(json.dumps({"bench": "loader", "figures": figures, "ratios": ratios_of(figures), "setup": setup}))
    finally:
        if args.workdir is None:
            shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
