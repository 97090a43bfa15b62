"""Delta commit cost on Ceph RGW: tierlake's conditional-PUT log store against Delta's S3SingleDriverLogStore.

``spark.delta_commits: conditional`` (the default) creates each ``_delta_log`` entry with one PUT carrying
``If-None-Match: *`` (infra/logstore); Delta's own S3 log store probes for the entry, then PUTs it unconditionally
(safe only with one writer per table). Measured side by side on the same RGW:

- log entry writes: ``--entries`` fresh entries through each class's ``write(..., overwrite=false)`` in one JVM,
  interleaved, so both see the same load;
- whole appends: ``--appends`` one-row Delta appends to a fresh table, in one Spark session per log store (the log
  store is fixed when a session starts, so each runs in a child process of this script), in three rounds of one
  child per store, the order alternating.

The last line of output is one JSON object. Times are wall-clock on a shared machine: compare the ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.session import LOG_STORES, spark_session  # noqa: E402
from tierlake.config import Settings, load_settings  # noqa: E402


def log(message: str) -> None:
    sys.stderr.write(f"[bench commits] {message}\n")


def ensure_rgw(settings: Settings) -> Settings:
    """Ceph RGW of this profile, started through infra/ if needed (Kafka is not needed here)."""
    from infra.stack import LocalStack  # noqa: PLC0415

    ceph_only = dataclasses.replace(settings, kafka=dataclasses.replace(settings.kafka, managed=False))
    return LocalStack(ceph_only).up() if settings.ceph.managed else settings


def _jvm_class(jvm: Any, name: str) -> Any:
    """``jvm.a.b.C`` for the dotted name ``a.b.C`` (py4j resolves packages attribute by attribute)."""
    target = jvm
    for part in name.split("."):
        target = getattr(target, part)
    return target


def entry_writes(settings: Settings, count: int) -> dict[str, list[float]]:
    """Seconds per new log entry written by each log store class, interleaved in one JVM."""
    spark = spark_session(settings, app_name="bench-commits-entries")
    jvm: Any = spark._jvm
    conf: Any = spark._jsc.hadoopConfiguration()
    instances = {mode: _jvm_class(jvm, name)(conf) for mode, name in LOG_STORES.items()}
    prefix = f"s3a://{settings.s3.lake_bucket}/bench/commits/{uuid.uuid4().hex[:8]}"
    times: dict[str, list[float]] = {mode: [] for mode in LOG_STORES}
    for i in range(count + 1):
        for mode, store in instances.items():
            actions = jvm.java.util.ArrayList()
            actions.add(json.dumps({"commitInfo": {"bench": mode, "round": i}}))
            path = jvm.org.apache.hadoop.fs.Path(f"{prefix}/{mode}/_delta_log/{i:020d}.json")
            started = time.perf_counter()
            store.write(path, actions.iterator(), False, conf)
            if i:  # the first round warms each class's file system and connections
                times[mode].append(time.perf_counter() - started)
    spark.stop()
    return times


def appends(profile: str, mode: str, count: int) -> list[float]:
    """Seconds per one-row Delta append with ``mode``'s log store, in a child process (one session per mode)."""
    env = {**os.environ, "TIERLAKE_SPARK__DELTA_COMMITS": mode}
    out = subprocess.run(
        [sys.executable, __file__, "--child-appends", str(count), "--profile", profile],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [float(x) for x in json.loads(out.strip().splitlines()[-1])]


def interleaved_appends(profile: str, count: int, *, rounds: int = 3) -> dict[str, list[float]]:
    """``count`` appends per log store in ``rounds`` rounds, each round one child per store, the order alternating,
    so that both stores see the machine's load of the same minutes."""
    modes = list(LOG_STORES)
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for round_ in range(rounds):
        share = count // rounds + (round_ < count % rounds)
        for mode in modes if round_ % 2 == 0 else reversed(modes):
            if share:
                times[mode] += appends(profile, mode, share)
    return times


def child_appends(settings: Settings, count: int) -> list[float]:
    spark = spark_session(settings, app_name=f"bench-commits-{settings.spark.delta_commits}")
    uri = f"s3a://{settings.s3.lake_bucket}/bench/commits/{uuid.uuid4().hex[:8]}-{settings.spark.delta_commits}"
    times = []
    for i in range(count + 1):
        frame = spark.createDataFrame([(i, float(i))], "id long, value double")
        started = time.perf_counter()
        frame.write.format("delta").mode("append").save(uri)
        if i:  # the first append creates the table
            times.append(time.perf_counter() - started)
    spark.stop()
    return times


def p50_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--profile", default=os.environ.get("TIERLAKE_PROFILE", "local"))
    parser.add_argument("--entries", type=int, default=60, help="log entries per log store")
    parser.add_argument("--appends", type=int, default=15, help="Delta appends per log store")
    parser.add_argument("--quick", action="store_true", help="30 entries and 8 appends per log store")
    parser.add_argument("--child-appends", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = ensure_rgw(load_settings(args.profile))
    if args.child_appends is not None:
        sys.stdout.write(json.dumps(child_appends(settings, args.child_appends)) + "\n")
        return 0
    entries, rounds = (30, 8) if args.quick else (args.entries, args.appends)
    log(f"{entries} log entries per log store")
    writes = entry_writes(settings, entries)
    log(f"{rounds} appends per log store")
    append_s = interleaved_appends(args.profile, rounds)
    result: dict[str, Any] = {
        "bench": "commits",
        "figures": {
            "entry_write_ms_p50_conditional": p50_ms(writes["conditional"]),
            "entry_write_ms_p50_single_driver": p50_ms(writes["single_driver"]),
            "append_ms_p50_conditional": p50_ms(append_s["conditional"]),
            "append_ms_p50_single_driver": p50_ms(append_s["single_driver"]),
        },
        "ratios": {
            "entry_write_conditional_vs_single_driver": round(
                statistics.median(writes["conditional"]) / statistics.median(writes["single_driver"]), 3
            ),
            "append_conditional_vs_single_driver": round(
                statistics.median(append_s["conditional"]) / statistics.median(append_s["single_driver"]), 3
            ),
        },
        "setup": {
            "peers": {"single_driver": LOG_STORES["single_driver"], "conditional": LOG_STORES["conditional"]},
            "entries": entries,
            "appends": rounds,
            "endpoint": settings.s3.endpoint,
            "load_avg_1m": round(os.getloadavg()[0], 2),
        },
    }
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
