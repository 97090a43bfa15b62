"""Every fix a WARN or ERR of the report names as a ``tierlake ...`` command is one the real CLI parses: the verdicts
of pipelines/observe/verdicts.py (each driven into its problem) and the fixes of the parts that could not be read
(pipelines/observe/gather.py's ``READ_FIXES``). A renamed flag or subcommand fails here, not in an operator's hands."""

from __future__ import annotations

import argparse
import functools
import re
import shlex

import pytest

from pipelines.observe import verdicts as v
from pipelines.observe.dag_runs import DagRunRow, MaintenanceRuns
from pipelines.observe.gather import READ_FIXES
from tierlake.cli import build_parser

COMMAND = re.compile(r"`(tierlake [^`]+)`")
PICK = re.compile(r"<[a-z_]+>")  # a placeholder the operator fills in, e.g. <table>
SAMPLE = {"<table>": "silver/ev"}


@functools.cache
def cli_parser() -> argparse.ArgumentParser:
    return build_parser()


def problem_verdicts() -> list[v.Verdict]:
    """One verdict of every kind that is not OK."""
    behind = v.LagSample(100.0, 5, 505)
    found = [
        v.lag_verdict("ev.telemetry", 0, state, behind, waiting_s=400.0, driver_running=running)
        for state in (v.LagState.STALLED, v.LagState.LAGGING)
        for running in (True, False)
    ]
    found += v.table_verdicts("silver/ev", files=500, small_files=500, version=300, last_checkpoint=None)
    found.append(v.reconcile_verdict("ev.telemetry/0", missing=1, unexpected=0, repeated=0, holes=0))
    found.append(v.quarantine_verdict("ev", quarantined=50, total=100, top_rule="out_of_range"))
    found.append(v.quarantine_verdict("ev", quarantined=50, total=100, top_rule=None))
    found += v.cache_verdicts(hits=10, misses=190, used_bytes=99, capacity_bytes=100)
    found.append(v.verify_verdict("A00001", checked=4, bad=1, at="2026-01-01T00:00:00+00:00"))
    found.append(v.site_verdict("site-a", used_bytes=95, capacity_bytes=100))
    found.append(v.checkpoint_tier_verdict("tape", error="library folder missing", checkpoints=0))
    failed = DagRunRow(run_id="scheduled__1", state="failed", start_s=1.0, end_s=2.0)
    found += v.maintenance_verdicts(MaintenanceRuns(runs=[failed]))
    return [verdict for verdict in found if verdict.level is not v.Level.OK]


def fixes() -> list[tuple[str, str]]:
    """(where, fix) of every problem verdict and every part that could not be read."""
    found = [(f"{x.section}: {x.subject} {x.level.name}", x.fix) for x in problem_verdicts()]
    found += [(f"READ_FIXES[{part!r}]", fix.format(table="silver/ev", entity="ev")) for part, fix in READ_FIXES.items()]
    return found


def test_every_kind_of_problem_is_driven() -> None:
    kinds = {(x.section, x.level) for x in problem_verdicts()}
    assert {"kafka", "tables", "ingestion", "cache", "archive", "training"} == {section for section, _ in kinds}
    assert len(problem_verdicts()) == 15


@pytest.mark.parametrize(("where", "fix"), [(where, fix) for where, fix in fixes() if COMMAND.search(fix)])
def test_each_fix_command_parses_with_the_real_cli(where: str, fix: str) -> None:
    """Every fix that names a command (all but the tape site's: the next test) names one the CLI runs."""
    commands = COMMAND.findall(fix)
    parser = cli_parser()
    for command in commands:
        argv = shlex.split(PICK.sub(lambda pick: SAMPLE[pick.group(0)], command))[1:]
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{where}: `{command}` does not parse (exit {exc.code})")
        assert callable(getattr(args, "handler", None)), f"{where}: `{command}` names no subcommand"


def test_only_the_tape_site_has_no_command() -> None:
    advice = [where for where, fix in fixes() if not COMMAND.search(fix)]
    assert advice == ["archive: tape site site-a WARN"]  # no command adds cartridges to a pool
