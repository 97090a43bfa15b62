"""Freshness of training data: from a record's time in Kafka to the batch that carries it, while ingestion runs.

One run, one live table for both contenders: the stack is brought up (profile from ``--profile`` or
``TIERLAKE_PROFILE``, so the ``TIERLAKE_*`` overrides of an isolated stack apply), ``tierlake ingest start --entity
ev`` runs the streaming driver in its own process, and EV readings that gold flags as anomalies (``temp_c`` 90) are
produced at ``--rate`` records/s, each stamped with the time it is sent. Every one lands in
``gold/ev_anomalies`` (appended by the ingest batch, right after silver). Two readers follow that table at once,
in this process, each in a thread, both polling every ``--poll-s`` and yielding batches of ``--batch-size``:

- ``tierlake``: ``DeltaLoader(delta_dataset(gold, columns=["ts"]), follow=FollowOptions(serve_snapshot=False))``:
  reads each new JSON commit of the log and the new files' row groups;
- ``naive_reread``: the loop one writes without a follower: open the latest version with delta-rs, read the whole
  ``ts`` column, keep the rows not seen before, batch them.

For each record, latency = the wall time its batch is yielded minus its Kafka timestamp (read back from the topic
at the end, matched on ``ts``). A record still in a partial batch when the run ends is counted as not served
(``figures.*_served`` says how many were). Prints one JSON object as its last line (DESIGN.md):
``{"bench", "figures", "ratios", "setup"}``. No asserts on time.

Usage: ``.venv/bin/python bench/loader_follow.py [--quick]`` with the env of the stack to use.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from infra.stack import LocalStack
from loaders import DeltaLoader, delta_dataset
from loaders.follow import DeltaLog, FollowOptions
from loaders.table import ArrowFileSource
from pipelines.ingest.gold_ev import OVERHEAT_C, gold_paths
from pipelines.synthetic.datasets import Record, ev_event
from pipelines.synthetic.produce import send_records
from tierlake.config import Settings, load_settings
from tierlake.logs import configure_logging
from tiers.s3 import delta_storage_options

logger = logging.getLogger("bench.loader_follow")
ENTITY = "ev"


def hot_readings(count: int, seed: int) -> Iterator[Record]:
    """EV readings gold flags (overheating), each with the event time of the moment it is produced."""
    rng = random.Random(seed)
    for index in range(count):
        event = ev_event(rng, index)
        event.update(event_id=str(uuid.uuid4()), temp_c=OVERHEAT_C + 10, status="charging")
        event["ts"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        yield Record(key=str(event["station_id"]).encode(), value=json.dumps(event).encode(), expect="silver")


def ts_micros(iso: str) -> int:
    stamp = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return int(stamp.timestamp()) * 1_000_000 + stamp.microsecond


def cli(settings: Settings, *args: str) -> None:
    """One ``tierlake`` command in its own process, with this process's environment (the stack's overrides)."""
    argv = [sys.executable, "-m", "tierlake.cli", "--profile", settings.profile, *args]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, timeout=600)


def table_ts(uri: str, options: dict[str, str]) -> np.ndarray[Any, Any]:
    """Every ``ts`` of the table's latest version in int64 microseconds (a whole-table read)."""
    table = DeltaTable(uri, storage_options=options).to_pyarrow_table(columns=["ts"])
    column = table.column("ts").combine_chunks()
    micros = column.cast(pa.timestamp("us", tz=column.type.tz), safe=False).cast(pa.int64())
    return np.asarray(micros.to_numpy(zero_copy_only=False))


def wait_for_table(uri: str, options: dict[str, str], wanted: set[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if wanted <= set(table_ts(uri, options).tolist()):
                return
        except TableNotFoundError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{uri} did not receive the warm-up records in {timeout_s} s: is ingestion running?")


class Contender(threading.Thread):
    """A reader of the live table; ``seen[ts] = wall time`` of the batch that first carried the record."""

    def __init__(self, name: str, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.stop = stop
        self.seen: dict[int, float] = {}
        self.error: BaseException | None = None
        self.batches = 0

    def record(self, values: list[int]) -> None:
        now = time.time()
        self.batches += 1
        for value in values:
            self.seen.setdefault(value, now)

    def run(self) -> None:
        try:
            self.follow()
        except BaseException as exc:  # reported in the result, not lost with the thread
            self.error = exc
            logger.exception("%s failed", self.name)

    def follow(self) -> None:
        raise NotImplementedError


class TierlakeFollower(Contender):
    def __init__(self, stop: threading.Event, *, uri: str, options: dict[str, str], batch: int, poll_s: float):
        super().__init__("tierlake", stop)
        # Pinned here, before the live records are sent: everything after it is served from the log.
        dataset = delta_dataset(uri, columns=["ts"], storage_options=options)
        self.pinned = dataset.version
        follow = FollowOptions(serve_snapshot=False, idle_timeout_s=None, stop=stop, poll_interval_s=poll_s)
        self.loader = DeltaLoader(dataset, batch_size=batch, num_workers=1, follow=follow)

    def follow(self) -> None:
        for batch in self.loader:
            self.record(batch["ts"].tolist())


class NaiveReread(Contender):
    def __init__(self, stop: threading.Event, *, uri: str, options: dict[str, str], batch: int, poll_s: float):
        super().__init__("naive_reread", stop)
        self.uri, self.options, self.batch, self.poll_s = uri, options, batch, poll_s
        self.known = set(table_ts(uri, options).tolist())  # the table as it is before the live records
        self.read_s: list[float] = []

    def follow(self) -> None:
        pending: list[int] = []
        while not self.stop.is_set():
            began = time.perf_counter()
            values = table_ts(self.uri, self.options).tolist()
            self.read_s.append(time.perf_counter() - began)
            fresh = [v for v in values if v not in self.known]
            self.known.update(fresh)
            pending.extend(fresh)
            while len(pending) >= self.batch:
                self.record(pending[: self.batch])
                del pending[: self.batch]
            self.stop.wait(self.poll_s)


def kafka_times(settings: Settings, topic: str, wanted: set[int]) -> dict[int, float]:
    """Kafka timestamp (s) of each produced record whose ``ts`` is in ``wanted``, read back from the topic."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap(),
            "group.id": f"bench-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    found: dict[int, float] = {}
    deadline = time.monotonic() + 120
    try:
        while len(found) < len(wanted) and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error() is None:
                    stamp = json.loads(message.value() or b"{}").get("ts")
                    ts = ts_micros(stamp) if isinstance(stamp, str) else None
                    if ts in wanted:
                        found[ts] = message.timestamp()[1] / 1000
    finally:
        consumer.close()
    return found


def commit_times(uri: str, options: dict[str, str], after: int) -> dict[int, float]:
    """For each ``ts`` the versions after ``after`` added, the time of its commit (``commitInfo.timestamp``, the
    writer's clock on this machine): how much of a record's lag is ingestion's, and how much the reader's."""
    log, files = DeltaLog(uri, options), ArrowFileSource(options)
    found: dict[int, float] = {}
    version = after + 1
    while (actions := log.actions(version)) is not None:
        stamp = next(a["commitInfo"]["timestamp"] for a in actions if "commitInfo" in a) / 1000
        for add in (a["add"] for a in actions if "add" in a and a["add"].get("dataChange")):
            column = pq.read_table(files.open(f"{uri.rstrip('/')}/{unquote(add['path'])}"), columns=["ts"])["ts"]
            micros = column.cast(pa.timestamp("us", tz=column.type.tz), safe=False).cast(pa.int64())
            found.update(dict.fromkeys(micros.to_pylist(), stamp))
        version += 1
    return found


def latencies(contender: Contender, sent: dict[int, float]) -> dict[str, Any]:
    lags = np.asarray([contender.seen[ts] - at for ts, at in sent.items() if ts in contender.seen])
    return {
        "p50_s": round(float(np.percentile(lags, 50)), 3) if len(lags) else None,
        "p99_s": round(float(np.percentile(lags, 99)), 3) if len(lags) else None,
        "served": len(lags),
        "batches": contender.batches,
        "error": None if contender.error is None else repr(contender.error),
    }


def live_run(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """Ingestion started, warmed up, both contenders following while records arrive; ingestion stopped after."""
    options = delta_storage_options(settings.s3)
    uri = gold_paths(settings.s3.lake_bucket, ENTITY)[1].replace("s3a://", "s3://", 1)
    topic = settings.entities[ENTITY].topic
    cli(settings, "ingest", "start", "--entity", ENTITY, "--trigger-s", str(args.trigger_s))
    try:
        warm = list(hot_readings(args.batch_size, seed=1))
        send_records(settings, topic, iter(warm), total=len(warm), progress=False)
        wait_for_table(uri, options, {ts_micros(json.loads(r.value)["ts"]) for r in warm}, timeout_s=300)
        stop = threading.Event()
        common = {"uri": uri, "options": options, "batch": args.batch_size, "poll_s": args.poll_s}
        follower, naive = TierlakeFollower(stop, **common), NaiveReread(stop, **common)
        contenders: list[Contender] = [follower, naive]
        for contender in contenders:
            contender.start()
        count = int(args.rate * args.seconds)
        live: list[Record] = []

        def produced() -> Iterator[Record]:
            for record in hot_readings(count, seed=2):
                live.append(record)
                yield record

        send_records(settings, topic, produced(), total=count, rate=args.rate, progress=False)
        wanted = {ts_micros(json.loads(r.value)["ts"]) for r in live}
        deadline = time.monotonic() + args.drain_s
        # A record in a last partial batch is never yielded: wait for all but batch_size - 1 of them.
        while time.monotonic() < deadline and any(
            len(wanted & c.seen.keys()) < len(wanted) - (args.batch_size - 1) and c.is_alive() for c in contenders
        ):
            time.sleep(0.5)
        stop.set()
        for contender in contenders:
            contender.join(60)
    finally:
        cli(settings, "ingest", "stop")
    return {
        "sent": kafka_times(settings, topic, wanted),
        "committed": commit_times(uri, options, follower.pinned),
        "contenders": contenders,
        "count": count,
        "table_rows": len(table_ts(uri, options)),
        "naive_read_s": float(np.median(naive.read_s)) if naive.read_s else None,
    }


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 3) if ours and theirs else None


def result_of(
    measured: dict[str, Any], args: argparse.Namespace, settings: Settings, load: list[float]
) -> dict[str, Any]:
    sent, committed = measured["sent"], measured["committed"]
    ours, naive = (latencies(c, sent) for c in measured["contenders"])
    ours_read, naive_read = (latencies(c, committed) for c in measured["contenders"])
    ingest = np.asarray([committed[ts] - at for ts, at in sent.items() if ts in committed])
    return {
        "bench": "loader_follow",
        "figures": {
            "kafka_to_batch_p50_s": ours["p50_s"],
            "kafka_to_batch_p99_s": ours["p99_s"],
            "tierlake_served": ours["served"],
            "tierlake_batches": ours["batches"],
            "naive_reread_p50_s": naive["p50_s"],
            "naive_reread_p99_s": naive["p99_s"],
            "naive_reread_served": naive["served"],
            "kafka_to_commit_p50_s": round(float(np.percentile(ingest, 50)), 3) if len(ingest) else None,
            "commit_to_batch_p50_s": ours_read["p50_s"],
            "commit_to_batch_p99_s": ours_read["p99_s"],
            "naive_reread_commit_to_batch_p50_s": naive_read["p50_s"],
            "naive_reread_commit_to_batch_p99_s": naive_read["p99_s"],
            "naive_reread_whole_table_read_s_median": round(measured["naive_read_s"] or 0, 3),
            "records_sent": measured["count"],
            "records_found_in_kafka": len(sent),
            "table_rows_at_end": measured["table_rows"],
            "errors": [c["error"] for c in (ours, naive) if c["error"]],
        },
        "ratios": {
            "p50_vs_naive_reread": _ratio(ours["p50_s"], naive["p50_s"]),
            "p99_vs_naive_reread": _ratio(ours["p99_s"], naive["p99_s"]),
            "commit_to_batch_p50_vs_naive_reread": _ratio(ours_read["p50_s"], naive_read["p50_s"]),
            "commit_to_batch_p99_vs_naive_reread": _ratio(ours_read["p99_s"], naive_read["p99_s"]),
        },
        "setup": {
            "rate": args.rate,
            "seconds": args.seconds,
            "batch_size": args.batch_size,
            "poll_s": args.poll_s,
            "trigger_s": args.trigger_s,
            "quick": args.quick,
            "cores": os.cpu_count(),
            "profile": settings.profile,
            "loadavg_1m_start": load[0],
            "loadavg_1m_end": round(os.getloadavg()[0], 2),
            "latency": "batch yielded (wall clock) minus the record's Kafka timestamp",
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a shorter live part")
    parser.add_argument("--profile", default=os.environ.get("TIERLAKE_PROFILE", "local"))
    parser.add_argument("--rate", type=float, default=20.0, help="records/s produced during the live part")
    parser.add_argument("--seconds", type=float, help="length of the live part (default 60, quick 30)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--poll-s", type=float, default=0.5, help="how often both readers look for new data")
    parser.add_argument("--trigger-s", type=float, default=2.0, help="ingestion's micro-batch interval")
    parser.add_argument("--drain-s", type=float, default=120.0, help="how long to wait for the last records")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (30.0 if args.quick else 60.0)
    load = [round(x, 2) for x in os.getloadavg()]
    settings = load_settings(args.profile)
    configure_logging(settings.run_dir / "logs" / "bench-loader-follow.log")
    settings = LocalStack(settings).up()
    measured = live_run(settings, args)
    sys.stdout.write(json.dumps(result_of(measured, args, settings, load)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
