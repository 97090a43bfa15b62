"""Ingestion figures without a JVM: freshness to the commit and records per second over time, quarantine by rule,
and reconciliation offset by offset, read through delta-rs, boto3 and DuckDB.

The report must build in seconds, and a Spark session alone takes longer than that to start on a small machine, so
the figures that ``pipelines.checks`` computes in Spark are computed here from the same data by other engines:

- freshness: as ``pipelines.checks.freshness`` defines it (Kafka's timestamp to the moment the commit that added
  the row's file became visible, the commit file's object time), per silver commit since ``since``, at most
  :data:`MAX_COMMITS` of them sampled across the window;
- records per second: the ``numRecords`` statistic of each file a bronze commit added over the time since the
  commit before it, per sampled commit;
- reconciliation: ``pipelines.checks.reconcile``'s invariant inside the lake (every bronze offset in exactly one of
  silver, quarantine or dropped; no holes between bronze's first and last offset), joined in DuckDB. What Kafka holds
  past bronze is the lag section's (``pipelines.observe.lag``). It covers every offset bronze holds: all time, not
  the window.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from tierlake import catalog
from tierlake.config import Settings
from tiers.s3 import delta_storage_options, s3_client

logger = logging.getLogger(__name__)
_CLIENTS: dict[int, Any] = {}
MAX_COMMITS = 120
"""Commits read per table for the time series: bounds the report's build time on a busy table. The window's commits
are sampled across it (:func:`sample_commits`), so a long ``--since`` is covered end to end, not its last minutes."""


def client_for(settings: Settings) -> Any:
    """One boto3 client per settings object: building one costs ~0.3 s, and the report reads from many places."""
    key = id(settings.s3)
    if key not in _CLIENTS:
        _CLIENTS.clear()  # another settings object: the old client is no longer wanted
        _CLIENTS[key] = s3_client(settings.s3)
    return _CLIENTS[key]


@dataclass(frozen=True, kw_only=True)
class Commit:
    """One Delta commit: when it became visible, when the commit before it did (None: the first in the log), and the
    data files it added (path -> numRecords or None)."""

    version: int
    at_s: float
    previous_at_s: float | None
    added: dict[str, int | None]


@dataclass(frozen=True, kw_only=True)
class Commits:
    """The commits read of a table's window, and how many the window holds (``read`` is a sample when fewer)."""

    read: list[Commit]
    in_window: int


@dataclass(kw_only=True)
class EntityIngest:
    entity: str
    topic: str
    freshness: list[tuple[float, float, float, int]] = field(default_factory=list)  # (at, p50, p99, rows) per commit
    rates: list[tuple[float, int, float]] = field(default_factory=list)  # (commit time, records, s since the previous)
    quarantine_by_rule: dict[str, int] = field(default_factory=dict)
    window_counts: dict[str, int] = field(default_factory=dict)  # silver, quarantine, dropped since `since`
    reconcile: list[dict[str, Any]] = field(default_factory=list)  # per partition, over all time (not the window)
    silver_commits: tuple[int, int] = (0, 0)  # (read, in the window) behind ``freshness``
    bronze_commits: tuple[int, int] = (0, 0)  # (read, in the window) behind ``rates``


def sample_commits(times: Sequence[float], limit: int) -> list[int]:
    """Positions of at most ``limit`` commits among ``times`` (commit times, oldest first), spread across their span:
    the span cut into ``limit`` equal buckets, the newest commit of each bucket that has one (so the newest commit
    is always among them). All of them when there are no more than ``limit``."""
    if len(times) <= limit:
        return list(range(len(times)))
    first = times[0]
    width = (times[-1] - first) / limit or 1.0
    newest_per_bucket: dict[int, int] = {}
    for position, at_s in enumerate(times):
        newest_per_bucket[min(int((at_s - first) / width), limit - 1)] = position
    return sorted(newest_per_bucket.values())


def added_files(body: bytes) -> dict[str, int | None]:
    """The data files one commit file added (path -> numRecords, None without stats); compaction's are left out."""
    added: dict[str, int | None] = {}
    for line in body.decode("utf-8").splitlines():
        action = json.loads(line).get("add") if line.strip() else None
        if action and action.get("dataChange", True):
            stats = json.loads(action["stats"]) if action.get("stats") else {}
            added[str(action["path"])] = stats.get("numRecords")
    return added


def window_commits(
    listed: Sequence[tuple[int, float, str]], read: Callable[[str], bytes], *, since_s: float, limit: int
) -> Commits:
    """The commits of ``listed`` (version, visible since, key: every commit file of the log) visible since
    ``since_s``, sampled across the window (:func:`sample_commits`), each read with ``read(key)``."""
    ordered = sorted(listed)
    first = next((n for n, (_, at_s, _) in enumerate(ordered) if at_s >= since_s), len(ordered))
    window = ordered[first:]
    chosen = [first + n for n in sample_commits([at_s for _, at_s, _ in window], limit)]
    read_commits = [
        Commit(
            version=ordered[n][0],
            at_s=ordered[n][1],
            previous_at_s=ordered[n - 1][1] if n else None,
            added=added_files(read(ordered[n][2])),
        )
        for n in chosen
    ]
    return Commits(read=read_commits, in_window=len(window))


def commits_since(settings: Settings, table: str, *, since_s: float, limit: int = MAX_COMMITS) -> Commits:
    """The table's commits visible since ``since_s`` (at most ``limit``, spread across the window), oldest first,
    with their added files."""
    client = client_for(settings)
    bucket = settings.s3.lake_bucket
    listed: list[tuple[int, float, str]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{table}/_delta_log/"):
        for item in page.get("Contents", []):
            key = item.get("Key", "")
            stem = key.rsplit("/", 1)[-1].removesuffix(".json")
            if key.endswith(".json") and stem.isdigit():
                listed.append((int(stem), item["LastModified"].timestamp(), key))

    def read(key: str) -> bytes:
        return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())

    return window_commits(listed, read, since_s=since_s, limit=limit)


def _kafka_times(settings: Settings, table: str, path: str) -> pa.Array:
    """The ``kafka_timestamp`` column of one data file, in seconds."""
    from urllib.parse import unquote  # noqa: PLC0415

    import pyarrow.compute as pc  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    body = client_for(settings).get_object(Bucket=settings.s3.lake_bucket, Key=f"{table}/{unquote(path)}")["Body"]
    column = pq.read_table(io.BytesIO(body.read()), columns=["kafka_timestamp"]).column(0)
    micros = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())
    return pc.divide(pc.cast(micros, pa.float64()), 1e6)


def freshness_series(settings: Settings, commits: Commits, table: str) -> list[tuple[float, float, float, int]]:
    """Per commit read of ``table``: (commit time, p50 s, p99 s, rows) of commit time minus Kafka time."""
    import numpy as np  # noqa: PLC0415

    series = []
    for commit in commits.read:
        times = [_kafka_times(settings, table, path).to_numpy() for path in commit.added]
        if not times or not sum(len(t) for t in times):
            continue
        lag = commit.at_s - np.concatenate(times)
        p50, p99 = np.percentile(lag, [50, 99])
        series.append((commit.at_s, float(p50), float(p99), len(lag)))
    return series


def rate_series(commits: Commits) -> list[tuple[float, int, float]]:
    """Per commit read: (commit time, records it added, seconds since the commit before it), from the files'
    statistics; the rate at that commit is records over seconds (a sampled commit's own predecessor, so skipped
    commits do not dilute it). The log's first commit has no predecessor and no rate."""
    return [
        (c.at_s, sum(n or 0 for n in c.added.values()), c.at_s - c.previous_at_s)
        for c in commits.read
        if c.previous_at_s is not None
    ]


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
    silver, bronze = catalog.silver(lake, entity).path, catalog.bronze(lake, spec.topic).path
    silver_commits = commits_since(settings, silver, since_s=since_s)
    bronze_commits = commits_since(settings, bronze, since_s=since_s)
    return EntityIngest(
        entity=entity,
        topic=spec.topic,
        freshness=freshness_series(settings, silver_commits, silver),
        rates=rate_series(bronze_commits),
        quarantine_by_rule=rules,
        window_counts=counts,
        reconcile=reconcile_lake(settings, entity),
        silver_commits=(len(silver_commits.read), silver_commits.in_window),
        bronze_commits=(len(bronze_commits.read), bronze_commits.in_window),
    )
