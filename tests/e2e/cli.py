"""The ``tierlake`` command as a user runs it: a child process in the repository, its output captured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tierlake(
    argv: list[str], *, env: dict[str, str] | None = None, timeout_s: float = 600
) -> subprocess.CompletedProcess[str]:
    """``tierlake <argv>`` with ``env`` (default: this process's, profile ``ci``); never raises on its exit code."""
    return subprocess.run(
        [sys.executable, "-m", "tierlake.cli", *argv],
        cwd=REPO,
        env=env if env is not None else {**os.environ, "TIERLAKE_PROFILE": "ci"},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
