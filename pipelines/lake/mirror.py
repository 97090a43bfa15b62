"""A second site: incremental copies of Delta tables, and of training checkpoints, to another bucket or endpoint.

A table is mirrored as a consistent snapshot of one version V of the source: first the data files of V's snapshot
that the mirror lacks, then the ``_delta_log`` entries up to V in version order, ``_last_checkpoint`` last. A reader
of the mirror therefore sees V only once every file of V is there, and an interrupted copy leaves the previous
mirrored version readable. Delta data files and commits are immutable, so "already there with the same size" means
"already copied": a second run copies only what is new.

Every copy is verified: the object is read once, hashed (SHA-256, kept as ``x-amz-meta-sha256`` on the copy), sent
with ``Content-MD5`` (the endpoint refuses a body that arrives damaged), and afterwards every file of the snapshot is
compared with its source by size and checksum (ETag, which is the MD5 of a single-part upload, else the SHA-256 kept
at copy time), and the row counts of both snapshots (delta-rs) are compared.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

import pyarrow as pa
from botocore.exceptions import ClientError

from pipelines.lake.maintenance import open_table
from tierlake import catalog
from tierlake.config import S3Settings, Secret, Settings, read_credentials_file
from tierlake.errors import ConfigError, StorageError
from tiers.cache.retry import Retry, transient, with_retries
from tiers.s3 import delta_storage_options, ensure_buckets, s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)
_LOG_VERSION = re.compile(r"^(\d{20})\.")
_T = TypeVar("_T")


def mirror_s3(settings: Settings) -> S3Settings:
    """The second site's S3 settings: ``mirror.endpoint`` (or the lake's) with its own keys if given."""
    mirror = settings.mirror
    s3 = replace(settings.s3, endpoint=mirror.endpoint or settings.s3.endpoint, lake_bucket=mirror.bucket)
    if mirror.credentials_file is not None:
        access_key, secret_key = read_credentials_file(mirror.credentials_file)
        if not access_key:
            raise ConfigError(
                f"mirror.credentials_file {mirror.credentials_file} is missing or has no access_key=/secret_key= "
                "lines. Fix: create it, or leave mirror.credentials_file empty to use the lake's keys"
            )
        s3 = replace(s3, access_key=Secret(access_key), secret_key=Secret(secret_key))
    return s3


@dataclass(frozen=True)
class _Site:
    client: S3Client
    bucket: str


def _sites(settings: Settings) -> tuple[_Site, _Site]:
    target = mirror_s3(settings)
    target_client = s3_client(target)
    ensure_buckets(target_client, (target.lake_bucket,))
    return _Site(s3_client(settings.s3), settings.s3.lake_bucket), _Site(target_client, target.lake_bucket)


def _listing(site: _Site, prefix: str) -> dict[str, dict[str, Any]]:
    return _retried(f"listing s3://{site.bucket}/{prefix}", lambda: _listing_once(site, prefix))


def _listing_once(site: _Site, prefix: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for page in site.client.get_paginator("list_objects_v2").paginate(Bucket=site.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item.get("Key", "")] = {"size": int(item.get("Size", 0)), "etag": item.get("ETag", "").strip('"')}
    return found


_RETRY = Retry()  # an endpoint restarting mid-copy (connection refused or cut, 5xx): each call is sent again
_FIX = "check that both endpoints answer, then run the mirror again: it copies only what is still missing"


def _retried(what: str, call: Callable[[], _T]) -> _T:
    return with_retries(what, call, _RETRY, fix=_FIX)


def _copy(source: _Site, target: _Site, key: str) -> tuple[int, str]:
    """Copy one object (read once, hashed, sent with Content-MD5); returns its size and SHA-256."""
    return _retried(f"mirroring s3://{source.bucket}/{key}", lambda: _copy_once(source, target, key))


def _copy_once(source: _Site, target: _Site, key: str) -> tuple[int, str]:
    try:
        body = source.client.get_object(Bucket=source.bucket, Key=key)["Body"].read()
    except ClientError as exc:
        raise StorageError(f"reading s3://{source.bucket}/{key} for the mirror failed: {exc}") from exc
    sha256 = hashlib.sha256(body).hexdigest()
    md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
    try:
        target.client.put_object(Bucket=target.bucket, Key=key, Body=body, ContentMD5=md5, Metadata={"sha256": sha256})
    except ClientError as exc:
        raise StorageError(f"writing s3://{target.bucket}/{key} on the mirror failed: {exc}") from exc
    return len(body), sha256


def _same(source: _Site, target: _Site, key: str, *, sha256: str | None = None) -> bool:
    """Is the mirror's ``key`` the source's bytes? Sizes, then ETags (MD5 of a single-part upload) or SHA-256."""
    return _retried(f"comparing s3://{source.bucket}/{key}", lambda: _same_once(source, target, key, sha256=sha256))


def _same_once(source: _Site, target: _Site, key: str, *, sha256: str | None = None) -> bool:
    src = source.client.head_object(Bucket=source.bucket, Key=key)
    try:
        dst = target.client.head_object(Bucket=target.bucket, Key=key)
    except ClientError as exc:
        if transient(exc):
            raise
        return False
    if src.get("ContentLength") != dst.get("ContentLength"):
        return False
    src_etag, dst_etag = src.get("ETag", "").strip('"'), dst.get("ETag", "").strip('"')
    if "-" not in src_etag and "-" not in dst_etag:
        return src_etag == dst_etag
    recorded = dst.get("Metadata", {}).get("sha256")
    return recorded is not None and recorded == (sha256 or recorded)


@dataclass(kw_only=True)
class TableMirrorReport:
    table: str
    version: int
    data_files: int
    data_files_copied: int
    log_files_copied: int
    bytes_copied: int
    rows_source: int
    rows_mirror: int
    mirror_version: int
    checksums_verified: int
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatched and self.rows_source == self.rows_mirror and self.mirror_version == self.version


def _log_version(name: str) -> int | None:
    match = _LOG_VERSION.match(name)
    return int(match.group(1)) if match else None


def mirror_table(settings: Settings, table: str, *, version: int | None = None) -> TableMirrorReport:
    """Copy version ``version`` (default: the latest) of ``table`` to the mirror, incrementally, then verify."""
    source, target = _sites(settings)
    snapshot = open_table(settings, table, version=version)
    pinned = snapshot.version()
    actions = pa.table(snapshot.get_add_actions(flatten=True)).to_pydict()
    files = [unquote(str(p)) for p in actions.get("path", [])]
    rows_source = sum(int(n or 0) for n in actions.get("num_records", []))
    present = _listing(target, f"{table}/")
    source_objects = _listing(source, f"{table}/")
    copied, copied_bytes, hashes = 0, 0, {}
    for path in files:  # 1. data files of the snapshot that the mirror lacks
        key = f"{table}/{path}"
        if key not in source_objects:
            raise StorageError(f"data file {key} of {table} version {pinned} is gone from the lake (vacuumed?)")
        if present.get(key, {}).get("size") == source_objects[key]["size"]:
            continue
        size, hashes[key] = _copy(source, target, key)
        copied, copied_bytes = copied + 1, copied_bytes + size
    log_keys = sorted(  # 2. the log up to the pinned version, oldest first
        (version_of, key)
        for key in source_objects
        if key.startswith(f"{table}/_delta_log/")
        and (version_of := _log_version(key.rsplit("/", 1)[1])) is not None
        and version_of <= pinned
    )
    log_copied = 0
    for _, key in log_keys:
        if present.get(key, {}).get("size") != source_objects[key]["size"]:
            copied_bytes += _copy(source, target, key)[0]
            log_copied += 1
    last_checkpoint = f"{table}/_delta_log/_last_checkpoint"  # 3. the pointer to the newest checkpoint, last
    if last_checkpoint in source_objects:
        body = _retried(
            f"reading s3://{source.bucket}/{last_checkpoint}",
            lambda: source.client.get_object(Bucket=source.bucket, Key=last_checkpoint)["Body"].read(),  # noqa: PLW0108 - the GET inside the retry
        )
        if int(json.loads(body).get("version", pinned + 1)) <= pinned:
            copied_bytes += _copy(source, target, last_checkpoint)[0]
    mismatched = [f for f in files if not _same(source, target, f"{table}/{f}", sha256=hashes.get(f"{table}/{f}"))]
    mirrored = open_table_at(settings, table)
    mirrored_rows = pa.table(mirrored.get_add_actions(flatten=True)).to_pydict().get("num_records", [])
    report = TableMirrorReport(
        table=table,
        version=pinned,
        data_files=len(files),
        data_files_copied=copied,
        log_files_copied=log_copied,
        bytes_copied=copied_bytes,
        rows_source=rows_source,
        rows_mirror=sum(int(n or 0) for n in mirrored_rows),
        mirror_version=mirrored.version(),
        checksums_verified=len(files) - len(mismatched),
        mismatched=mismatched,
    )
    logger.info("mirrored %s version %d: %d files copied", table, pinned, copied, extra={"table_version": pinned})
    return report


def open_table_at(settings: Settings, table: str) -> Any:
    """The mirrored table through delta-rs, at the newest version the mirror holds."""
    from deltalake import DeltaTable  # noqa: PLC0415

    target = mirror_s3(settings)
    return DeltaTable(catalog.TablePath(target.lake_bucket, table).s3, storage_options=delta_storage_options(target))


@dataclass(kw_only=True)
class PrefixMirrorReport:
    prefix: str
    objects: int
    copied: int
    bytes_copied: int
    checksums_verified: int
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatched


CHECKPOINT_MANIFEST = "MANIFEST.json"  # training/ writes it last: a step folder without one is unfinished
_STEP_FOLDER = re.compile(r"^(?:[^/]+/)*?\d{12}/")  # [<run>/]<step>/: training/'s layout under a prefix


def committed_checkpoint_keys(keys: Iterable[str], prefix: str) -> list[str]:
    """What to copy under a checkpoint prefix, in order. Keys in training/'s layout (``[<run>/]<step>/...``) count
    only when their step folder holds a manifest, and each step's manifest comes after its files, so the second
    site never holds a half checkpoint, even if a copy stops midway. Other keys are plain objects, copied as such."""
    keys = list(keys)
    step_of = {key: m.group(0) for key in keys if (m := _STEP_FOLDER.match(key[len(prefix) :]))}
    committed = {step_of[key] for key in step_of if key.endswith("/" + CHECKPOINT_MANIFEST)}
    plain = sorted(key for key in keys if key not in step_of)
    steps = [key for key in keys if step_of.get(key) in committed]
    last = "/" + CHECKPOINT_MANIFEST
    return plain + sorted(steps, key=lambda key: (step_of[key], key.endswith(last), key))


def mirror_prefix(settings: Settings, prefix: str) -> PrefixMirrorReport:
    """Copy every object of the committed checkpoints under ``prefix`` that the mirror lacks or holds in another
    version, manifests last (:func:`committed_checkpoint_keys`)."""
    source, target = _sites(settings)
    listing = _listing(source, prefix)
    objects = {key: listing[key] for key in committed_checkpoint_keys(listing, prefix)}
    present = _listing(target, prefix)
    copied, copied_bytes, hashes = 0, 0, {}
    for key, info in objects.items():
        there = present.get(key)
        if there is not None and there["size"] == info["size"] and _same(source, target, key):
            continue
        size, hashes[key] = _copy(source, target, key)
        copied, copied_bytes = copied + 1, copied_bytes + size
    mismatched = [key for key in sorted(objects) if not _same(source, target, key, sha256=hashes.get(key))]
    return PrefixMirrorReport(
        prefix=prefix,
        objects=len(objects),
        copied=copied,
        bytes_copied=copied_bytes,
        checksums_verified=len(objects) - len(mismatched),
        mismatched=mismatched,
    )
