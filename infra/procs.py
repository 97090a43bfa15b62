"""Processes of the local stack: start with a pid file, tell ours from a reused pid, wait for health, stop.

A pid counts as ours only while ``/proc/<pid>/cmdline`` still carries the marker we started it with (a config
path under the run directory) and the process is not a zombie: pids get reused, and we stop only what we started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tierlake.errors import StackError
from tierlake.host import alive

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Daemon:
    """One process of ours: its name, pid file, log and the marker its command line must contain."""

    name: str
    pid_file: Path
    log: Path
    marker: str

    def pid(self) -> int | None:
        try:
            text = self.pid_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    def running_pid(self) -> int | None:
        """The pid if that process is alive and ours, else None."""
        pid = self.pid()
        return pid if pid is not None and is_ours(pid, self.marker) else None


def is_ours(pid: int, marker: str) -> bool:
    """Alive (not a zombie) and started by us. An empty command line (a process inside execve) is read twice."""
    for attempt in range(2):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            return False
        if cmdline or attempt:
            return marker in cmdline and alive(pid)
        time.sleep(0.05)
    return False


def spawn(daemon: Daemon, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> int:
    """Start ``argv`` in its own session, output appended to the daemon's log, pid written to its pid file."""
    daemon.log.parent.mkdir(parents=True, exist_ok=True)
    daemon.pid_file.parent.mkdir(parents=True, exist_ok=True)
    with daemon.log.open("ab") as out:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
    daemon.pid_file.write_text(f"{process.pid}\n", encoding="utf-8")
    logger.info("started %s pid %d", daemon.name, process.pid, extra={"service": daemon.name})
    return process.pid


_SECRET_FLAG = re.compile(r"(--secret(?:-key)?=)\S+")
_SECRET_JSON = re.compile(r'("secret_key"\s*:\s*")[^"]*(")')


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with every secret in it replaced: the given values, ``--secret-key=...`` flags and the
    ``"secret_key": "..."`` fields that ``radosgw-admin`` prints."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    text = _SECRET_FLAG.sub(r"\1<redacted>", text)
    return _SECRET_JSON.sub(r"\1<redacted>\2", text)


def run(argv: Sequence[str], *, log: Path, timeout_s: float = 120, what: str, secrets: Sequence[str] = ()) -> str:
    """Run a set-up command to completion; its output goes to ``log`` with ``secrets`` (and anything shaped like
    an S3 secret key) redacted. A failure names the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{what} did not finish within {timeout_s:.0f} s; see {log}") from exc
    except FileNotFoundError as exc:
        raise StackError(f"{what}: command {argv[0]!r} not found. Fix: run `make setup`") from exc
    with log.open("a", encoding="utf-8") as out:
        out.write(redact(f"$ {' '.join(argv)}\n{result.stdout}{result.stderr}\n", secrets))
    if result.returncode != 0:
        tail = redact(result.stderr or result.stdout, secrets).strip().splitlines()[-3:]
        raise StackError(f"{what} failed (exit {result.returncode}): {' | '.join(tail)}; see {log}")
    return result.stdout


def wait_until(
    what: str,
    ready: Callable[[], bool],
    *,
    timeout_s: float,
    log: Path,
    interval_s: float = 0.25,
    alive: Callable[[], bool] | None = None,
) -> float:
    """Poll ``ready`` until true; fail after ``timeout_s`` or as soon as ``alive`` says the process died."""
    start = time.monotonic()
    while True:
        if ready():
            return time.monotonic() - start
        if alive is not None and not alive():
            raise StackError(f"{what}: the process exited before it became healthy; see {log}")
        if time.monotonic() - start > timeout_s:
            raise StackError(f"{what}: not healthy after {timeout_s:.0f} s; see {log}")
        time.sleep(interval_s)


def stop(daemons: Sequence[Daemon], *, timeout_s: float = 30) -> list[str]:
    """SIGTERM every running daemon of ours, wait, then SIGKILL the rest. Returns the names stopped."""
    running = {d.name: (d, pid) for d in daemons if (pid := d.running_pid()) is not None}
    for daemon, pid in running.values():
        _signal(pid, signal.SIGTERM)
        logger.info("stopping %s pid %d", daemon.name, pid, extra={"service": daemon.name})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(is_ours(pid, d.marker) for d, pid in running.values()):
        time.sleep(0.1)
    for daemon, pid in running.values():
        if is_ours(pid, daemon.marker):
            logger.warning("%s pid %d ignored SIGTERM for %.0f s; sending SIGKILL", daemon.name, pid, timeout_s)
            _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(is_ours(pid, d.marker) for d, pid in running.values()):
        time.sleep(0.05)
    for daemon in daemons:
        daemon.pid_file.unlink(missing_ok=True)
    return sorted(running)


def kill9(daemon: Daemon) -> int:
    """SIGKILL one daemon (failure tests). Returns the pid killed."""
    pid = daemon.running_pid()
    if pid is None:
        raise StackError(f"{daemon.name} is not running (pid file {daemon.pid_file})")
    _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while is_ours(pid, daemon.marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    import socket  # noqa: PLC0415 - tiny, local to the one probe

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0
