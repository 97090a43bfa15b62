"""Peak resident memory of a bench process and its descendants (the loader bench's children and their DataLoader
workers), read from ``/proc``."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.extend(int(c) for c in task.read_text(encoding="ascii").split())
        except (OSError, ValueError):
            continue
    return found


class RssSampler:
    """Peak of the summed RSS of this process and its descendants (DataLoader workers), sampled every 20 ms.

    ``ru_maxrss`` would not do: Linux carries the high-water mark across exec, so a child would report the
    bench parent's peak. Forked workers share pages with their parent, so the sum over-counts them a little.
    """

    def __init__(self) -> None:
        self.peak_self_kb = 0
        self.peak_tree_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.02):
            own = _rss_kb(me)
            tree = own
            pending = _children(me)
            while pending:
                pid = pending.pop()
                tree += _rss_kb(pid)
                pending.extend(_children(pid))
            self.peak_self_kb = max(self.peak_self_kb, own)
            self.peak_tree_kb = max(self.peak_tree_kb, tree)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
