"""Processes that open a fresh cache index at the same moment all get it (SQLite's first switch to WAL does not
wait for a lock on its own; CI once saw two recalls into one cache fail with "database is locked")."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from tiers.cache.index import Index

PROCESSES = 4
ROUNDS = 40


def _open_each_in_step(root: Path, barrier: Any) -> None:
    for n in range(ROUNDS):
        barrier.wait(timeout=60)  # a sibling that failed breaks the barrier instead of hanging us
        Index(root / f"cache{n}" / "index.sqlite")


def test_processes_opening_a_fresh_index_together_all_succeed(tmp_path: Path) -> None:
    fork = multiprocessing.get_context("fork")  # no threads or runtimes here to trouble a fork; it is cheaper
    barrier = fork.Barrier(PROCESSES)
    children = [fork.Process(target=_open_each_in_step, args=(tmp_path, barrier)) for _ in range(PROCESSES)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
    assert [child.exitcode for child in children] == [0] * PROCESSES
    assert len(list(tmp_path.glob("cache*/index.sqlite"))) == ROUNDS
