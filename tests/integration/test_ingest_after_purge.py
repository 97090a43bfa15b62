"""Ingestion goes on after the lifecycle purged old silver days from the object store (issue 25), on the real stack.

A restarted ingest driver needs silver's high-water mark before its first batch. It reads it from the Delta log's
file statistics (pipelines.ingest.high_water), so the purged days' files, on tape only, are never opened; the
duplicate check reads only files near the mark (recent days). The test's entity and topic are its own
(tests.integration.test_ingest.Oracle); the cold-tier policy is conf/'s default for silver/ev with a retention of
0 days, so the purge is due at once.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from infra.stack import LocalStack
from pipelines.synthetic.datasets import EV_SPACING_S, good_records, recent_start
from tests.integration.test_ingest import Oracle, day_records
from tests.lake_tables import scratch_archive
from tierlake import catalog
from tiers.archive import compliance
from tiers.archive.archiver import run
from tiers.archive.catalog import Catalog, quote
from tiers.archive.context import ArchiveContext
from tiers.s3 import delta_storage_options

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

pytestmark = [pytest.mark.integration, pytest.mark.slow]
OLD_DAYS_AGO = (42, 41)


def _silver_rows(table: DeltaTable, day: date) -> list[dict[str, Any]]:
    """Silver's rows of one day (a partition filter: the purged days' files are not opened)."""
    rows: list[dict[str, Any]] = table.to_pyarrow_table(filters=[("event_date", "=", day)]).to_pylist()
    return rows


def test_ingestion_goes_on_after_old_silver_days_are_purged(
    stack: LocalStack, spark: SparkSession, tmp_path: Path
) -> None:
    oracle = Oracle(stack)
    settings = oracle.settings()
    table = catalog.silver(settings.s3.lake_bucket, oracle.entity)
    options = delta_storage_options(settings.s3)
    start = recent_start(400, EV_SPACING_S)
    first_recent = list(good_records("ev", 100, seed=32, start=start))
    oracle.produce(day_records(42, 100, seed=30) + day_records(41, 100, seed=31) + first_recent)
    oracle.ingest_in_session(spark)

    # The old days go to tape at both sites and their object-store copies are purged (retention 0 days).
    old_days = [f"event_date={date.today() - timedelta(days=d)}" for d in OLD_DAYS_AGO]
    policy = dataclasses.replace(settings.archive.tables["silver/ev"], table=table.path, retention_days=0)
    context = ArchiveContext(
        archive=scratch_archive(settings.archive, tmp_path, {table.path: policy}),
        s3=settings.s3,
        cache=settings.cache.options,
    )
    cold = Catalog(context.archive.catalog_uri, context.archive.audit_uri)
    assert sorted(c["partition"] for c in compliance.select(context, cold, table.path)) == old_days
    assert run(context, cold, table.path, old_days, progress=False).all_verified
    assert compliance.verify(context, cold, None, progress=False)["bad"] == []
    compliance.retention(cold)
    purged = compliance.purge(context, cold, f'"table" = {quote(table.path)}', execute=True, only_due=True)["files"]
    old_files = [u for u in DeltaTable(table.s3, storage_options=options).file_uris() if "event_date=" in u]
    assert purged
    assert sorted(purged) == sorted(u for u in old_files if any(f"/{d}/" in u for d in old_days))

    # A new driver ingests on: later events of today, and events of an old day, now late (quarantined).
    later = list(good_records("ev", 100, seed=33, start=start + timedelta(seconds=200 * EV_SPACING_S)))
    late = day_records(42, 10, seed=34)
    oracle.produce(later + late)
    oracle.ingest_ok()

    silver = DeltaTable(table.s3, storage_options=options)
    today = datetime.now(UTC).date()
    recent = [row for day in sorted({start.date(), today}) for row in _silver_rows(silver, day)]
    ids = Counter(r["event_id"] for r in recent)
    assert set(ids) == {r.event_id for r in first_recent + later}
    assert max(ids.values()) == 1  # each once
    stats = pa.table(silver.get_add_actions(flatten=True)).to_pylist()
    assert sum(int(a["num_records"]) for a in stats) == 400  # the purged days are still in the log, unchanged
    quarantined = oracle.table("quarantine")
    assert sorted(json.loads(q["value"])["event_id"] for q in quarantined) == sorted(str(r.event_id) for r in late)
    assert {q["rule"] for q in quarantined} == {"late_event"}
    with pytest.raises(TableNotFoundError):  # nothing was ever dropped as a duplicate: no table
        oracle.table("dropped")

    # Gold went on as well: its windows hold every silver row once (gold is not purged).
    windows = oracle.gold("windows")
    assert sum(w["samples"] for w in windows if w["window_minutes"] == 1) == 400
