"""Pure logic behind the DAGs and `tierlake table`: lease names, the VACUUM floor, ingestion health, conf sections."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.lake.maintenance import check_retention, ingest_health, lease_name, table_name
from tierlake.config import load_settings
from tierlake.errors import ConfigError, RetentionViolation

CONF = Path(__file__).resolve().parents[2] / "conf"


def _settings(**env: str):  # type: ignore[no-untyped-def]
    return load_settings("ci", conf_dir=CONF, env=env)


@pytest.mark.parametrize(
    ("table", "lease"),
    [
        ("bronze/ev_telemetry", "ingest-ev"),
        ("silver/ev", "ingest-ev"),
        ("quarantine/corpus", "ingest-corpus"),
        ("dropped/ev", "ingest-ev"),
        ("gold/ev_windows", "ingest-ev"),
        ("gold/corpus_tokens", "ingest-corpus"),
        ("scratch/features", "table-scratch-features"),
        ("bronze/other_topic", "table-bronze-other_topic"),
    ],
)
def test_single_driver_maintenance_takes_the_lease_of_the_writer_of_the_table(table: str, lease: str) -> None:
    assert lease_name(_settings(TIERLAKE_SPARK__DELTA_COMMITS="single_driver"), table) == lease


@pytest.mark.parametrize("table", ["bronze/ev_telemetry", "silver/ev", "gold/corpus_tokens", "scratch/features"])
def test_with_conditional_commits_maintenance_has_a_lease_of_its_own(table: str) -> None:
    """The object store arbitrates commits, so maintenance no longer waits for the ingestion driver's lease."""
    assert lease_name(_settings(), table) == "table-" + table.replace("/", "-")


def test_table_names_accept_paths_and_lake_uris_only() -> None:
    settings = _settings()
    assert table_name(settings, "s3a://tierlake-lake/silver/ev/") == "silver/ev"
    assert table_name(settings, "s3://tierlake-lake/gold/ev_windows") == "gold/ev_windows"
    with pytest.raises(ConfigError, match="not the lake bucket"):
        table_name(settings, "s3://other-bucket/silver/ev")
    with pytest.raises(ConfigError, match="is invalid"):
        table_name(settings, "silver/../../etc")


def test_vacuum_under_seven_days_is_refused_unless_overridden() -> None:
    check_retention(168, allow_short_retention=False)
    with pytest.raises(RetentionViolation, match=r"under the 168-hour \(7-day\) minimum.*--allow-short-retention"):
        check_retention(167, allow_short_retention=False)
    check_retention(1, allow_short_retention=True)
    with pytest.raises(RetentionViolation, match="not a whole number of hours"):
        check_retention(-1, allow_short_retention=True)
    with pytest.raises(RetentionViolation, match="rounds the retention to whole hours"):
        check_retention(0.5, allow_short_retention=True)


def test_ingest_health_verdicts() -> None:
    assert ingest_health({"running": False, "pid": None}, max_staleness_s=60).verdict == "dead"
    fresh = ingest_health({"running": True, "pid": 7, "seconds_since_update": 3.0}, max_staleness_s=60)
    assert (fresh.verdict, fresh.pid) == ("ok", 7)
    stale = ingest_health({"running": True, "pid": 7, "seconds_since_update": 61.0}, max_staleness_s=60)
    assert stale.verdict == "stale"
    assert "61 s ago" in stale.reason
    assert ingest_health({"running": True, "pid": 7}, max_staleness_s=60).verdict == "stale"
    failed = ingest_health(
        {
            "running": True,
            "pid": 7,
            "seconds_since_update": 1.0,
            "failed": {"ev": {"batch_id": 4, "offsets": {"ev.telemetry-0": [10, 19]}, "error": "boom"}},
        },
        max_staleness_s=60,
    )
    assert failed.verdict == "failed"
    assert "ev at batch 4 (offsets {'ev.telemetry-0': [10, 19]}): boom" in failed.reason


def test_maintenance_and_mirror_sections() -> None:
    settings = _settings()
    assert settings.maintenance.vacuum_retention_hours == 168
    assert settings.maintenance.table("silver/ev").zorder_by == ("station_id", "ts")
    assert settings.maintenance.table("not/configured").optimize == "compact"
    assert settings.mirror.bucket == "tierlake-mirror"
    assert settings.mirror.endpoint == ""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"TIERLAKE_MAINTENANCE__VACUUM_RETENTION_HOURS": "24"},
            r"vacuum_retention_hours = 24(\.0)? is invalid.*>= 168",
        ),
        ({"TIERLAKE_MIRROR__BUCKET": "tierlake-lake"}, "would overwrite the lake itself"),
        ({"TIERLAKE_MIRROR__ENDPOINT": "rgw-b:443"}, "must be an http:// or https:// URL"),
        ({"TIERLAKE_MIRROR__CHECKPOINT_PREFIXES": "[ckpt]"}, "a prefix is a folder ending in /"),
        ({"TIERLAKE_MAINTENANCE__TABLES": "{silver/ev: {optimize: zorder}}"}, "zorder needs a non-empty zorder_by"),
        ({"TIERLAKE_MAINTENANCE__TABLES": "{silver/ev: {optimize: sort}}"}, "optimize must be one of"),
    ],
)
def test_bad_maintenance_and_mirror_values_name_key_and_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _settings(**env)
