"""Process bookkeeping on real (tiny) processes: ours vs reused pids, zombies, stop by pid, health waits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from infra import procs
from tierlake.errors import StackError
from tierlake.host import alive

pytestmark = pytest.mark.unit


def _daemon(tmp_path: Path, marker: str) -> procs.Daemon:
    return procs.Daemon(name="sleeper", pid_file=tmp_path / "sleeper.pid", log=tmp_path / "sleeper.log", marker=marker)


def test_spawn_then_stop_by_pid(tmp_path: Path) -> None:
    marker = str(tmp_path / "sleeper-marker")
    daemon = _daemon(tmp_path, marker)
    pid = procs.spawn(daemon, [sys.executable, "-c", "import time; time.sleep(60)", marker])
    assert daemon.running_pid() == pid
    assert procs.stop([daemon], timeout_s=5) == ["sleeper"]
    assert not procs.is_ours(pid, marker)
    assert not daemon.pid_file.exists()


def test_a_pid_running_something_else_is_not_ours(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        daemon = _daemon(tmp_path, "tierlake-marker-not-in-that-cmdline")
        daemon.pid_file.write_text(f"{other.pid}\n")
        assert daemon.running_pid() is None
        assert procs.stop([daemon], timeout_s=1) == []
        assert other.poll() is None, "stop must never signal a process that is not ours"
    finally:
        other.kill()
        other.wait()


def test_a_zombie_is_not_alive(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    # Not reaped yet: the kernel keeps a zombie entry, which kill -0 would still report as alive.
    while alive(child.pid):
        pass
    assert not alive(child.pid)
    child.wait()


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    marker = str(tmp_path / "stubborn")
    daemon = _daemon(tmp_path, marker)
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    pid = procs.spawn(daemon, [sys.executable, "-c", code, marker])
    procs.wait_until("stubborn ready", lambda: "ready" in daemon.log.read_text(), timeout_s=10, log=daemon.log)
    procs.stop([daemon], timeout_s=0.5)
    assert not procs.is_ours(pid, marker)


def test_wait_until_names_the_log_on_timeout(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    with pytest.raises(StackError, match=r"never: not healthy after 0 s; see .*service\.log"):
        procs.wait_until("never", lambda: False, timeout_s=0.2, log=log, interval_s=0.05)


def test_wait_until_fails_fast_when_the_process_died(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    with pytest.raises(StackError, match=r"the process exited before it became healthy; see .*service\.log"):
        procs.wait_until("dead", lambda: False, timeout_s=30, log=log, alive=lambda: False)


def test_run_failure_quotes_the_output_and_names_the_log(tmp_path: Path) -> None:
    log = tmp_path / "setup.log"
    with pytest.raises(StackError, match=r"boom step failed \(exit 3\): bad thing; see .*setup\.log"):
        procs.run(
            [sys.executable, "-c", "import sys; sys.stderr.write('bad thing'); sys.exit(3)"],
            log=log,
            what="boom step",
        )
    assert "bad thing" in log.read_text()


def test_run_of_a_missing_tool_says_run_setup(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"command 'no-such-tool-xyz' not found\. Fix: run `make setup`"):
        procs.run(["no-such-tool-xyz"], log=tmp_path / "x.log", what="probe")


def test_redact_hides_given_secrets_flags_and_radosgw_json() -> None:
    logged = procs.redact(
        '$ radosgw-admin user create --access-key=AK1 --secret-key=s3cr/et+==\n{"keys": [{"access_key": "AK1", '
        '"secret_key": "older-secret"}]}\nthe key s3cr/et+== again',
        ["s3cr/et+=="],
    )
    assert "s3cr/et+==" not in logged
    assert "older-secret" not in logged
    assert "--secret-key=<redacted>" in logged
    assert '"secret_key": "<redacted>"' in logged
    assert '"access_key": "AK1"' in logged, "only secrets are hidden"
