"""What the tierlake DAGs share: how a task runs the ``tierlake`` CLI, and the retries and timeout of every task.

A task runs one CLI command as a subprocess (no shell: arguments are a list) with the Airflow worker's environment
(``TIERLAKE_*`` chooses the profile, ports and keys), so Spark runs in its own process and a task that hangs is
killed by its ``execution_timeout``. The command's last stdout line is its ``--json`` report, returned to XCom.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Asset

from tierlake import catalog
from tierlake.config import load_settings

ROOT = Path(__file__).resolve().parents[1]  # the checkout: conf/ and the run dir are found from here
# The tierlake CLI of the environment Airflow runs in (one shared .venv); TIERLAKE_BIN names another one.
TIERLAKE = os.environ.get("TIERLAKE_BIN") or str(Path(sys.executable).with_name("tierlake"))

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "data-eng",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "execution_timeout": timedelta(minutes=30),
}

# The Celery queue that only the archive workers take (infra/k8s/base/archive-workers.yaml, `--queues archive`):
# the tasks that touch the tape libraries run there, every other task on the chart's workers (the default queue).
ARCHIVE_QUEUE = "archive"
ARCHIVE_ARGS: dict[str, Any] = {**DEFAULT_ARGS, "queue": ARCHIVE_QUEUE}

# The asset "a new version of the training table landed in gold". ingest_supervisor's announce_gold task emits it
# with {"table": ..., "version": ...} in the event's extra; cache_warmup is scheduled on it.
# The lake bucket comes from conf/ (read once when the DAG files are parsed; env TIERLAKE_* applies as everywhere).
_SETTINGS = load_settings(conf_dir=ROOT / "conf")
_TOKENS = catalog.gold_tokens(_SETTINGS.s3.lake_bucket, "corpus")
TRAINING_TABLE = _TOKENS.path
GOLD_VERSION_LANDED = Asset(name="gold_version_landed", uri=_TOKENS.s3)


class TierlakeCommandFailed(RuntimeError):
    """The CLI exited with a code the task does not accept; the message carries its last error line."""


def run_tierlake(*args: str, ok_codes: Sequence[int] = (0,), timeout_s: float | None = None) -> Any:
    """Run ``tierlake <args>``; return the parsed JSON of its last stdout line (or the text if it is not JSON)."""
    argv = [TIERLAKE, *args]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)
    sys.stderr.write(done.stderr[-4000:])
    if done.returncode not in ok_codes:
        last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["no output"])[-1]
        raise TierlakeCommandFailed(f"`tierlake {' '.join(args)}` exited {done.returncode}: {last}")
    lines = done.stdout.strip().splitlines()
    if not lines:
        return None
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        return done.stdout


def table_args(params: Mapping[str, Any]) -> list[str]:
    """The tables a run names in its ``tables`` param, else ``--all`` (every table of the conf/ section)."""
    tables = [str(t) for t in params.get("tables") or []]
    return tables or ["--all"]


def archive_tables(params: Mapping[str, Any]) -> list[str]:
    """The tables a run names in its ``tables`` param, else those with a policy in ``archive.tables`` of conf/."""
    return [str(t) for t in params.get("tables") or []] or sorted(_SETTINGS.archive.tables)
