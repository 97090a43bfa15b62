"""Which keys the cache treats as immutable (no HEAD per open): the default keeps the Delta log revalidated."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierlake.config.cache import CacheOptions
from tiers.cache.freshness import DELTA_DATA_FILES, check_patterns, is_immutable


@pytest.mark.parametrize(
    ("key", "immutable"),
    [
        ("bronze/ev_telemetry/part-00000-4c1a.c000.snappy.parquet", True),
        ("silver/ev/date=2026-01-01/part-00001-9b2d.c000.snappy.parquet", True),
        ("part-0.parquet", True),
        ("bronze/ev_telemetry/_delta_log/_last_checkpoint", False),
        ("bronze/ev_telemetry/_delta_log/00000000000000000010.checkpoint.parquet", False),
        ("bronze/ev_telemetry/_delta_log/00000000000000000011.json", False),
        ("_delta_log/00000000000000000010.checkpoint.parquet", False),
        ("bronze/ev_telemetry/_checkpoints/offsets/3", False),
        ("notes/readme.parquet.txt", False),
    ],
)
def test_default_patterns_cover_delta_data_files_only(key: str, immutable: bool) -> None:
    assert is_immutable(key, DELTA_DATA_FILES) is immutable


def test_the_last_matching_pattern_decides() -> None:
    patterns = ("*.parquet", "!scratch/*", "scratch/frozen/*")
    assert is_immutable("scratch/frozen/a.bin", patterns)
    assert not is_immutable("scratch/a.parquet", patterns)
    assert is_immutable("lake/a.parquet", patterns)
    assert not is_immutable("lake/a.json", patterns)
    assert not is_immutable("lake/a.parquet", ())


def test_patterns_are_case_sensitive_like_s3_keys() -> None:
    assert not is_immutable("lake/A.PARQUET", DELTA_DATA_FILES)


@pytest.mark.parametrize("bad", [("",), ("*.parquet", "!")])
def test_an_empty_pattern_is_refused_with_the_fix(bad: tuple[str, ...], tmp_path: Path) -> None:
    assert check_patterns(bad) is not None
    with pytest.raises(ValueError, match=r"immutable_patterns = .* is invalid: .*Fix: a list of key globs"):
        CacheOptions(directory=tmp_path, max_bytes=1024, immutable_patterns=bad)
