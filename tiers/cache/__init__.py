"""The edge cache tier: a read-through, cross-process, bounded, verified cache of objects on local NVMe.

``EdgeCache`` (core), its eviction policy (``policy``: S3-FIFO), the shared index (``index``), entry locks
(``locks``), upkeep (``maintain``), Delta warm-up (``warm``), Prometheus counters (``metrics``) and the S3-speaking
site server (``site``). ``cache_from_settings`` builds one from its own settings section and the S3 endpoint's.
"""

from __future__ import annotations

from tierlake.config import CacheSettings, S3Settings
from tierlake.config.cache import CacheOptions
from tiers.cache.core import CacheStats, EdgeCache, entry_id
from tiers.store import S3Store

__all__ = ["CacheOptions", "CacheStats", "EdgeCache", "cache_from_settings", "entry_id", "options_from_settings"]


def options_from_settings(cache: CacheSettings) -> CacheOptions:
    """The configured cache's options (``conf/`` -> ``tierlake.config.cache``)."""
    return cache.options


def cache_from_settings(options: CacheOptions, s3: S3Settings) -> EdgeCache:
    """The node's cache in front of the configured S3 endpoint (Ceph RGW); the tier takes only its own options and
    the origin's endpoint, never the whole ``Settings``."""
    return EdgeCache(S3Store(s3), options)
