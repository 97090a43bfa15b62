"""Facts about this host that both the dev stack (``infra``) and production code (the writer lease) ask."""

from __future__ import annotations

from pathlib import Path

from tierlake.errors import DependencyMissing


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (``kill -0`` is true for zombies, so read its state)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def jars_in(folder: Path) -> list[Path]:
    """The jars of one linked set (``infra/bootstrap.sh`` links them), sorted; a clear error when set-up has not run."""
    jars = sorted(folder.glob("*.jar"))
    if not jars:
        raise DependencyMissing(f"no jars in {folder}. Fix: run `make setup` (infra/bootstrap.sh) once, online")
    return jars
