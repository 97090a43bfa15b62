"""The cold tier for the report: cartridges per site with used and free bytes, archived files by state, legal holds,
and each cartridge's last verify from the audit log. Reads only: a catalog or a library that does not exist yet is
reported as such, never created."""

from __future__ import annotations

import json
from typing import Any

from pipelines.observe import verdicts as v
from tierlake.config import Settings
from tiers.s3 import delta_storage_options


def _exists(uri: str, settings: Settings) -> bool:
    from deltalake import DeltaTable  # noqa: PLC0415

    options = delta_storage_options(settings.s3) if "://" in uri else {}
    return bool(DeltaTable.is_deltatable(uri, storage_options=options))


def site_occupancy(settings: Settings) -> list[dict[str, Any]]:
    """Per site of a virtual library: cartridges, used and capacity bytes (empty: no library yet, or LTFS volumes,
    whose occupancy would take mounting each one)."""
    from tiers.tape.virtual import VirtualCartridge  # noqa: PLC0415

    archive = settings.archive
    if archive.backend != "virtual":
        return []
    capacity = archive.cartridge_capacity_mb * 1024 * 1024
    found = []
    for site in archive.sites:
        manifest = archive.library_dir / site / "library.json"
        if not manifest.exists():
            continue
        barcodes = sorted(json.loads(manifest.read_text())["slots"].values())
        used = [
            VirtualCartridge(archive.library_dir / site / "cartridges" / b, capacity_bytes=capacity).used_bytes()
            for b in barcodes
        ]
        found.append(
            {
                "site": site,
                "cartridges": len(barcodes),
                "used_bytes": sum(used),
                "capacity_bytes": capacity * len(barcodes),
                "per_cartridge": dict(zip(barcodes, used, strict=True)),
            }
        )
    return found


def last_verifies(audit: list[dict[str, Any]], cartridges: list[str]) -> dict[str, dict[str, Any]]:
    """Each cartridge's latest verify event: at, checked, bad (an event for ``*`` covers every cartridge it read)."""
    found: dict[str, dict[str, Any]] = {}
    for event in sorted(audit, key=lambda e: e["at"]):
        detail = json.loads(event["detail"] or "{}")
        covered = detail.get("cartridges") or ([event["target"]] if event["target"] != "*" else cartridges)
        for cartridge in covered:
            if "bad_cartridges" in detail:
                bad = int(cartridge in detail["bad_cartridges"]) and int(detail.get("bad", 0))
            else:  # an event from before verify named the bad cartridges: only one naming its target is sure
                bad = int(detail.get("bad", 0)) if event["target"] == cartridge else 0
            found[cartridge] = {
                "at": event["at"].isoformat(timespec="seconds"),
                "at_s": event["at"].timestamp(),
                "checked": detail.get("checked", 0),
            }
            found[cartridge]["bad"] = bad
    return found


def archive_section(settings: Settings) -> dict[str, Any] | None:
    """The cold tier's figures and verdicts (None: nothing was ever archived and no library exists)."""
    from tiers.archive.catalog import AUDIT_SCHEMA, Catalog, query  # noqa: PLC0415

    archive = settings.archive
    sites = site_occupancy(settings)
    verdicts = [
        v.site_verdict(s["site"], used_bytes=s["used_bytes"], capacity_bytes=s["capacity_bytes"]) for s in sites
    ]
    if not _exists(archive.catalog_uri, settings):
        if not sites:
            return None
        return {"sites": sites, "states": {}, "holds": 0, "cartridges": {}, "verifies": {}, "verdicts": verdicts}
    catalog = Catalog(archive.catalog_uri, archive.audit_uri, s3=settings.s3)
    audit = catalog.audit_dataset() if _exists(archive.audit_uri, settings) else AUDIT_SCHEMA.empty_table()
    rows = catalog.dataset()

    def sql(text: str) -> list[dict[str, Any]]:
        return list(query(text, catalog=rows, audit=audit).to_pylist())

    states = {r["state"]: r["n"] for r in sql("SELECT state, count(DISTINCT file_id) AS n FROM catalog GROUP BY 1")}
    holds = sql("SELECT count(DISTINCT file_id) AS n FROM catalog WHERE legal_hold")[0]["n"]
    per_cartridge = sql(
        "SELECT cartridge, any_value(site) AS site, count(*) AS files, sum(size)::BIGINT AS bytes "
        "FROM catalog GROUP BY 1 ORDER BY 1"
    )
    cartridges = {r["cartridge"]: r for r in per_cartridge}
    events = sql("SELECT \"at\", target, detail FROM audit WHERE action = 'verify'")
    verifies = last_verifies(events, sorted(cartridges))
    for cartridge, last in sorted(verifies.items()):
        verdicts.append(v.verify_verdict(cartridge, checked=last["checked"], bad=last["bad"], at=last["at"]))
    return {
        "sites": sites,
        "states": states,
        "holds": int(holds),
        "cartridges": cartridges,
        "verifies": verifies,
        "verdicts": verdicts,
    }
