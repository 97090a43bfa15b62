"""What the recall tests run in child processes (spawned: delta-rs refuses a forked runtime). Kept apart from the
test module so a child imports the archive tier only, not the loader and torch."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from tiers.archive.catalog import Catalog
from tiers.archive.context import ArchiveContext
from tiers.archive.recall import plan_recall, recall

BUCKET = "tierlake-lake"
TABLE = "tests/recall/events"
FILES = {f"day=2020-01-0{d}/part-{d}.parquet": os.urandom(150_000 + d * 7) for d in range(1, 4)}


def recall_in_child(
    context: ArchiveContext,
    rows: list[dict[str, Any]],
    kill_step: str | None,
    out: Path,
    *,
    copy: int = 0,
    barrier: Any = None,
) -> None:
    """One recall of every file of ``FILES`` into the cache, killed (SIGKILL, the fault-injection hook) at the
    first ``kill_step``; ``copy``: read only that copy. Writes "<recalled> <already>" to ``out``."""

    def step(name: str, _path: str) -> None:
        if name == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)

    avoid = {r["file_id"]: {x["cartridge"] for x in rows if x["copy"] != copy} for r in rows} if copy else None
    plan = plan_recall(rows, [(BUCKET, f"{TABLE}/{n}") for n in FILES], avoid=avoid)
    catalog = Catalog(context.archive.catalog_uri, context.archive.audit_uri)
    if barrier is not None:
        barrier.wait()
    report = recall(context, catalog, plan, to="cache", progress=False, step=step)
    out.write_text(f"{len(report.recalled)} {len(report.already)}")


def recall_to_lake_and_die(context: ArchiveContext, uris: list[str], kill_step: str) -> None:
    """A loader-side recall of ``uris`` to the lake, SIGKILLed at the first ``kill_step`` (integration tests)."""
    from loaders.recall import Recall  # noqa: PLC0415 - only this child needs the loader package

    def step(name: str, _path: str) -> None:
        if name == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)

    plan = Recall(context=context, mode="auto").plan(uris)
    catalog = Catalog(context.archive.catalog_uri, context.archive.audit_uri, s3=context.s3)
    recall(context, catalog, plan, to="lake", progress=False, step=step)


def read_through_recalling_source(context: ArchiveContext, uri: str, to: str, barrier: Any, out: Path) -> None:
    """One reader (a DataLoader worker, say) of ``uri`` through :class:`loaders.recall.RecallingSource` over the
    plain S3 source, started with the others at ``barrier``: writes the SHA-256 of the bytes it was served."""
    import hashlib  # noqa: PLC0415

    from loaders.recall import Recall  # noqa: PLC0415 - only this child needs the loader package
    from loaders.table import ArrowFileSource  # noqa: PLC0415
    from tiers.s3 import delta_storage_options  # noqa: PLC0415

    source = Recall(context=context, mode="auto", to=to, reason="worker", progress=False).wrap(
        ArrowFileSource(delta_storage_options(context.s3))
    )
    barrier.wait()
    opened = source.open(uri)
    data = Path(opened).read_bytes() if isinstance(opened, str) else opened.readall()
    out.write_text(hashlib.sha256(data).hexdigest())
