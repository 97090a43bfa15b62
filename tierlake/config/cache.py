"""Settings of the edge cache (tiers/cache): where it lives, its byte budget, what is immutable, its site server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tierlake.config.values import Values, port, positive

DELTA_DATA_FILES: tuple[str, ...] = ("*.parquet", "!_delta_log/*", "!*/_delta_log/*")
"""The default immutable keys: Parquet files outside any ``_delta_log/`` folder (checkpoints there stay revalidated).
How the cache reads the patterns: ``tiers.cache.freshness``."""


def check_patterns(patterns: tuple[str, ...]) -> str | None:
    """Why ``patterns`` is unusable, or None."""
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern.removeprefix("!"):
            return f"{pattern!r} is not a glob (a non-empty string, optionally after '!')"
    return None


@dataclass(frozen=True, kw_only=True)
class CacheOptions:
    """How big, where, and how careful one cache is (``tiers.cache.EdgeCache``); ``conf/`` fills it, and benchmarks
    and tests build their own. ``capacity`` is min(max_bytes, disk_fraction of the file system)."""

    directory: Path
    max_bytes: int
    disk_fraction: float = 0.9
    block_bytes: int = 8 * 1024 * 1024
    revalidate_s: float = 0.0
    fill_timeout_s: float = 300.0
    evict_to_fraction: float = 0.95
    verify_reads: bool = False
    immutable_patterns: tuple[str, ...] = DELTA_DATA_FILES
    direct_io: bool = True

    def __post_init__(self) -> None:
        checks = (
            ("max_bytes", self.max_bytes, self.max_bytes >= 1, "a byte budget of at least 1, e.g. 10737418240"),
            ("disk_fraction", self.disk_fraction, 0 < self.disk_fraction <= 1, "a fraction in (0, 1], e.g. 0.9"),
            ("block_bytes", self.block_bytes, self.block_bytes >= 4096, "at least 4096, e.g. 8388608"),
            ("revalidate_s", self.revalidate_s, self.revalidate_s >= 0, "0 (HEAD on every open) or more"),
            ("fill_timeout_s", self.fill_timeout_s, self.fill_timeout_s > 0, "seconds, e.g. 300"),
            ("evict_to_fraction", self.evict_to_fraction, 0 < self.evict_to_fraction <= 1, "e.g. 0.95"),
        )
        for name, value, ok, fix in checks:
            if not ok:
                raise ValueError(f"cache option {name} = {value!r} is invalid. Fix: {fix}")
        if (why := check_patterns(self.immutable_patterns)) is not None:
            raise ValueError(
                f"cache option immutable_patterns = {list(self.immutable_patterns)!r} is invalid: {why}. "
                "Fix: a list of key globs, e.g. ['*.parquet', '!*/_delta_log/*'], or [] to revalidate every key"
            )


@dataclass(frozen=True, kw_only=True)
class CacheSettings:
    """The edge cache (tiers/cache) of this node: its options, Delta warm-up, and its site server."""

    options: CacheOptions
    warm_concurrency: int
    site_host: str
    site_port: int
    site_credentials_file: Path

    @property
    def directory(self) -> Path:
        return self.options.directory


def build_cache(values: Values, root: Path, run_dir: Path) -> CacheSettings:
    folder = values.get("cache.dir", str, default="", fix="a folder on local NVMe; empty means <run_dir>/edge-cache")
    disk_fraction = values.number("cache.disk_fraction", fix="e.g. 0.9", minimum=0, maximum=1, above=True)
    revalidate_s = values.number("cache.revalidate_s", fix="seconds, e.g. 0 (HEAD on every open) or 60", minimum=0)
    fill_timeout_s = values.number("cache.fill_timeout_s", fix="seconds, e.g. 300", minimum=0, above=True)
    block_bytes = values.get(
        "cache.block_bytes",
        int,
        fix="e.g. 8388608 (8 MiB)",
        check=lambda n: None if n >= 4096 else "a block holds at least 4096 bytes",
    )
    site_keys = values.get("cache.site_credentials_file", str, default="", fix="empty, or a path for the keys file")
    immutable = values.get(
        "cache.immutable_patterns",
        list,
        fix="a list of key globs, e.g. ['*.parquet', '!*/_delta_log/*'], or [] to revalidate every key",
        check=lambda globs: check_patterns(tuple(globs)),
    )
    options = CacheOptions(
        directory=(root / folder) if folder else run_dir / "edge-cache",
        max_bytes=values.get("cache.max_bytes", int, check=positive, fix="a byte budget, e.g. 10737418240"),
        disk_fraction=disk_fraction,
        block_bytes=block_bytes,
        revalidate_s=revalidate_s,
        immutable_patterns=tuple(immutable),
        direct_io=values.get("cache.direct_io", bool, fix="true (O_DIRECT fills) or false (page-cache writes)"),
        fill_timeout_s=fill_timeout_s,
    )
    return CacheSettings(
        options=options,
        warm_concurrency=values.get("cache.warm_concurrency", int, check=positive, fix="parallel GETs, e.g. 4"),
        site_host=values.get("cache.site_host", str, fix="the address to listen on, e.g. 0.0.0.0 or 127.0.0.1"),
        site_port=values.get("cache.site_port", int, check=port, fix="a free port, e.g. 7680"),
        site_credentials_file=(root / site_keys) if site_keys else run_dir / "secrets" / "cache-site.env",
    )
