"""The demo's short lifecycle of the lake it filled: compact, warm the newest day, archive the cold days to both
sites by conf/'s default policy, verify, and plan the purge (a dry run: conf/ keeps the online copy for
``retention_days`` after archiving). No JVM: delta-rs, the edge cache and the tape library.

Returns what a person needs to go on from there: files per day before and after OPTIMIZE, what went to which
cartridge, a station whose records are on tape (for the compliance commands), and the purge plan.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tierlake.config import Settings
from tierlake.errors import NotFound

logger = logging.getLogger(__name__)


def run_lifecycle(settings: Settings, *, table: str = "silver/ev") -> dict[str, Any]:
    """One pass of the lifecycle over ``table`` (a table of ``archive.tables``)."""
    from pipelines.lake import maintenance  # noqa: PLC0415 - delta-rs, the cache and tape only for this step
    from tiers.archive import compliance  # noqa: PLC0415
    from tiers.archive.archiver import run  # noqa: PLC0415
    from tiers.archive.catalog import Catalog, quote  # noqa: PLC0415
    from tiers.archive.context import ArchiveContext  # noqa: PLC0415
    from tiers.cache import cache_from_settings  # noqa: PLC0415
    from tiers.cache.warm import warm  # noqa: PLC0415

    started = time.monotonic()
    before = maintenance.table_stats(settings, table).files_per_partition
    optimized = maintenance.optimize(settings, table)
    after = maintenance.table_stats(settings, table).files_per_partition
    newest = max(after) if after else None
    cache = cache_from_settings(settings.cache.options, settings.s3)
    warmed = warm(cache, settings.s3, table, partitions=(newest,), progress=False) if newest else None
    context = ArchiveContext(archive=settings.archive, s3=settings.s3, cache=settings.cache.options)
    catalog = Catalog(settings.archive.catalog_uri, settings.archive.audit_uri, s3=settings.s3)
    chosen = [c["partition"] for c in compliance.select(context, catalog, table)]
    archived = run(context, catalog, table, chosen, progress=False) if chosen else None
    verified = compliance.verify(context, catalog, None, progress=False) if catalog.rows().num_rows else None
    scope = f'"table" = {quote(table)}'
    try:
        plan = compliance.purge(context, catalog, scope, execute=False, only_due=True)
    except NotFound:
        plan = {"files": [], "kept": 0}
    rows = [r for r in catalog.rows().to_pylist() if r["table"] == table and r["key_min"]]
    return {
        "table": table,
        "version": optimized.version_after,
        "files_per_day_before_optimize": before,
        "files_per_day_after_optimize": after,
        "warmed": {"partition": newest, "files": warmed.files, "filled": warmed.filled} if warmed else None,
        "archived_partitions": chosen,
        "archived_files": archived.files if archived else 0,
        "cartridges": archived.cartridges if archived else {},
        "copies_bad": len(verified["bad"]) if verified else 0,
        "on_tape": sorted({r["partition"] for r in rows}),
        "station_on_tape": min(r["key_min"] for r in rows) if rows else None,
        "purge_plan": {"files": len(plan["files"]), "kept_by_retention_or_hold": plan["kept"]},
        "seconds": round(time.monotonic() - started, 1),
    }
