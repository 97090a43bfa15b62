"""Settings of the lake's table operations: maintenance (OPTIMIZE layouts, VACUUM retention, the writer lease) and
the second-site mirror."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tierlake.catalog import check_table_path
from tierlake.config.s3 import S3Settings
from tierlake.config.values import Values, bucket_name, positive, url

OPTIMIZE_MODES = ("compact", "zorder")
MIN_VACUUM_RETENTION_HOURS = 168.0  # Delta's own floor (7 days): readers of older snapshots need those files


@dataclass(frozen=True, kw_only=True)
class TableMaintenance:
    """How OPTIMIZE lays out one table: ``compact`` (bin-packing) or ``zorder`` (clustered by ``zorder_by``)."""

    table: str
    optimize: str
    zorder_by: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class MaintenanceSettings:
    """Table maintenance (pipelines/lake/maintenance.py): OPTIMIZE, VACUUM, checkpoints, stats."""

    vacuum_retention_hours: float
    target_file_mb: int
    lease_ttl_s: float
    metrics_file: Path
    max_ingest_staleness_s: float
    tables: tuple[TableMaintenance, ...]

    def table(self, name: str) -> TableMaintenance:
        """The configured layout of ``name``; a table not in conf/ is compacted."""
        for entry in self.tables:
            if entry.table == name:
                return entry
        return TableMaintenance(table=name, optimize="compact")


@dataclass(frozen=True, kw_only=True)
class MirrorSettings:
    """The second site (pipelines/lake/mirror.py): an endpoint (empty: the lake's), a bucket, what to copy."""

    endpoint: str
    bucket: str
    credentials_file: Path | None
    tables: tuple[str, ...]
    checkpoint_prefixes: tuple[str, ...]


def build_maintenance(values: Values, root: Path, run_dir: Path) -> MaintenanceSettings:
    retention = values.number(
        "maintenance.vacuum_retention_hours",
        fix=f"{MIN_VACUUM_RETENTION_HOURS:g} (7 days) or more",
        minimum=MIN_VACUUM_RETENTION_HOURS,
    )
    raw_tables = values.get("maintenance.tables", dict, default={}, fix="a mapping of table path -> {optimize: ...}")
    tables = []
    for name, spec in raw_tables.items():
        fix = "e.g. silver/ev: {optimize: zorder, zorder_by: [station_id]} or {optimize: compact}"
        if (why := check_table_path(str(name))) is not None:
            raise values.fail("maintenance.tables", name, why, fix)
        if (
            not isinstance(spec, dict)
            or spec.get("optimize") not in OPTIMIZE_MODES
            or set(spec)
            - {
                "optimize",
                "zorder_by",
            }
        ):
            raise values.fail(
                "maintenance.tables",
                {name: spec},
                f"optimize must be one of {OPTIMIZE_MODES} (keys: optimize, zorder_by)",
                fix,
            )
        columns = spec.get("zorder_by", [])
        if not isinstance(columns, list) or (spec["optimize"] == "zorder") != bool(columns):
            raise values.fail(
                "maintenance.tables", {name: spec}, "zorder needs a non-empty zorder_by list; compact takes none", fix
            )
        tables.append(TableMaintenance(table=str(name), optimize=spec["optimize"], zorder_by=tuple(map(str, columns))))
    metrics = values.get("maintenance.metrics_file", str, default="", fix="a path, or empty for the run dir")
    return MaintenanceSettings(
        vacuum_retention_hours=retention,
        target_file_mb=values.get("maintenance.target_file_mb", int, check=positive, fix="e.g. 128"),
        lease_ttl_s=values.number("maintenance.lease_ttl_s", fix="seconds, at least 3, e.g. 30", minimum=3),
        metrics_file=(root / metrics) if metrics else run_dir / "metrics" / "tierlake_tables.prom",
        max_ingest_staleness_s=values.number("maintenance.max_ingest_staleness_s", fix="seconds, e.g. 300", minimum=1),
        tables=tuple(tables),
    )


def build_mirror(values: Values, root: Path, s3: S3Settings) -> MirrorSettings:
    endpoint = values.get("mirror.endpoint", str, default="", fix="empty (same endpoint) or e.g. https://rgw-b:443")
    if endpoint and (why := url(endpoint)) is not None:
        raise values.fail("mirror.endpoint", endpoint, why, "empty (same endpoint) or e.g. https://rgw-b:443")
    bucket = values.get("mirror.bucket", str, check=bucket_name, fix="a bucket at the second site")
    if not endpoint and bucket == s3.lake_bucket:
        raise values.fail(
            "mirror.bucket",
            bucket,
            "the mirror would overwrite the lake itself",
            "use another bucket, e.g. tierlake-mirror",
        )
    keys = values.get("mirror.credentials_file", str, default="", fix="empty, or a file with access_key=/secret_key=")
    tables = [str(t) for t in values.get("mirror.tables", list, default=[], fix="a list of table paths")]
    for table in tables:
        if (why := check_table_path(table)) is not None:
            raise values.fail("mirror.tables", table, why, "e.g. [silver/ev, gold/ev_windows]")
    prefixes = [str(p) for p in values.get("mirror.checkpoint_prefixes", list, default=[], fix="a list of prefixes")]
    for prefix in prefixes:
        if not prefix.endswith("/") or prefix.startswith("/"):
            raise values.fail(
                "mirror.checkpoint_prefixes", prefix, "a prefix is a folder ending in /", "e.g. training/ckpt/"
            )
    return MirrorSettings(
        endpoint=endpoint.rstrip("/"),
        bucket=bucket,
        credentials_file=(root / keys) if keys else None,
        tables=tuple(tables),
        checkpoint_prefixes=tuple(prefixes),
    )
