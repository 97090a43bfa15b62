"""Pure logic of the lake's lifecycle (issue 25): each pipeline table's day layout, the default cold-tier policies
of conf/, the tables `tierlake table migrate --all` rewrites, files per partition in the stats, and the purge that
keeps what retention or a legal hold still protects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipelines.ingest.gold import schema_changed
from pipelines.lake.layout import layout_of, owning_entity, pipeline_tables
from pipelines.lake.maintenance import busy_partitions, files_by_partition
from pipelines.observe.gather import LakeReport, TableRow
from pipelines.observe.render import tables_html
from pipelines.synthetic.demo import summary
from tierlake import catalog
from tierlake.config import load_settings
from tierlake.errors import ConfigError, NotFound, RetentionViolation
from tiers.archive.catalog import CATALOG_SCHEMA, Catalog
from tiers.archive.compliance import purge
from tiers.archive.context import ArchiveContext

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.mark.parametrize(
    ("table", "column", "source"),
    [
        ("bronze/ev_telemetry", "ingest_date", "ingest_time"),
        ("silver/ev", "event_date", "ts"),
        ("silver/corpus", "event_date", "ts"),
        ("gold/ev_windows", "event_date", "window_start"),
        ("gold/ev_anomalies", "event_date", "ts"),
    ],
)
def test_pipeline_tables_are_laid_out_by_day(table: str, column: str, source: str) -> None:
    assert catalog.day_layout(table) == catalog.DayLayout(column, source)


@pytest.mark.parametrize("table", ["quarantine/ev", "dropped/ev", "gold/corpus_tokens", "silver/_checkpoints/ev"])
def test_small_or_unordered_tables_stay_unpartitioned(table: str) -> None:
    assert catalog.day_layout(table) is None


def test_the_layout_follows_the_entitys_event_time_and_refuses_other_tables() -> None:
    settings = load_settings("ci", conf_dir=CONF, env={})
    assert owning_entity(settings, "bronze/corpus_docs") == "corpus"
    assert owning_entity(settings, "gold/ev_anomalies") == "ev"
    assert owning_entity(settings, "scratch/x") is None
    assert layout_of(settings, "silver/ev").source == settings.entities["ev"].event_time
    with pytest.raises(ConfigError, match=r"'quarantine/ev' has no day layout.*Fix"):
        layout_of(settings, "quarantine/ev")
    assert sorted(pipeline_tables(settings)) == sorted(
        [
            "bronze/ev_telemetry",
            "silver/ev",
            "gold/ev_windows",
            "gold/ev_anomalies",
            "bronze/corpus_docs",
            "silver/corpus",
            "gold/corpus_windows",
            "gold/corpus_anomalies",
        ]
    )


def test_conf_tiers_the_pipelines_silver_and_gold_tables_by_event_day() -> None:
    tables = load_settings("ci", conf_dir=CONF, env={}).archive.tables
    assert set(tables) == {"silver/ev", "silver/corpus", "gold/ev_windows", "gold/ev_anomalies"}
    for name, policy in tables.items():
        layout = catalog.day_layout(name)
        assert layout is not None
        assert policy.partition_column == layout.column  # the policy names the column the writer partitions by
        assert policy.cold_by == "age"
        assert policy.retention_days > 0
        assert policy.hold_reason == ""
    assert tables["silver/ev"].cold_after_days == 30


def test_a_policy_may_name_a_default_legal_hold_and_nothing_else() -> None:
    base = "partition_column: d, key_column: k, cold_by: age, cold_after_days: 9, retention_days: 1"
    env = {"TIERLAKE_ARCHIVE__TABLES": f"{{t/x: {{{base}, hold_reason: case 7}}}}"}
    assert load_settings("ci", conf_dir=CONF, env=env).archive.tables["t/x"].hold_reason == "case 7"
    env = {"TIERLAKE_ARCHIVE__TABLES": f"{{t/x: {{{base}, hold: yes}}}}"}
    with pytest.raises(ConfigError, match="TIERLAKE_ARCHIVE__TABLES"):
        load_settings("ci", conf_dir=CONF, env=env)


def test_files_are_counted_per_partition() -> None:
    actions = {"path": ["a", "b", "c"], "partition.event_date": ["2026-01-02", "2026-01-01", "2026-01-02"]}
    assert files_by_partition(actions) == {"event_date=2026-01-01": 1, "event_date=2026-01-02": 2}
    assert files_by_partition({"path": ["a"]}) == {}


def test_optimize_rewrites_only_the_days_of_more_than_one_file() -> None:
    days = {"event_date=2026-01-01": 1, "event_date=2026-01-02": 4, "event_date=2026-01-03": 2}
    assert busy_partitions(days) == [("event_date", "in", ["2026-01-02", "2026-01-03"])]
    assert busy_partitions({"event_date=2026-01-01": 1}) == []  # compacted (or archived): left alone
    assert busy_partitions({}) is None  # unpartitioned: the whole table
    assert busy_partitions({"a=1/b=2": 3}) is None


def _archived(catalog_: Catalog, file_id: str, *, retained_days: float, hold: str = "") -> None:
    until = datetime.now(UTC) + timedelta(days=retained_days)
    base: dict[str, Any] = {f.name: None for f in CATALOG_SCHEMA}
    for copy in (1, 2):
        catalog_.append(
            [
                base
                | {
                    "file_id": file_id,
                    "table": "silver/ev",
                    "path": f"event_date=2020-01-01/{file_id}.parquet",
                    "bucket": "lake",
                    "key": f"silver/ev/{file_id}.parquet",
                    "copy": copy,
                    "state": "VERIFIED",
                    "legal_hold": bool(hold),
                    "hold_reason": hold,
                    "retention_until": until,
                    "archived_at": datetime.now(UTC),
                }
            ]
        )


def test_purge_only_due_keeps_retained_and_held_files_and_plans_the_rest(tmp_path: Path) -> None:
    settings = load_settings("ci", conf_dir=CONF, env={})
    context = ArchiveContext(archive=settings.archive, s3=settings.s3, cache=settings.cache.options)
    cold = Catalog(str(tmp_path / "catalog"), str(tmp_path / "audit"))
    assert purge(context, cold, "\"table\" = 'silver/ev'", execute=False, only_due=True)["files"] == []
    with pytest.raises(NotFound, match="nothing archived"):
        purge(context, cold, "\"table\" = 'silver/ev'", execute=False)
    _archived(cold, "due", retained_days=-1)
    _archived(cold, "young", retained_days=7)
    _archived(cold, "held", retained_days=-1, hold="case 7")
    with pytest.raises(RetentionViolation, match=r"retained until|legal hold"):
        purge(context, cold, "\"table\" = 'silver/ev'", execute=False)
    plan = purge(context, cold, "\"table\" = 'silver/ev'", execute=False, only_due=True)
    assert plan["files"] == ["s3://lake/silver/ev/due.parquet"]
    assert plan["kept"] == 2
    assert plan["dry_run"]


def test_the_demo_ends_with_the_next_command_of_each_user() -> None:
    report: dict[str, Any] = {
        "ok": True,
        "seconds": {"total": 100.0, "stack_up": 10.0},
        "tables": {},
        "next": "tierlake stack status",
        "lifecycle": {
            "table": "silver/ev",
            "seconds": 4.2,
            "files_per_day_before_optimize": {"event_date=2026-01-01": 3, "event_date=2026-01-02": 5},
            "files_per_day_after_optimize": {"event_date=2026-01-01": 1, "event_date=2026-01-02": 1},
            "warmed": {"partition": "event_date=2026-01-02", "files": 1, "filled": 1},
            "archived_partitions": ["event_date=2026-01-01"],
            "archived_files": 1,
            "cartridges": {"site-a": "A00001L8", "site-b": "B00001L8"},
            "copies_bad": 0,
            "station_on_tape": "st-0003",
            "purge_plan": {"files": 0, "kept_by_retention_or_hold": 1},
        },
        "trainer_sample": {
            "table": "s3://tierlake-lake/gold/corpus_tokens",
            "version": 4,
            "batches": 5,
            "shape": [8, 256],
            "first_batch_s": 0.4,
            "total_s": 0.9,
        },
    }
    text = summary(report)
    assert "files per day 2026-01-01: 3, 2026-01-02: 5 -> after OPTIMIZE 2026-01-01: 1, 2026-01-02: 1" in text
    for line in (
        ".venv/bin/tierlake table stats --all",
        ".venv/bin/tierlake archive purge --table silver/ev --only-due",
        "python -m training.example --run demo --table s3://tierlake-lake/gold/corpus_tokens --steps 20",
        "--table silver/ev --key st-0003 --to /tmp/tierlake-restore",
        "WHERE key_min <= 'st-0003' AND 'st-0003' <= key_max",
    ):
        assert line in text, line


@pytest.mark.parametrize(
    ("error", "restart"),
    [
        ("[DELTA_STREAMING_METADATA_EVOLUTION] The schema, table configuration or protocol of your Delta table", True),
        ("[DELTA_SCHEMA_CHANGED_WITH_VERSION] Detected schema change in version 4", True),
        ("[DELTA_FILE_NOT_FOUND_DETAILED] File s3a://lake/silver/ev/part-0.parquet referenced in the log", False),
        (None, False),
    ],
)
def test_gold_starts_again_after_a_metadata_change_of_silver(error: str | None, restart: bool) -> None:
    """A migration of silver ends gold's stream once, with the schema log updated (pipelines.ingest.gold)."""
    assert schema_changed(RuntimeError(error) if error else None) is restart


def test_the_report_shows_the_most_files_in_a_day_of_each_table() -> None:
    rows = [
        TableRow(table="silver/ev", exists=True, files=5, partitions=3, max_files_per_partition=2),
        TableRow(table="gold/corpus_tokens", exists=True, files=4),
        TableRow(table="silver/corpus", exists=False),
    ]
    page = tables_html(LakeReport(generated_s=100.0, since_s=0.0, tables=rows))
    assert "<th>most files in a day</th>" in page
    assert "<td>2 (3 days)</td>" in page
    assert "<td>not partitioned</td>" in page
