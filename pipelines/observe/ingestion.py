"""Ingestion figures without a JVM: freshness to the commit and records per second over time, quarantine by rule,
and reconciliation offset by offset, read through delta-rs, boto3 and DuckDB.

The report must build in seconds, and a Spark session alone takes longer than that to start on a small machine, so
the figures that ``pipelines.checks`` computes in Spark are computed here from the same data by other engines:

- freshness: as ``pipelines.checks.freshness`` defines it (Kafka's timestamp to the moment the commit that added
  the row's file became visible, the commit file's object time), per silver commit since ``since``;
- records per second: the ``numRecords`` statistic of each file a bronze commit added, per commit;
- reconciliation: ``pipelines.checks.reconcile``'s invariant inside the lake (every bronze offset in exactly one of
  silver, quarantine or dropped; no holes between bronze's first and last offset), joined in DuckDB. What Kafka holds
  past bronze is the lag section's (``pipelines.observe.lag``).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from tierlake import catalog
from tierlake.config import Settings
from tiers.s3 import delta_storage_options, s3_client

logger = logging.getLogger(__name__)
_CLIENTS: dict[int, Any] = {}
MAX_COMMITS = 120
"""Newest commits read per table for the time series: bounds the report's build time on a busy table."""


def client_for(settings: Settings) -> Any:
    """One boto3 client per settings object: building one costs ~0.3 s, and the report reads from many places."""
    key = id(settings.s3)
    if key not in _CLIENTS:
        _CLIENTS.clear()  # another settings object: the old client is no longer wanted
        _CLIENTS[key] = s3_client(settings.s3)
    return _CLIENTS[key]


@dataclass(frozen=True, kw_only=True)
class Commit:
    """One Delta commit: when it became visible and the data files it added (path -> numRecords or None)."""

    version: int
    at_s: float
    added: dict[str, int | None]


@dataclass(kw_only=True)
class EntityIngest:
    entity: str
    topic: str
    freshness: list[tuple[float, float, float, int]] = field(default_factory=list)  # (at, p50, p99, rows) per commit
    rates: list[tuple[float, int]] = field(default_factory=list)  # (commit time, records) of bronze commits
    quarantine_by_rule: dict[str, int] = field(default_factory=dict)
    window_counts: dict[str, int] = field(default_factory=dict)  # silver, quarantine, dropped since `since`
    reconcile: list[dict[str, Any]] = field(default_factory=list)  # per partition


def commits_since(settings: Settings, table: str, *, since_s: float, limit: int = MAX_COMMITS) -> list[Commit]:
    """The table's commits visible since ``since_s`` (the newest ``limit``), oldest first, with their added files."""
    client = client_for(settings)
    bucket = settings.s3.lake_bucket
    log = f"{table}/_delta_log/"
    listed: list[tuple[int, float, str]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=log):
        for item in page.get("Contents", []):
            key = item.get("Key", "")
            stem = key.rsplit("/", 1)[-1].removesuffix(".json")
            if key.endswith(".json") and stem.isdigit() and item["LastModified"].timestamp() >= since_s:
                listed.append((int(stem), item["LastModified"].timestamp(), key))
    commits = []
    for version, at_s, key in sorted(listed)[-limit:]:
        added: dict[str, int | None] = {}
        for line in client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8").splitlines():
            action = json.loads(line).get("add") if line.strip() else None
            if action and action.get("dataChange", True):
                stats = json.loads(action["stats"]) if action.get("stats") else {}
                added[str(action["path"])] = stats.get("numRecords")
        commits.append(Commit(version=version, at_s=at_s, added=added))
    return commits


def _kafka_times(settings: Settings, table: str, path: str) -> pa.Array:
    """The ``kafka_timestamp`` column of one data file, in seconds."""
    from urllib.parse import unquote  # noqa: PLC0415

    import pyarrow.compute as pc  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    body = client_for(settings).get_object(Bucket=settings.s3.lake_bucket, Key=f"{table}/{unquote(path)}")["Body"]
    column = pq.read_table(io.BytesIO(body.read()), columns=["kafka_timestamp"]).column(0)
    micros = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())
    return pc.divide(pc.cast(micros, pa.float64()), 1e6)


def freshness_series(settings: Settings, table: str, *, since_s: float) -> list[tuple[float, float, float, int]]:
    """Per commit of ``table`` since ``since_s``: (commit time, p50 s, p99 s, rows) of commit time minus Kafka time."""
    import numpy as np  # noqa: PLC0415

    series = []
    for commit in commits_since(settings, table, since_s=since_s):
        times = [_kafka_times(settings, table, path).to_numpy() for path in commit.added]
        if not times or not sum(len(t) for t in times):
            continue
        lag = commit.at_s - np.concatenate(times)
        p50, p99 = np.percentile(lag, [50, 99])
        series.append((commit.at_s, float(p50), float(p99), len(lag)))
    return series


def rate_series(settings: Settings, table: str, *, since_s: float) -> list[tuple[float, int]]:
    """Per commit of ``table`` since ``since_s``: (commit time, records it added), from the files' statistics."""
    return [(c.at_s, sum(n or 0 for n in c.added.values())) for c in commits_since(settings, table, since_s=since_s)]


def _arrow(settings: Settings, table: str, columns: list[str]) -> pa.Table | None:
    """The columns of a lake table as Arrow (None: no table there yet)."""
    from deltalake import DeltaTable  # noqa: PLC0415

    uri = catalog.TablePath(settings.s3.lake_bucket, table).s3
    options = delta_storage_options(settings.s3)
    if not DeltaTable.is_deltatable(uri, storage_options=options):
        return None
    dt = DeltaTable(uri, storage_options=options)
    present = [c for c in columns if c in dt.schema().to_arrow().names]
    return dt.to_pyarrow_table(columns=present)


_RECONCILE_SQL = """
WITH outs AS (
  SELECT topic, "partition", "offset", 'silver' AS out FROM silver
  UNION ALL SELECT topic, "partition", "offset", 'quarantine' FROM quarantine WHERE NOT replayed
  UNION ALL SELECT topic, "partition", "offset", 'dropped' FROM dropped
), per_out AS (SELECT topic, "partition", "offset", count(*) AS n FROM outs GROUP BY ALL),
per_bronze AS (SELECT topic, "partition", "offset", count(*) AS nb FROM bronze GROUP BY ALL),
joined AS (
  SELECT coalesce(b.topic, o.topic) AS topic, coalesce(b."partition", o."partition") AS "partition",
         coalesce(b."offset", o."offset") AS "offset", coalesce(nb, 0) AS nb, coalesce(n, 0) AS n
  FROM per_bronze b FULL OUTER JOIN per_out o USING (topic, "partition", "offset")
)
SELECT topic, "partition",
  count(*) FILTER (WHERE nb > 0) AS bronze_offsets, min("offset") FILTER (WHERE nb > 0) AS first,
  max("offset") FILTER (WHERE nb > 0) AS last,
  count(*) FILTER (WHERE nb > 0 AND n = 0) AS missing, count(*) FILTER (WHERE nb = 0) AS unexpected,
  count(*) FILTER (WHERE n > 1 OR nb > 1) AS repeated
FROM joined GROUP BY ALL ORDER BY topic, "partition"
"""


def reconcile_lake(settings: Settings, entity: str) -> list[dict[str, Any]]:
    """Per partition: bronze offsets, first, last, missing, unexpected, repeated and holes (empty: no bronze)."""
    import duckdb  # noqa: PLC0415

    spec = settings.entities[entity]
    keys = ["topic", "partition", "offset"]
    bronze = _arrow(settings, catalog.bronze(settings.s3.lake_bucket, spec.topic).path, keys)
    if bronze is None:
        return []
    empty = pa.table({"topic": pa.array([], pa.string()), "partition": pa.array([], pa.int32())})
    empty = empty.append_column("offset", pa.array([], pa.int64())).append_column("replayed", pa.array([], pa.bool_()))
    lake = settings.s3.lake_bucket
    tables = {
        "bronze": bronze,
        "silver": _arrow(settings, catalog.silver(lake, entity).path, keys),
        "quarantine": _arrow(settings, catalog.quarantine(lake, entity).path, [*keys, "replayed"]),
        "dropped": _arrow(settings, catalog.dropped(lake, entity).path, keys),
    }
    connection = duckdb.connect()
    try:
        for name, table in tables.items():
            connection.register(name, empty if table is None else table)
        rows = connection.sql(_RECONCILE_SQL).fetchall()
        names = ["topic", "partition", "bronze_offsets", "first", "last", "missing", "unexpected", "repeated"]
    finally:
        connection.close()
    found = [dict(zip(names, row, strict=True)) for row in rows]
    for row in found:
        row["holes"] = int(row["last"] - row["first"] + 1 - row["bronze_offsets"]) if row["bronze_offsets"] else 0
    return found


def window_outcomes(settings: Settings, entity: str, *, since_s: float) -> tuple[dict[str, int], dict[str, int]]:
    """Records of ``entity`` that Kafka stamped since ``since_s``: per outcome (silver, quarantine, dropped), and the
    quarantined ones per rule (not yet replayed)."""
    import pyarrow.compute as pc  # noqa: PLC0415

    lake = settings.s3.lake_bucket
    since = pa.scalar(int(since_s * 1e6), pa.timestamp("us", tz="UTC"))
    counts: dict[str, int] = {}
    rules: dict[str, int] = {}
    for name, path in (
        ("silver", catalog.silver(lake, entity).path),
        ("quarantine", catalog.quarantine(lake, entity).path),
        ("dropped", catalog.dropped(lake, entity).path),
    ):
        columns = ["kafka_timestamp", "rule", "replayed"] if name == "quarantine" else ["kafka_timestamp"]
        table = _arrow(settings, path, columns)
        if table is None:
            counts[name] = 0
            continue
        stamps = pc.cast(table.column("kafka_timestamp"), pa.timestamp("us", tz="UTC"))
        keep = pc.greater_equal(stamps, since)
        if name == "quarantine" and "replayed" in table.column_names:
            keep = pc.and_(keep, pc.invert(table.column("replayed")))
        recent = table.filter(keep)
        counts[name] = recent.num_rows
        if name == "quarantine" and recent.num_rows:
            for rule, n in zip(*pc.value_counts(recent.column("rule")).flatten(), strict=True):
                rules[str(rule)] = int(n.as_py())
    return counts, dict(sorted(rules.items(), key=lambda item: -item[1]))


def entity_ingest(settings: Settings, entity: str, *, since_s: float) -> EntityIngest:
    """Everything the report shows about one entity's ingestion."""
    spec = settings.entities[entity]
    lake = settings.s3.lake_bucket
    counts, rules = window_outcomes(settings, entity, since_s=since_s)
    return EntityIngest(
        entity=entity,
        topic=spec.topic,
        freshness=freshness_series(settings, catalog.silver(lake, entity).path, since_s=since_s),
        rates=rate_series(settings, catalog.bronze(lake, spec.topic).path, since_s=since_s),
        quarantine_by_rule=rules,
        window_counts=counts,
        reconcile=reconcile_lake(settings, entity),
    )
