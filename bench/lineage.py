"""Lineage trace over 10,000 ingest batches: tierlake's lineage table against scanning the Delta history.

A Delta table gets ``--batches`` ingest commits (one small Parquet file each; each commit's ``userMetadata`` holds
its Kafka offset ranges on ``--partitions`` partitions, exactly as ``pipelines.ingest.silver.commit_metadata``
writes them); the log entries are written straight to ``_delta_log`` (the table's first version by delta-rs), with a
Delta checkpoint at the end, so building 10,000 versions takes seconds rather than an hour of appends. Then, side by
side on the same table, the trace of one version (its batch, the offsets of every batch up to it, upstream,
checkpoints, tape):

- **tierlake**: ``trace_version`` from the lineage table (``tierlake lineage sync`` first: one-off, also timed,
  events validated against the OpenLineage schema; then an incremental sync of ``--more`` new batches);
- **peer, history scan**: the same trace derived from the table's Delta history (delta-rs ``history()``: every
  commit's entry read and parsed), what ``trace`` did before the lineage table and what a user would write;
- **peer, SQL**: DuckDB over the lineage table's Parquet files, only the offsets part of the answer.

Local disk by default (``--where``: a folder; both tables there). The last line of output is one JSON object.
Times are wall-clock on a shared machine: compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.ingest.silver import commit_metadata  # noqa: E402
from training.lineage_store import LineageSources, LineageStore, sync  # noqa: E402
from training.lineage_trace import VersionTrace, trace_version  # noqa: E402

TOPIC = "ev.telemetry"
PER_BATCH = 500  # records per partition per batch


def log(message: str) -> None:
    sys.stderr.write(f"[bench lineage] {message}\n")


def _commit(version: int, path: str, size: int, partitions: int) -> str:
    """One ingest commit of the Delta log: commitInfo with the batch's offsets, and the add of its file."""
    batch = version - 1
    ranges = {p: (batch * PER_BATCH, batch * PER_BATCH + PER_BATCH - 1) for p in range(partitions)}
    now = int(time.time() * 1000)
    info = {
        "timestamp": now,
        "operation": "WRITE",
        "operationParameters": {"mode": "Append"},
        "readVersion": version - 1,
        "isBlindAppend": True,
        "userMetadata": commit_metadata("ev", batch, {TOPIC: ranges}),
    }
    add = {"path": path, "partitionValues": {}, "size": size, "modificationTime": now, "dataChange": True}
    return json.dumps({"commitInfo": info}) + "\n" + json.dumps({"add": add}) + "\n"


def add_batches(uri: str, first: int, count: int, partitions: int) -> None:
    """Ingest commits ``first`` .. ``first + count - 1`` of the table at ``uri`` (a folder), then a checkpoint."""
    from deltalake import DeltaTable  # noqa: PLC0415

    folder = Path(uri)
    row = pa.table({"n": pa.array([0], pa.int64())})
    for version in range(first, first + count):
        name = f"part-{version:05d}-{uuid.uuid4()}.parquet"
        pq.write_table(row, folder / name)
        entry = folder / "_delta_log" / f"{version:020d}.json"
        entry.write_text(_commit(version, name, (folder / name).stat().st_size, partitions))
    DeltaTable(uri).create_checkpoint()


def build(folder: Path, batches: int, partitions: int) -> str:
    from deltalake import write_deltalake  # noqa: PLC0415

    uri = str(folder / "bronze")
    write_deltalake(uri, pa.table({"n": pa.array([0], pa.int64())}), mode="append")  # version 0
    add_batches(uri, 1, batches, partitions)
    return uri


def timed(work: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median seconds of ``repeats`` runs of ``work``, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def duckdb_offsets(store: LineageStore, uri: str, version: int) -> list[tuple[Any, ...]]:
    import duckdb  # noqa: PLC0415
    from deltalake import DeltaTable  # noqa: PLC0415

    files = [f.removeprefix("file://") for f in DeltaTable(store.uri).file_uris()]
    sql = (
        "SELECT topic, kafka_partition, min(offset_first), max(offset_last) "
        "FROM read_parquet(?) WHERE table_uri = ? AND kind = 'ingest' AND version <= ? GROUP BY 1, 2 ORDER BY 1, 2"
    )
    with duckdb.connect() as connection:
        return connection.execute(sql, [files, uri, version]).fetchall()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The bench's options: the table's size, the incremental sync's batches, repeats, and where the tables go."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batches", type=int, default=10_000, help="ingest batches (Delta commits) in the table")
    parser.add_argument("--partitions", type=int, default=3, help="Kafka partitions per batch")
    parser.add_argument("--more", type=int, default=100, help="batches added before the incremental sync")
    parser.add_argument("--repeats", type=int, default=7, help="runs of each trace (the median is reported)")
    parser.add_argument("--where", default="", help="a folder for the tables (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="3 repeats of each trace")
    return parser.parse_args(argv)


def _check_agree(kept: VersionTrace, derived: VersionTrace, sql_rows: list[tuple[Any, ...]]) -> None:
    """Stop the bench unless the lineage table, the history scan and DuckDB give the same answer."""
    if (kept.offsets, kept.ingest_commits, kept.batch) != (derived.offsets, derived.ingest_commits, derived.batch):
        raise SystemExit(f"the lineage table and the history disagree: {kept} vs {derived}")
    if [(r[0], str(r[1]), [r[2], r[3]]) for r in sql_rows] != [
        (t, p, r) for t, parts in sorted(kept.offsets.items()) for p, r in sorted(parts.items())
    ]:
        raise SystemExit(f"DuckDB's offsets differ from the trace's: {sql_rows} vs {kept.offsets}")


def _setup(args: argparse.Namespace, *, repeats: int, middle: int, started: float) -> dict[str, Any]:
    """The bench's setup: its sizes, the traced version, the peers, the goal and the machine."""
    return {
        "batches": args.batches,
        "more_batches": args.more,
        "partitions": args.partitions,
        "traced_version": middle,
        "repeats": repeats,
        "storage": "local disk (both tables in one temporary folder)",
        "peers": {
            "history_scan": "trace_version from delta-rs DeltaTable.history() of every commit (no lineage table)",
            "duckdb_sql": "DuckDB SQL over the lineage table's Parquet files (offsets only)",
        },
        "goal": "trace_s <= 1 s over 10,000 ingest batches (issue 21)",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.where or None, prefix="bench-lineage-") as scratch:
        folder = Path(scratch)
        log(f"writing {args.batches} ingest commits ({args.partitions} partitions each)")
        build_s, uri = timed(lambda: build(folder, args.batches, args.partitions), 1)
        store = LineageStore(str(folder / "lineage"))
        sources = LineageSources(tables=[uri], lake_bucket="lake", events_out=folder / "lake.jsonl")
        log("first sync into the lineage table")
        sync_s, report = timed(lambda: sync(store, sources), 1)
        add_batches(uri, args.batches + 1, args.more, args.partitions)
        incremental_s, more = timed(lambda: sync(store, sources), 1)
        newest = args.batches + args.more
        middle = newest // 2
        log(f"traces of version {middle}, {repeats} runs each")
        trace_s, kept = timed(lambda: trace_version(uri, middle, store=store, options={}), repeats)
        scan_s, derived = timed(lambda: trace_version(uri, middle, store=None, options={}), repeats)
        sql_s, sql_rows = timed(lambda: duckdb_offsets(store, uri, middle), repeats)
        _check_agree(kept, derived, sql_rows)
        rows = store.read(columns=["kind"]).num_rows
    figures = {
        "trace_s": round(trace_s, 4),
        "trace_history_scan_s": round(scan_s, 4),
        "trace_duckdb_sql_s": round(sql_s, 4),
        "first_sync_s": round(sync_s, 2),
        "incremental_sync_s": round(incremental_s, 3),
        "build_table_s": round(build_s, 1),
        "lineage_rows": rows,
        "events_validated": report.events + more.events,
    }
    ratios = {
        "trace_vs_history_scan": round(trace_s / scan_s, 4),
        "trace_vs_duckdb_sql": round(trace_s / sql_s, 3),
    }
    setup = _setup(args, repeats=repeats, middle=middle, started=started)
    print(json.dumps({"bench": "lineage", "figures": figures, "ratios": ratios, "setup": setup}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
