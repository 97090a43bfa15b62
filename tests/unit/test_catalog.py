"""The table catalog (tierlake/catalog.py): every spelling of a table, the lake's layout, and that no other
production module builds a Spark table URI."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tierlake import catalog
from tierlake.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("text", ["silver/ev", "/silver/ev/", "s3://lake/silver/ev", "s3a://lake/silver/ev/"])
def test_every_spelling_of_a_table_is_one_table(text: str) -> None:
    table = catalog.parse_table(text, lake_bucket="lake")
    assert table == catalog.silver("lake", "ev")
    assert (table.s3, table.s3a) == ("s3://lake/silver/ev", "s3a://lake/silver/ev")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("s3://other/silver/ev", r"is in bucket 'other', not the lake bucket 'lake'\. Fix: give a path"),
        ("gs://lake/silver/ev", r"scheme 'gs'\. Fix: use s3://, s3a:// or a lake path"),
        ("silver/../gold", r"no \. or \.\. parts"),
        ("", r"the path is empty"),
        ("silver ev", r"a table is a path in the lake bucket"),
    ],
)
def test_bad_table_names_say_why_and_the_fix(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        catalog.parse_table(text, lake_bucket="lake")


def test_other_buckets_only_when_allowed() -> None:
    assert catalog.parse_table("s3://other/t", lake_bucket="lake", other_buckets=True).bucket == "other"


def test_the_lake_layout() -> None:
    assert catalog.bronze("b", "ev.telemetry").path == "bronze/ev_telemetry"
    assert catalog.bronze_checkpoint("b", "ev.telemetry").path == "bronze/_checkpoints/ev_telemetry"
    assert [t.path for t in (catalog.quarantine("b", "ev"), catalog.dropped("b", "ev"))] == [
        "quarantine/ev",
        "dropped/ev",
    ]
    assert catalog.gold_anomalies("b", "ev").s3a == "s3a://b/gold/ev_anomalies"
    assert catalog.lease_prefix("ingest-ev") == "_leases/ingest-ev/"


def test_no_other_production_module_builds_a_spark_table_uri() -> None:
    builds = re.compile(r"""f["']s3a://\{|/_checkpoints/\{|["']gold/\{""")
    found = [
        f"{path.relative_to(REPO)}:{n}"
        for folder in ("pipelines", "tiers", "loaders", "tierlake", "dags")
        for path in (REPO / folder).rglob("*.py")
        if path.name != "catalog.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if builds.search(line)
    ]
    assert not found, found
