"""Settings of the edge cache (tiers/cache): where it lives, its byte budget, what is immutable, its site server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tierlake.config.values import Values, port, positive


@dataclass(frozen=True, kw_only=True)
class CacheSettings:
    """The edge cache (tiers/cache): where, how big, and its site server."""

    directory: Path
    max_bytes: int
    disk_fraction: float
    block_bytes: int
    revalidate_s: float
    immutable_patterns: tuple[str, ...]
    direct_io: bool
    fill_timeout_s: float
    warm_concurrency: int
    site_host: str
    site_port: int
    site_credentials_file: Path


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
        check=lambda globs: next(
            (f"{g!r} is not a glob" for g in globs if not isinstance(g, str) or not g.removeprefix("!")), None
        ),
    )
    return CacheSettings(
        directory=(root / folder) if folder else run_dir / "edge-cache",
        max_bytes=values.get("cache.max_bytes", int, check=positive, fix="a byte budget, e.g. 10737418240"),
        disk_fraction=disk_fraction,
        block_bytes=block_bytes,
        revalidate_s=revalidate_s,
        immutable_patterns=tuple(immutable),
        direct_io=values.get("cache.direct_io", bool, fix="true (O_DIRECT fills) or false (page-cache writes)"),
        fill_timeout_s=fill_timeout_s,
        warm_concurrency=values.get("cache.warm_concurrency", int, check=positive, fix="parallel GETs, e.g. 4"),
        site_host=values.get("cache.site_host", str, fix="the address to listen on, e.g. 0.0.0.0 or 127.0.0.1"),
        site_port=values.get("cache.site_port", int, check=port, fix="a free port, e.g. 7680"),
        site_credentials_file=(root / site_keys) if site_keys else run_dir / "secrets" / "cache-site.env",
    )
