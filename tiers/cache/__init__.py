"""The edge cache tier: a read-through, cross-process, bounded, verified cache of objects on local NVMe.

``EdgeCache`` (core), its eviction policy (``policy``: S3-FIFO), the shared index (``index``), entry locks
(``locks``), upkeep (``maintain``), Delta warm-up (``warm``), Prometheus counters (``metrics``) and the S3-speaking
site server (``site``). ``cache_from_settings`` builds one from the typed settings.
"""

from __future__ import annotations

from tierlake.config import Settings
from tierlake.config.cache import CacheOptions
from tiers.cache.core import CacheStats, EdgeCache, entry_id
from tiers.store import S3Store

__all__ = ["CacheOptions", "CacheStats", "EdgeCache", "cache_from_settings", "entry_id", "options_from_settings"]


def options_from_settings(settings: Settings) -> CacheOptions:
    """The configured cache's options (``conf/`` -> ``tierlake.config.cache``)."""
    return settings.cache.options


def cache_from_settings(settings: Settings) -> EdgeCache:
    """The node's cache in front of the configured S3 endpoint (Ceph RGW)."""
    return EdgeCache(S3Store(settings.s3), options_from_settings(settings))
