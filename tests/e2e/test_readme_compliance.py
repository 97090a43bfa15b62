"""The README's compliance block, run as written, line by line, against the real stack (profile ``ci``).

The block needs an archive of ``silver/ev`` first. The test gives it one in a lake bucket of its own (so the shared
lake and its reconciliation are untouched): a ``silver/ev`` table whose ``event_date`` partitions are cold by the
default policy, archived to two sites and purged from the object store. Then every line of the block must exit 0,
and what it claims must hold: the version restored to s3 reads again, row for row, and the key's files are in the
folder the block names.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from tests.e2e.cli import tierlake
from tests.unit.test_docs import readme_block
from tierlake.config import Settings
from tiers.s3 import delta_storage_options, s3_client

REPO = Path(__file__).resolve().parents[2]
RESTORED = Path("/tmp/restored")  # noqa: S108 (the folder the README names, as written)


def compliance_block() -> list[str]:
    return readme_block("## For compliance")


@pytest.fixture
def archived_lake(settings: Settings, tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    """A lake bucket of its own whose silver/ev is archived and purged; the environment that points at it."""
    lake = f"lake-readme-{uuid.uuid4().hex[:8]}"
    s3_client(settings.s3).create_bucket(Bucket=lake)
    policy = "{partition_column: event_date, key_column: station_id, cold_by: age, cold_after_days: 30}"
    env = {
        **os.environ,
        "TIERLAKE_PROFILE": "ci",
        "TIERLAKE_S3__BUCKETS": json.dumps([*settings.s3.buckets, lake]),
        "TIERLAKE_S3__LAKE_BUCKET": lake,
        "TIERLAKE_ARCHIVE__LIBRARY_DIR": str(tmp_path / "tape"),
        "TIERLAKE_ARCHIVE__CATALOG_URI": str(tmp_path / "catalog"),
        "TIERLAKE_ARCHIVE__AUDIT_URI": str(tmp_path / "audit"),
        "TIERLAKE_ARCHIVE__STAGING_DIR": str(tmp_path / "staging"),
        "TIERLAKE_ARCHIVE__BLOCK_SIZE": "65536",
        # The default rules but retention: the purge below may delete at once.
        "TIERLAKE_ARCHIVE__TABLES": f"{{silver/ev: {{{policy[1:-1]}, retention_days: 0}}}}",
    }
    uri = f"s3://{lake}/silver/ev"
    options = delta_storage_options(settings.s3)
    for version in range(4):  # versions 0-3, each adding a file to both days
        rows = 40
        write_deltalake(
            uri,
            pa.table(
                {
                    "event_id": [f"e-{version}-{i}" for i in range(rows)],
                    "station_id": [f"ST-{(i + version) % 50:04d}" for i in range(rows)],
                    "power_kw": [float(i) for i in range(rows)],
                    "event_date": ["2026-01-01", "2026-01-02"] * (rows // 2),
                }
            ),
            mode="append",
            partition_by=["event_date"],
            storage_options=options,
        )
    for step in (["run", "--table", "silver/ev"], ["purge", "--table", "silver/ev", "--execute"]):
        done = _tierlake(env, ["archive", *step])
        assert done.returncode == 0, f"archive {step}: {done.stderr[-2000:]}"
    shutil.rmtree(RESTORED, ignore_errors=True)
    yield env, uri
    shutil.rmtree(RESTORED, ignore_errors=True)


def _tierlake(env: dict[str, str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    return tierlake(argv, env=env)


def test_readme_compliance_block_runs_as_written(settings: Settings, archived_lake: tuple[dict[str, str], str]) -> None:
    env, uri = archived_lake
    options = delta_storage_options(settings.s3)
    purged = DeltaTable(uri, version=3, storage_options=options)
    with pytest.raises(OSError, match=r"(?i)not found"):  # the purge took the files: version 3 does not read
        purged.to_pyarrow_table()
    lines = compliance_block()
    assert any("--to s3" in line for line in lines), lines
    for line in lines:
        words = shlex.split(line, comments=True)
        assert words[0] == "tierlake", f"README line {line!r} is not a tierlake command"
        result = _tierlake(env, words[1:])
        assert result.returncode == 0, f"README line {line!r} exited {result.returncode}: {result.stderr[-2000:]}"
    table = DeltaTable(uri, version=3, storage_options=options).to_pyarrow_table()
    assert table.num_rows == 4 * 40  # every row of version 3 reads again after `restore --to s3`
    assert sorted(table.column("event_id").to_pylist()) == sorted(f"e-{v}-{i}" for v in range(4) for i in range(40))
    restored = list(RESTORED.rglob("*.parquet"))
    assert restored, f"`restore --key ST-0042 --to {RESTORED}` left no file there"
