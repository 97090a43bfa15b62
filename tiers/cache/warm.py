"""Warm-up: prefetch every data file of a Delta snapshot into the cache, a few GETs at a time, with a progress bar.

The snapshot comes from delta-rs (``deltalake``), so no JVM is involved. Files already cached cost one HEAD.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tqdm import tqdm

from tierlake import catalog
from tierlake.config import S3Settings
from tierlake.errors import NotFound, StorageError
from tiers.cache.core import EdgeCache
from tiers.s3 import delta_storage_options

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class WarmReport:
    table: str
    version: int
    files: int = 0
    bytes: int = 0
    filled: int = 0
    already_cached: int = 0
    failed: list[str] = field(default_factory=list)


def table_uri(table: str, lake_bucket: str) -> str:
    """``s3://b/p`` or ``s3a://b/p`` as given (s3a becomes s3), or a path inside the lake bucket."""
    return catalog.parse_table(table, lake_bucket=lake_bucket, other_buckets=True).s3


def snapshot_files(s3: S3Settings, uri: str, version: int | None) -> tuple[int, list[tuple[str, str]]]:
    """(version, [(bucket, key), ...]) of the snapshot's data files."""
    from deltalake import DeltaTable  # noqa: PLC0415 - delta-rs loads a native library
    from deltalake.exceptions import TableNotFoundError  # noqa: PLC0415

    try:
        table = DeltaTable(uri, version=version, storage_options=delta_storage_options(s3))
    except TableNotFoundError as exc:
        raise NotFound(f"no Delta table at {uri} (endpoint {s3.endpoint}). Fix: check the table path") from exc
    except (OSError, ValueError) as exc:  # delta-rs raises these for a missing version or an unreachable store
        raise StorageError(f"opening the Delta table {uri} at version {version} failed: {exc}") from exc
    files = []
    for file_uri in table.file_uris():
        parts = urlsplit(file_uri)
        files.append((parts.netloc, parts.path.lstrip("/")))
    return int(table.version()), files


def warm(
    cache: EdgeCache,
    s3: S3Settings,
    table: str,
    *,
    version: int | None = None,
    concurrency: int = 4,
    pin: bool = False,
    progress: bool = True,
    partitions: tuple[str, ...] = (),
) -> WarmReport:
    """Fill the cache with a snapshot's files (``pin``: never evict them until unpinned).

    ``partitions``: only the files of these partitions, e.g. ``("event_date=2026-01-07",)`` (the newest day).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency = {concurrency} is invalid. Fix: at least 1 parallel GET")
    uri = table_uri(table, s3.lake_bucket)
    at_version, files = snapshot_files(s3, uri, version)
    if partitions:
        files = [(b, k) for b, k in files if any(f"/{p.strip('/')}/" in f"/{k}" for p in partitions)]
        if not files:
            raise ValueError(
                f"partitions {list(partitions)} hold no file of {uri}@{at_version}. Fix: name a partition "
                "as `tierlake table stats` lists it, e.g. event_date=2026-01-07"
            )
    report = WarmReport(table=uri, version=at_version, files=len(files))
    misses_before = cache.stats().counters["misses"]

    def one(bucket: str, key: str) -> int:
        if pin:
            cache.pin(bucket, key)
        info = cache.info(bucket, key)
        cache.get_path(bucket, key, info=info)
        return info.size

    bar = tqdm(total=len(files), unit="file", desc=f"warm {uri}@{at_version}", disable=not progress)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="cache-warm") as pool:
        futures = {pool.submit(one, bucket, key): f"s3://{bucket}/{key}" for bucket, key in files}
        for future in as_completed(futures):
            try:
                report.bytes += future.result()
            except StorageError as exc:
                report.failed.append(f"{futures[future]}: {exc}")
                logger.warning("warm-up of %s failed: %s", futures[future], exc)
            bar.update(1)
            bar.set_postfix(MB=f"{report.bytes / 1e6:.1f}")
    bar.close()
    report.filled = cache.stats().counters["misses"] - misses_before
    report.already_cached = report.files - len(report.failed) - report.filled
    return report
