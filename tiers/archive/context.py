"""What the archive tier reads of the configuration: its own section, the S3 endpoint and the node's edge cache.

The entry point (CLI, DAG task, bench, test) builds one :class:`ArchiveContext` from the settings it loaded and
passes it down, so the archive never sees (or depends on) the whole ``tierlake.config.Settings``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tierlake.config import ArchiveSettings, S3Settings
from tierlake.config.cache import CacheOptions


@dataclass(frozen=True, kw_only=True)
class ArchiveContext:
    """The archive's section, the lake's S3 endpoint (staging reads, restores, purges) and the edge cache's options
    (cold-by-access reads its index; restores and recalls ``to="cache"`` fill it)."""

    archive: ArchiveSettings
    s3: S3Settings
    cache: CacheOptions

    @property
    def cache_index(self) -> Path:
        """The edge cache's index, whose last-read times decide ``cold_by: access``."""
        return self.cache.directory / "index.sqlite"
