"""Crash consistency of a virtual cartridge: stale MAM coherency data, a torn index partition, and a sweep that kills
an append at every one of its system calls (create, write, fsync, unlink, rename), then recovers and checks that
the cartridge is consistent and holds exactly the files of the appends that committed, byte for byte."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
from pathlib import Path

import pytest

from tiers.tape import ltfs_format as fmt
from tiers.tape.syscalls import Syscalls
from tiers.tape.virtual import FileToWrite, VirtualCartridge

from .test_tape_ltfs import _read_back

BLOCK = 4096
BASE = {f"old-{n}.bin": bytes([n]) * (300 * n + 1) for n in range(1, 13)}  # an index of several records
NEW = {"new-1.bin": os.urandom(2 * BLOCK + 100), "new-2.bin": b"tiny", "old-3.bin": os.urandom(BLOCK + 1)}


def _cartridge(path: Path, syscalls: Syscalls | None = None) -> VirtualCartridge:
    return VirtualCartridge(path, capacity_bytes=1 << 30, syscalls=syscalls)


def _write(cartridge: VirtualCartridge, payloads: dict[str, bytes]) -> fmt.Index:
    return cartridge.append(
        [FileToWrite(name=n, chunks=[p[i : i + 1000] for i in range(0, len(p), 1000)]) for n, p in payloads.items()]
    )


def _contents(cartridge: VirtualCartridge) -> dict[str, bytes]:
    """What tierlake's own reader returns for every file of the current index."""
    return {f.name: b"".join(cartridge.read_file(f)) for f in cartridge.index().files}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cartridge at generation 2 whose index spans two records (so a torn index partition can parse)."""
    cartridge = _cartridge(tmp_path_factory.mktemp("base") / "A00001")
    cartridge.format(barcode="A00001", volume_name="site-a-A00001", blocksize=BLOCK, pool="site-a")
    _write(cartridge, BASE)
    assert len(cartridge.index().to_xml()) > BLOCK
    return cartridge.path


def _copy(base: Path, tmp_path: Path, name: str = "A00001") -> VirtualCartridge:
    shutil.copytree(base, tmp_path / name)
    return _cartridge(tmp_path / name)


def test_stale_coherency_data_is_found_and_rewritten(base: Path, tmp_path: Path) -> None:
    """A writer killed after both indexes and before the MAM: the VCIs name the previous generation."""
    cartridge = _copy(base, tmp_path)
    before = {name: (cartridge.path / name).read_bytes() for name in ("attr_0_9", "attr_0_80c", "attr_1_80c")}
    _write(cartridge, {"late.bin": b"x" * 5000})
    for name, data in before.items():
        (cartridge.path / name).write_bytes(data)
    assert any("attr_1_80c (VCI)" in problem for problem in cartridge.check())
    recovered = cartridge.recover()
    assert recovered is not None
    assert recovered.generation == 2  # the append never reached its commit point (the data partition's VCI)
    assert cartridge.check() == []
    assert _contents(cartridge) == _read_back(cartridge.path) == BASE
    vcr = fmt.parse_vcr((cartridge.path / "attr_0_9").read_bytes())
    for part, block in ((0, 5), (1, cartridge.index().location.block)):
        assert fmt.parse_vci((cartridge.path / f"attr_{part}_80c").read_bytes())[:3] == (vcr, 2, block)


def test_a_stale_volume_change_reference_is_rewritten_without_losing_the_generation(base: Path, tmp_path: Path) -> None:
    cartridge = _copy(base, tmp_path)
    (cartridge.path / "attr_0_9").write_bytes(fmt.mam_attribute(fmt.MAM_VCR, (7).to_bytes(4, "big")))
    assert not cartridge.consistent()
    recovered = cartridge.recover()
    assert recovered is not None
    assert recovered.generation == 2
    assert cartridge.check() == []
    assert fmt.parse_vci((cartridge.path / "attr_1_80c").read_bytes())[0] == 7


def test_a_torn_index_partition_is_found_and_rebuilt(base: Path, tmp_path: Path) -> None:
    """New first record + old second record of the index partition: valid XML of the new generation, old files."""
    cartridge = _copy(base, tmp_path)
    eod = cartridge.eod(0)
    old_tail = {block: (cartridge.path / f"0_{block}_R").read_bytes() for block in range(6, eod - 1)}
    assert old_tail  # an index of more than one record
    replaced = {"old-12.bin": b"\x0d" * len(BASE["old-12.bin"])}  # the index keeps its size and its records
    _write(cartridge, replaced)
    assert cartridge.eod(0) == eod
    for block, record in old_tail.items():  # a writer killed after overwriting only the first record in place
        (cartridge.path / f"0_{block}_R").write_bytes(record)
    torn = cartridge.last_index(0)
    assert torn.generation == 3  # it parses, as the reference reader would take it
    assert torn.files != cartridge.index().files
    assert any("torn" in problem for problem in cartridge.check())
    cartridge.recover()
    assert cartridge.check() == []
    assert _contents(cartridge) == _read_back(cartridge.path) == BASE | replaced


def test_stray_files_are_reported_and_removed(base: Path, tmp_path: Path) -> None:
    cartridge = _copy(base, tmp_path)
    eod = cartridge.eod(1)
    (cartridge.path / f"1_{eod + 3}_R").write_bytes(b"left by a killed writer")
    (cartridge.path / ".attr_0_9.tmp").write_bytes(b"")
    assert len(cartridge.check()) == 2
    cartridge.recover()
    assert cartridge.check() == []
    assert _contents(cartridge) == BASE


# -- the kill sweep -----------------------------------------------------------------------------------------


def _calls_of_one_append(base: Path, tmp_path: Path) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    shutil.copytree(base, tmp_path / "count")
    cartridge = _cartridge(
        tmp_path / "count", Syscalls(before=lambda operation, path: calls.append((operation, path.name)))
    )
    _write(cartridge, NEW)
    assert cartridge.check() == []
    return calls


def _dying_at(kill_at: int) -> Syscalls:
    """System calls that SIGKILL this process just before the ``kill_at``-th one (the fault-injection hook)."""
    count = 0

    def before(operation: str, target: Path) -> None:
        nonlocal count
        count += 1
        if count == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    return Syscalls(before=before)


def _append_and_die_at(path: Path, kill_at: int) -> None:
    """Child process: the append, killed with SIGKILL just before its ``kill_at``-th system call."""
    _write(_cartridge(path, _dying_at(kill_at)), NEW)


def test_a_kill_at_any_system_call_of_an_append_recovers_to_exactly_the_committed_files(
    base: Path, tmp_path: Path
) -> None:
    calls = _calls_of_one_append(base, tmp_path)
    commit = calls.index(("rename", "attr_1_80c")) + 1  # the data partition's VCI: the append's commit point
    assert {operation for operation, _ in calls} == {"create", "write", "fsync", "unlink", "rename"}
    context = multiprocessing.get_context("fork")
    recovered = []
    for kill_at in range(1, len(calls) + 1):
        cartridge = _copy(base, tmp_path, f"k{kill_at}")
        child = context.Process(target=_append_and_die_at, args=(cartridge.path, kill_at))
        child.start()
        child.join()
        assert child.exitcode == -signal.SIGKILL, f"call {kill_at} of {len(calls)} was never reached"
        if cartridge.recover() is not None:
            recovered.append(kill_at)
        expected = BASE | NEW if kill_at > commit else BASE
        assert cartridge.check() == [], f"kill at call {kill_at} {calls[kill_at - 1]}"
        assert _contents(cartridge) == _read_back(cartridge.path) == expected, f"kill at call {kill_at}"
        _write(cartridge, {"after.bin": b"z" * 4097})
        assert cartridge.check() == []
        assert _read_back(cartridge.path) == expected | {"after.bin": b"z" * 4097}
    # Killed before its first call the append changed nothing; after the commit rename only a directory fsync is
    # left. Every kill in between needed recovery.
    assert recovered == list(range(2, commit + 1))
    assert len(calls) - commit == 1


def _recover_and_die_at(path: Path, kill_at: int) -> None:
    """Child process: recovery, killed with SIGKILL just before its ``kill_at``-th system call."""
    _cartridge(path, _dying_at(kill_at)).recover()


def test_a_recovery_killed_at_any_system_call_is_finished_by_the_next(base: Path, tmp_path: Path) -> None:
    """A kill inside the index partition's rewrite leaves the most to undo: a newer uncommitted data index, an
    index partition without its leading FM. Recovery killed at each of its own calls, then recovered again."""
    calls = _calls_of_one_append(base, tmp_path)
    context = multiprocessing.get_context("fork")
    crashed = _copy(base, tmp_path, "crashed")
    child = context.Process(target=_append_and_die_at, args=(crashed.path, calls.index(("create", "0_5_R")) + 1))
    child.start()
    child.join()
    assert crashed.kind(0, 4) is None
    recovery: list[tuple[str, str]] = []
    shutil.copytree(crashed.path, tmp_path / "count-recovery")
    counted = _cartridge(
        tmp_path / "count-recovery", Syscalls(before=lambda op, path: recovery.append((op, path.name)))
    )
    assert counted.recover() is not None
    assert len(recovery) > 20
    for kill_at in range(1, len(recovery) + 1):
        cartridge = _copy(crashed.path, tmp_path, f"r{kill_at}")
        child = context.Process(target=_recover_and_die_at, args=(cartridge.path, kill_at))
        child.start()
        child.join()
        assert child.exitcode == -signal.SIGKILL
        cartridge.recover()
        assert cartridge.check() == [], f"recovery killed at call {kill_at} {recovery[kill_at - 1]}"
        assert _contents(cartridge) == _read_back(cartridge.path) == BASE, f"recovery killed at call {kill_at}"
