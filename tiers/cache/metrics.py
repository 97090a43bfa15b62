"""Prometheus export of the cache's counters. They live in the shared index, so every process's reads count and
a scrape of any one process (or ``tierlake cache stats --prometheus``) sees the node's totals."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tiers.cache.core import EdgeCache

_HELP = {
    "hits": "reads served from the cache (including waits on another process's fill)",
    "misses": "reads that filled an entry from the origin",
    "coalesced": "reads that waited for another process's fill instead of a GET of their own",
    "bytes_hit": "bytes of entries served from the cache",
    "bytes_filled": "bytes fetched from the origin into the cache",
    "backend_gets": "GETs sent to the origin",
    "backend_heads": "HEADs sent to the origin",
    "evictions": "entries evicted",
    "bytes_evicted": "bytes evicted",
    "corrupt": "entries found corrupt or truncated and dropped",
    "stale_fills_recovered": "fills left by a dead process and cleaned up",
}


class CacheCollector(Collector):
    def __init__(self, cache: EdgeCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Metric]:
        stats = self.cache.stats()
        for name, value in sorted(stats.counters.items()):
            yield CounterMetricFamily(f"tierlake_cache_{name}", _HELP.get(name, name), value=value)
        yield GaugeMetricFamily("tierlake_cache_used_bytes", "bytes held (and reserved) by entries", stats.used_bytes)
        yield GaugeMetricFamily("tierlake_cache_capacity_bytes", "the byte budget in force", stats.capacity_bytes)
        yield GaugeMetricFamily("tierlake_cache_entries", "published entries", stats.entries)
        yield GaugeMetricFamily("tierlake_cache_hit_ratio", "hits / (hits + misses)", stats.hit_ratio)


def prometheus_text(cache: EdgeCache) -> bytes:
    """The text exposition format, for a scrape endpoint or a node-exporter textfile."""
    registry = CollectorRegistry()
    registry.register(CacheCollector(cache))
    return generate_latest(registry)
