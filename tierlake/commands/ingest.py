"""``tierlake produce``, ``tierlake ingest ...`` and ``tierlake demo``: the data path from Kafka to Delta."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pipelines.ingest.rules import RULES
from tierlake.commands import (
    ExitCode,
    Subparsers,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    spark_for,
)
from tierlake.config import Settings
from tierlake.errors import IngestFailed


def _produce(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.synthetic.produce import produce_events  # noqa: PLC0415 - each subcommand imports only what it needs

    summary = produce_events(
        settings,
        dataset=args.dataset,
        events=args.events,
        rate=args.rate,
        bad_fraction=args.bad_fraction,
        seed=args.seed,
        progress=not args.json,
        days_ago=args.days_ago,
    )
    sys.stdout.write((json.dumps(summary.as_dict()) if args.json else summary.describe()) + "\n")
    return ExitCode.OK if summary.failed == 0 else ExitCode.INCOMPLETE


def _entities(args: argparse.Namespace, settings: Settings) -> list[str]:
    return list(args.entity or settings.entities)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.ingest.driver import entity_leases, holding, run_until_caught_up  # noqa: PLC0415
    from pipelines.ingest.silver import silver_tables  # noqa: PLC0415

    entities = _entities(args, settings)
    for entity in entities:
        silver_tables(settings, entity)  # refuse an unknown entity before paying for a JVM
    # The leases first: a second writer is refused at once, before a JVM starts.
    with holding(entity_leases(settings, entities)) as leases, spark_for(settings, "tierlake-ingest") as spark:
        try:
            report = run_until_caught_up(spark, settings, entities=entities, leases=leases)
        except IngestFailed as failed:  # what the other entities did still goes to stdout; the error to stderr
            sys.stdout.write(json.dumps(failed.report, indent=None if args.json else 2) + "\n")
            raise
    sys.stdout.write(json.dumps(report, indent=None if args.json else 2) + "\n")
    return 0


def _reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.checks.reconcile import reconcile  # noqa: PLC0415
    from pipelines.ingest.silver import silver_tables  # noqa: PLC0415

    entities = _entities(args, settings)
    for entity in entities:
        silver_tables(settings, entity)
    with spark_for(settings, "tierlake-reconcile") as spark:
        reports = [reconcile(spark, settings, entity=entity, stuck_after_s=args.stuck_after_s) for entity in entities]
    if args.json:
        sys.stdout.write(json.dumps(reports) + "\n")
    else:
        for report in reports:
            state = "balanced" if report["balanced"] else "NOT balanced"
            sys.stdout.write(f"{report['entity']} ({report.get('topic', '?')}): {state}\n")
            for p in report["partitions"]:
                sys.stdout.write(
                    f"  partition {p['partition']}: bronze {p['bronze']} = silver {p['silver']} + quarantine "
                    f"{p['quarantine']} + dropped {p['dropped']}; missing {p['missing']} {p['missing_offsets']}, "
                    f"unexpected {p['unexpected']}, repeated {p['repeated']} {p['other_offsets']}\n"
                )
            for k in report.get("kafka", []):
                age = "" if k["oldest_behind_age_s"] is None else f", oldest {k['oldest_behind_age_s']} s old"
                sys.stdout.write(
                    f"  kafka partition {k['partition']}: holds {k['earliest']}..{k['end'] - 1}; "
                    f"{k['state']}: {k['behind']} not in bronze{age}; holes in bronze {k['holes']}\n"
                )
    return ExitCode.OK if all(r["balanced"] for r in reports) else ExitCode.NOT_BALANCED


START_TIMEOUT_S = 300.0


def _driver(settings: Settings) -> tuple[Any, Path]:
    from infra.procs import Daemon  # noqa: PLC0415

    home = settings.run_dir / "ingest"
    status_file = home / "status.json"
    return Daemon(
        name="ingest-driver", pid_file=home / "driver.pid", log=home / "driver.log", marker=str(status_file)
    ), status_file


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.ingest.driver import entity_leases, holding, run_continuous  # noqa: PLC0415
    from pipelines.ingest.silver import silver_tables  # noqa: PLC0415

    entities = _entities(args, settings)
    for entity in entities:
        silver_tables(settings, entity)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with holding(entity_leases(settings, entities)) as leases, spark_for(settings, "tierlake-ingest-stream") as spark:
        run_continuous(
            spark,
            settings,
            entities=entities,
            trigger_s=args.trigger_s,
            stop=stop,
            status_file=args.status_file,
            leases=leases,
            gold_trigger_s=args.gold_trigger_s,
        )
    return 0


def _start(args: argparse.Namespace, settings: Settings) -> int:
    from infra import procs  # noqa: PLC0415
    from tierlake.host import alive  # noqa: PLC0415

    daemon, status_file = _driver(settings)
    if (pid := daemon.running_pid()) is not None:
        sys.stdout.write(f"ingestion already running, pid {pid}; log {daemon.log}\n")
        return 0
    argv = [
        sys.executable,
        "-m",
        "tierlake.cli",
        "--profile",
        settings.profile,
        "ingest",
        "serve",
        "--trigger-s",
        str(args.trigger_s),
        "--status-file",
        str(status_file),
    ]
    for entity in args.entity or []:
        argv += ["--entity", entity]
    if args.gold_trigger_s is not None:
        argv += ["--gold-trigger-s", str(args.gold_trigger_s)]
    status_file.unlink(missing_ok=True)
    pid = procs.spawn(daemon, argv)
    # Return once the driver holds its leases and its queries run (it writes the status file then), so what
    # follows `start` can rely on it; a driver that dies first is reported with its log.
    procs.wait_until(
        "ingestion driver",
        status_file.exists,
        timeout_s=START_TIMEOUT_S,
        log=daemon.log,
        alive=lambda: alive(pid),
        interval_s=0.5,
    )
    sys.stdout.write(f"ingestion running, pid {pid}; log {daemon.log}; `tierlake ingest status` to follow\n")
    return 0


def _stop(args: argparse.Namespace, settings: Settings) -> int:
    from infra import procs  # noqa: PLC0415

    daemon, _ = _driver(settings)
    stopped = procs.stop([daemon], timeout_s=60)
    sys.stdout.write("ingestion stopped\n" if stopped else "ingestion was not running\n")
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    daemon, status_file = _driver(settings)
    pid = daemon.running_pid()
    status: dict[str, Any] = {"running": pid is not None, "pid": pid, "log": str(daemon.log)}
    if status_file.exists():
        status.update(json.loads(status_file.read_text(encoding="utf-8")))
        status["seconds_since_update"] = round(time.time() - status["updated"], 1)
    sys.stdout.write(json.dumps(status, indent=None if args.json else 2) + "\n")
    for entity, failure in (status.get("failed") or {}).items():
        sys.stderr.write(
            f"tierlake: ingest {entity} FAILED at batch {failure.get('batch_id', '?')} "
            f"(offsets {failure.get('offsets', '?')}): {failure.get('error')}. Fix: see the log {daemon.log}, "
            "correct the cause, then `tierlake ingest stop` and `tierlake ingest start`\n"
        )
    for entity, why in (status.get("paused") or {}).items():
        sys.stderr.write(f"tierlake: ingest {entity} PAUSED: {why}; it resumes by itself once the lease is confirmed\n")
    if pid is None:
        return ExitCode.NOT_RUNNING
    return ExitCode.DEGRADED if status.get("failed") or status.get("paused") else ExitCode.OK


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.checks.replay import replay_quarantine  # noqa: PLC0415
    from pipelines.ingest.silver import silver_tables  # noqa: PLC0415

    silver_tables(settings, args.entity)
    with spark_for(settings, "tierlake-replay") as spark:
        result = replay_quarantine(spark, settings, entity=args.entity, rule=args.rule)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from infra.stack import LocalStack  # noqa: PLC0415 - the demo brings the local stack up first
    from loaders.sample import time_token_batches  # noqa: PLC0415
    from pipelines.synthetic.demo import run_demo, summary  # noqa: PLC0415
    from pipelines.synthetic.lifecycle import run_lifecycle  # noqa: PLC0415
    from tierlake import catalog  # noqa: PLC0415
    from tiers.s3 import delta_storage_options  # noqa: PLC0415

    started = time.monotonic()
    settings = LocalStack(settings).up()
    stack_s = time.monotonic() - started
    report = run_demo(settings, events=args.events)
    report["lifecycle"] = run_lifecycle(settings)  # compact, warm, archive the cold days, plan the purge
    tokens = catalog.gold_tokens(settings.s3.lake_bucket, "corpus").s3
    report["trainer_sample"] = time_token_batches(tokens, storage_options=delta_storage_options(settings.s3))
    report["seconds"] |= {"stack_up": round(stack_s, 1), "total": round(time.monotonic() - started, 1)}
    # default=str: the lifecycle's partitions are dates (ISO text in the JSON)
    sys.stdout.write((json.dumps(report, indent=2, default=str) if args.json else summary(report)) + "\n")
    return ExitCode.OK if report["ok"] else ExitCode.DEMO_FAILED


def register(sub: Subparsers) -> None:
    _register_produce(sub)
    ingest = sub.add_parser("ingest", help="streaming ingestion").add_subparsers(dest="action", required=True)
    _register_drivers(ingest)
    _register_checks(ingest)
    demo = sub.add_parser("demo", help="the main job end to end: stack up, produce, bronze on RGW, count")
    demo.add_argument("--events", type=positive_int, default=5000)
    demo.add_argument("--json", action="store_true", help="the whole report as JSON instead of the summary")
    demo.set_defaults(handler=_demo)


def _register_produce(sub: Subparsers) -> None:
    produce = sub.add_parser("produce", help="send synthetic events to Kafka (idempotent, acks=all)")
    produce.add_argument("dataset", choices=("ev", "corpus"), help="ev: EV charging telemetry; corpus: documents")
    produce.add_argument("--events", type=positive_int, default=1000)
    produce.add_argument(
        "--rate", type=non_negative_float, default=0.0, help="events per second; 0 = as fast as possible"
    )
    produce.add_argument("--bad-fraction", type=fraction, default=0.0, help="share of bad records (ev), e.g. 0.02")
    produce.add_argument("--seed", type=int, help="generator seed (default: new each run); equal seeds, equal records")
    produce.add_argument(
        "--days-ago", type=non_negative_int, default=0, help="back-date event times: they end this many days ago"
    )
    produce.add_argument("--json", action="store_true")
    produce.set_defaults(handler=_produce)


def _register_drivers(ingest: Subparsers) -> None:
    """run (until caught up), serve (foreground), start/stop/status (the background driver)."""
    run = ingest.add_parser(
        "run", help="Kafka -> bronze and silver/quarantine/dropped, then gold, until caught up, then exit"
    )
    run.add_argument("--entity", action="append", help="entity of conf/ (repeatable; default: all)")
    run.add_argument("--json", action="store_true")
    run.set_defaults(handler=_run)
    serve = ingest.add_parser("serve", help="run the streaming queries in the foreground until SIGTERM")
    _stream_arguments(serve)
    serve.add_argument("--status-file", type=Path, help="where to write the queries' progress")
    serve.set_defaults(handler=_serve)
    start = ingest.add_parser("start", help="start the streaming queries in the background (pid under run_dir)")
    _stream_arguments(start)
    start.set_defaults(handler=_start)
    ingest.add_parser("stop", help="stop the background streaming queries (SIGTERM by pid)").set_defaults(handler=_stop)
    status = ingest.add_parser("status", help="is the streaming driver alive, and its last progress (exit 3 if not)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)


def _stream_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a streaming driver, foreground or background."""
    parser.add_argument("--entity", action="append", help="entity of conf/ (repeatable; default: all)")
    parser.add_argument("--trigger-s", type=positive_float, default=2.0, help="micro-batch interval in seconds")
    parser.add_argument(
        "--gold-trigger-s", type=positive_float, help="gold's interval in seconds (default: the trigger, at least 60)"
    )


def _register_checks(ingest: Subparsers) -> None:
    """replay-quarantine and reconcile."""
    replay = ingest.add_parser(
        "replay-quarantine", help="re-check quarantined records after a fix; passing ones go to silver"
    )
    replay.add_argument("--entity", required=True, help="entity of conf/")
    replay.add_argument(
        "--rule", choices=RULES, metavar="RULE", help=f"only records quarantined under this rule: {RULES}"
    )
    replay.set_defaults(handler=_replay)
    recon = ingest.add_parser(
        "reconcile", help="prove bronze = silver + quarantine + dropped per offset (exit 6 if not)"
    )
    recon.add_argument("--entity", action="append", help="entity of conf/ (repeatable; default: all)")
    recon.add_argument(
        "--stuck-after-s",
        type=positive_float,
        default=120.0,
        help="records Kafka holds that bronze lacks are 'stuck' (not balanced) once the oldest is this old",
    )
    recon.add_argument("--json", action="store_true")
    recon.set_defaults(handler=_reconcile)
