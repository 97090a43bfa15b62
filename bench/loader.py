"""Loader benchmark: tierlake's loader and its peers, side by side in one run, on the same token rows.

The data (as in ``../shared/reference/loader-anchors.md``): rows of ``id`` int64 and ``tokens`` int32 x 2048, random
tokens in [0, 50257) (incompressible), uncompressed Parquet in a Delta table, row groups of 4,096 rows (32 MiB),
8 files; 131,072 rows = 1 GiB of tokens (``--quick``: 32,768 rows, 4 files). The same rows are converted to MDS
(MosaicML Streaming) and to LitData's ``optimize()`` chunks. Every path reads ``--epochs`` epochs (default 3, one
after the other, as a training loop does; tierlake reshuffles each) in batches of 32 in a fresh process, so the
once-per-process costs (threads, the plan, first touches of fresh memory) weigh as they would in training rather than
deciding the ratio; each run reports samples/s and MB/s over all its epochs (token payload, 8 KiB a row), first-batch
latency (from constructing the dataset, after imports) and peak RSS (the process alone, and summed with its worker
processes). ``all_rows_once``: every row once per epoch.

Paths: ``arrow_ceiling`` (the plain read, no loader: pyarrow ``read_row_group`` of the same two columns in storage
order on 2 threads, one row group per thread, the main thread cutting each into batches of 32 ``torch.Tensor`` views:
the same threads and the same output as the loader, without its shuffle), ``arrow_ceiling_1thread`` (the same on one
thread: the ceiling recorded before the rounds), ``tierlake`` (DeltaLoader, 2 threads, shuffled),
``tierlake_arrow_decode`` (the same, with the loader's direct page reader turned off, so pyarrow decodes every row
group as in the ceiling: ``ratios.page_reader_vs_arrow_decode`` is what that reader is worth),
``tierlake_sequential`` (no shuffle, like the peers),
``tierlake_processes`` (the same batches through ``torch.utils.data.DataLoader`` with 2 worker processes: the
per-batch pickling hand-off that the threads avoid), ``tierlake_slabs`` (2 worker processes writing into
preallocated shared-memory slabs; only slab numbers cross processes), ``parquet_dataloader`` (row groups striped
over 2 DataLoader workers, per-row samples, default collate), ``mosaic`` (StreamingDataset on MDS, 2 workers),
``litdata`` (StreamingDataset on optimize() output, 2 workers). The last line printed is the JSON result.
No asserts on time.

Rounds: the paths of ``ROUND_PATHS`` (the ceilings, tierlake's two orders and its pyarrow-decode run) run
``--rounds`` times, interleaved (the order reversed every other round, so drift in the other users' load hits them
alike), each run in a fresh process.
Their figures are the medians over the rounds (``seconds`` per round in ``figures.rounds``), and
``ratios.vs_arrow_ceiling`` is the median over rounds of tierlake's MB/s over the ceiling's in the same round, with
the lowest and highest round beside it (``vs_arrow_ceiling_min`` / ``_max``). The other peers run once each.

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
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from _loader_parts import median_run, ratios_of, rounds_figures
from _rss import RssSampler

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
EPOCHS = 1  # epochs each path reads in its process (``--epochs``; set in the child)
PATHS = (
    "tierlake_rereads",
    "arrow_ceiling",
    "arrow_ceiling_1thread",
    "tierlake",
    "tierlake_arrow_decode",
    "tierlake_sequential",
    "tierlake_processes",
    "tierlake_slabs",
    "parquet_dataloader",
    "mosaic",
    "litdata",
)
ROUND_PATHS = ("arrow_ceiling", "arrow_ceiling_1thread", "tierlake", "tierlake_arrow_decode", "tierlake_sequential")


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


def _consume(
    epoch: Callable[[], Iterator[Any]], get_ids: Callable[[Any], Any], started: float, epochs: int | None = None
) -> dict[str, Any]:
    """Read ``epochs`` epochs (default ``EPOCHS``) of ``epoch()`` in turn, as a training loop does."""
    first = None
    samples = 0
    id_sum = 0
    for _ in range(EPOCHS if epochs is None else epochs):
        for batch in epoch():
            if first is None:
                first = time.perf_counter() - started
            ids = get_ids(batch)
            samples += len(ids)
            id_sum += int(ids.sum())
    seconds = time.perf_counter() - started
    return {"samples": samples, "seconds": seconds, "first_batch_s": first, "id_sum": id_sum}


def ceiling_batches(delta: Path, threads: int) -> Iterator[dict[str, Any]]:
    """The plain read: the table's row groups in storage order, each read whole by one of ``threads`` threads (at
    most ``threads`` reads ahead of the row group being cut), cut into batches of ``BATCH`` tensors (views)."""
    import pyarrow.parquet as pq  # noqa: PLC0415
    import torch  # noqa: PLC0415

    files = sorted(delta.glob("*.parquet"))
    units = [(index, rg) for index, file in enumerate(files) for rg in range(pq.ParquetFile(file).num_row_groups)]
    local = threading.local()

    def read(unit: tuple[int, int]) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        handles: dict[int, Any] = local.__dict__.setdefault("handles", {})
        parquet = handles.get(unit[0]) or handles.setdefault(unit[0], pq.ParquetFile(files[unit[0]]))
        table = parquet.read_row_group(unit[1], columns=["id", "tokens"])
        tokens = table.column("tokens")
        array = tokens.chunk(0) if tokens.num_chunks == 1 else tokens.combine_chunks()
        return table.column("id").to_numpy(), array.values.to_numpy().reshape(-1, WIDTH)

    with ThreadPoolExecutor(threads) as pool:
        pending = deque(pool.submit(read, unit) for unit in units[:threads])
        following = threads
        while pending:
            ids, tokens = pending.popleft().result()
            if following < len(units):
                pending.append(pool.submit(read, units[following]))
                following += 1
            for start in range(0, len(ids), BATCH):
                end = start + BATCH
                yield {"id": torch.from_numpy(ids[start:end]), "tokens": torch.from_numpy(tokens[start:end])}


def run_arrow_ceiling(data: Path, threads: int = WORKERS) -> dict[str, Any]:
    import pyarrow.parquet  # noqa: F401, PLC0415 - imported before the clock starts, as for the other paths
    import torch  # noqa: F401, PLC0415

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # read-only Arrow buffers
    started = time.perf_counter()
    return _consume(lambda: ceiling_batches(data / "delta", threads), lambda b: b["id"].numpy(), started)


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
    result = _consume(lambda: iter(loader), lambda b: b["id"].numpy(), started, epochs=1)
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
    result = _consume(lambda: iter(loader), lambda b: b["id"].numpy(), started)
    result["peak_decoded_bytes"] = loader.stats.store.peak_resident_bytes
    result["row_group_reads"] = loader.stats.store.reads
    result["row_group_rereads"] = loader.stats.store.rereads
    return result


def run_tierlake_arrow_decode(data: Path) -> dict[str, Any]:
    """The shuffled loader with its direct page reader turned off (every row group decoded by pyarrow's
    ``read_row_group``, as the ceiling does): what the page reader alone is worth."""
    from loaders import pages  # noqa: PLC0415

    pages.read_row_group = lambda *args, **kwargs: None  # refuse every row group: this child process only
    return run_tierlake(data)


def run_tierlake_processes(data: Path) -> dict[str, Any]:
    from torch.utils.data import DataLoader  # noqa: PLC0415

    from loaders.order import TailRule  # noqa: PLC0415
    from loaders.workers import DeltaIterableDataset  # noqa: PLC0415

    started = time.perf_counter()
    iterable = DeltaIterableDataset(_tierlake_dataset(data, shuffle=True), batch_size=BATCH, tail=TailRule.PAD)
    loader = DataLoader(iterable, batch_size=None, num_workers=WORKERS)
    return _consume(lambda: iter(loader), lambda b: b["id"].numpy(), started)


def run_tierlake_slabs(data: Path) -> dict[str, Any]:
    from loaders.slabs import SlabLoader  # noqa: PLC0415

    started = time.perf_counter()
    loader = SlabLoader(_tierlake_dataset(data, shuffle=True), batch_size=BATCH, num_workers=WORKERS, tail="pad")
    return _consume(lambda: iter(loader), lambda b: b["id"].numpy(), started)


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
    return _consume(lambda: iter(loader), lambda b: b["id"].numpy(), started)


def run_mosaic(data: Path) -> dict[str, Any]:
    from streaming import StreamingDataset  # noqa: PLC0415
    from streaming.base.util import clean_stale_shared_memory  # noqa: PLC0415
    from torch.utils.data import DataLoader  # noqa: PLC0415

    clean_stale_shared_memory()
    started = time.perf_counter()
    dataset = StreamingDataset(local=str(data / "mds"), batch_size=BATCH, shuffle=False)
    loader = DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS)
    return _consume(lambda: iter(loader), lambda b: b["id"].numpy(), started)


def run_litdata(data: Path) -> dict[str, Any]:
    from litdata import StreamingDataLoader, StreamingDataset  # noqa: PLC0415

    started = time.perf_counter()
    dataset = StreamingDataset(input_dir=str(data / "litdata"), cache_dir=str(data / "litdata-cache"))
    loader = StreamingDataLoader(dataset, batch_size=BATCH, num_workers=WORKERS)
    return _consume(lambda: iter(loader), lambda b: b["id"].numpy(), started)


RUNS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "tierlake_rereads": run_tierlake_rereads,
    "arrow_ceiling": run_arrow_ceiling,
    "arrow_ceiling_1thread": lambda data: run_arrow_ceiling(data, threads=1),
    "tierlake_arrow_decode": run_tierlake_arrow_decode,
    "tierlake": run_tierlake,
    "tierlake_sequential": lambda data: run_tierlake(data, shuffle=False),
    "tierlake_processes": run_tierlake_processes,
    "tierlake_slabs": run_tierlake_slabs,
    "parquet_dataloader": run_parquet_dataloader,
    "mosaic": run_mosaic,
    "litdata": run_litdata,
}


def child(name: str, data: Path, epochs: int) -> None:
    global EPOCHS  # noqa: PLW0603 - one setting of the child process, read by every run
    EPOCHS = epochs
    sampler = RssSampler()
    result = RUNS[name](data)
    sampler.stop()
    result["peak_rss_mb"] = sampler.peak_self_kb / 1024
    result["peak_tree_rss_mb"] = sampler.peak_tree_kb / 1024
    sys.stdout.write(json.dumps(result) + "\n")


def run_in_child(name: str, data: Path, timeout: float, epochs: int = 1) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--workdir", str(data)]
    cmd += ["--epochs", str(epochs)]
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
        # The writers append: a table left by an earlier run in the same --workdir would be read as part of this one.
        shutil.rmtree(data / name, ignore_errors=True)
        started = time.perf_counter()
        step()
        timings[f"write_{name}_s"] = round(time.perf_counter() - started, 2)
        logger.info("wrote %s in %.1f s", name, timings[f"write_{name}_s"])
    return timings


def figures_of(results: dict[str, dict[str, Any]], rows: int, epochs: int = 1) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    expected_sum = epochs * (rows * (rows - 1) // 2)
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
            "all_rows_once": result["samples"] == rows * epochs and result["id_sum"] == expected_sum,
        }
        for extra in ("peak_decoded_bytes", "row_group_reads", "row_group_rereads"):
            if extra in result:
                figures[name][extra] = result[extra]
    return figures


def run_rounds(names: list[str], data: Path, rounds: int, epochs: int) -> dict[str, list[dict[str, Any]]]:
    """Each path of ``names`` once per round in a fresh process, the order reversed every other round."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for number in range(rounds):
        for name in names if number % 2 == 0 else names[::-1]:
            runs[name].append(run_in_child(name, data, timeout=600, epochs=epochs))
            logger.info("round %d, %s: %s", number + 1, name, runs[name][-1])
    return runs


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


def _parser() -> argparse.ArgumentParser:
    """The bench's command line (``--child``: one path's run, in the process the parent started for it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="32,768 rows (256 MiB; 3 epochs a run), about 4 minutes on 2 cores"
    )
    parser.add_argument("--rows", type=int, default=None, help="rows of int32 x 2048 tokens (default 131072)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the data goes (default: a temp dir)")
    parser.add_argument("--only", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    parser.add_argument("--epochs", type=int, default=3, help="epochs each path reads in its process (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help=f"interleaved rounds of {','.join(ROUND_PATHS)}")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser


def _setup(
    args: argparse.Namespace,
    wanted: list[str],
    *,
    rows: int,
    files: int,
    epochs: int,
    started: float,
    timings: dict[str, float],
) -> dict[str, Any]:
    """The run's setup: the data's shape, the loader's settings, the machine, the rounds and the writes' seconds."""
    return {
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
        "page_cache": "warm (data written just before)",
        "rounds": max(1, args.rounds),
        "epochs_per_run": epochs,
        "round_paths": [name for name in wanted if name in ROUND_PATHS],
        "ceiling_threads": WORKERS,
        "first_batch": "from dataset construction to the first batch, imports excluded",
        "total_s": round(time.perf_counter() - started, 1),
        **timings,
    }


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.workdir, max(1, args.epochs))
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
        if "tierlake_rereads" in wanted:
            results["tierlake_rereads"] = run_in_child("tierlake_rereads", data, timeout=600)
        epochs = max(1, args.epochs)
        runs = run_rounds([name for name in wanted if name in ROUND_PATHS], data, max(1, args.rounds), epochs)
        results |= {name: median_run(rounds) for name, rounds in runs.items()}
        for name in wanted:
            if name not in results:
                results[name] = run_in_child(name, data, timeout=600, epochs=epochs)
                logger.info("%s: %s", name, results[name])
        rereads = results.pop("tierlake_rereads", None)
        figures = figures_of({name: results[name] for name in wanted if name in results}, rows, epochs)
        tierlake = figures.get("tierlake", {})
        figures["first_batch_s"] = tierlake.get("first_batch_s")
        if rereads is not None:
            figures["row_group_rereads"] = rereads.get("rereads")
            figures["tierlake_rereads"] = reread_figures(rereads)
        figures["rounds"] = rounds_figures(runs)
        setup = _setup(args, wanted, rows=rows, files=files, epochs=epochs, started=started, timings=timings)
        print(json.dumps({"bench": "loader", "figures": figures, "ratios": ratios_of(figures, runs), "setup": setup}))
    finally:
        if args.workdir is None:
            shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
