"""The object-store tier: one small protocol with fsspec-like verbs, and two implementations.

- :class:`S3Store`: Ceph RGW (or any S3) through boto3. boto3 won a measurement against
  ``pyarrow.fs.S3FileSystem`` on this stack (``bench/cache.py`` reports both, ``figures.store_*``) and it is the
  only one of the two that exposes the ETag and sends ``If-Match`` on ranged GETs, which the cache needs so that a
  fill never mixes bytes of two versions of an object.
- :class:`LocalStore`: a directory laid out as ``<root>/<bucket>/<key>``; the ETag is derived from size, mtime and
  inode, and writes are atomic (temp file, fsync, ``os.replace``, fsync of the directory).

``STORES`` maps a scheme to its implementation (a table, not an if-chain). Ranges are half-open: ``[start, end)``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

from botocore.exceptions import BotoCoreError, ClientError

from tierlake.config import S3Settings
from tierlake.errors import NotFound, StorageError
from tiers.s3 import s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)
CHUNK = 1024 * 1024


class ObjectChanged(StorageError):
    """The object's ETag is no longer the one the caller named: it was replaced in between (re-read its info)."""


class Body(Protocol):
    """A readable stream of an object's bytes; close it when done (``contextlib.closing``)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class ObjectInfo:
    """What identifies one version of an object: the cache keys entries by bucket, key, ETag and size."""

    bucket: str
    key: str
    size: int
    etag: str
    last_modified: float = 0.0


@runtime_checkable
class ObjectStore(Protocol):
    """The object-store tier. ``etag`` on reads means "only this version": a different one raises ObjectChanged."""

    name: str

    def info(self, bucket: str, key: str) -> ObjectInfo: ...

    def open(
        self, bucket: str, key: str, *, start: int = 0, end: int | None = None, etag: str | None = None
    ) -> Body: ...

    def open_info(self, bucket: str, key: str) -> tuple[ObjectInfo, Body]:
        """The whole current object in one request, and which version it is (no HEAD first)."""
        ...

    def cat_file(
        self, bucket: str, key: str, *, start: int = 0, end: int | None = None, etag: str | None = None
    ) -> bytes: ...

    def pipe_file(self, bucket: str, key: str, data: bytes) -> ObjectInfo: ...

    def put_file(self, bucket: str, key: str, path: Path) -> ObjectInfo: ...

    def ls(self, bucket: str, prefix: str = "") -> list[ObjectInfo]: ...

    def rm(self, bucket: str, key: str) -> None: ...


def _check_range(start: int, end: int | None) -> None:
    if start < 0 or (end is not None and end < start):
        raise ValueError(f"byte range [{start}, {end}) is invalid: need 0 <= start <= end")


# ---------------------------------------------------------------------------------------------------------
# S3 (boto3)


class S3Store:
    """Ceph RGW / S3 through one boto3 client (thread-safe; dropped when pickled for DataLoader workers)."""

    name = "s3"

    def __init__(self, s3: S3Settings, *, client: S3Client | None = None) -> None:
        self._settings = s3
        self._client = client

    @property
    def client(self) -> S3Client:
        if self._client is None:
            self._client = s3_client(self._settings)
        return self._client

    def __getstate__(self) -> dict[str, object]:
        return {"_settings": self._settings, "_client": None}

    def _error(self, exc: Exception, verb: str, bucket: str, key: str) -> StorageError:
        where = f"s3://{bucket}/{key}"
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", "?"))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket") or status == 404:
                return NotFound(f"{verb} {where}: no such object (at {self._settings.endpoint})")
            if code in ("PreconditionFailed", "412") or status == 412:
                return ObjectChanged(f"{verb} {where}: the object was replaced (ETag changed); read its info again")
            return StorageError(f"{verb} {where} failed with {code} (HTTP {status}) at {self._settings.endpoint}")
        return StorageError(f"{verb} {where} failed: {exc} (endpoint {self._settings.endpoint})")

    def info(self, bucket: str, key: str) -> ObjectInfo:
        try:
            head = self.client.head_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "HEAD", bucket, key) from exc
        modified = head.get("LastModified")
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size=int(head["ContentLength"]),
            etag=str(head["ETag"]).strip('"'),
            last_modified=modified.timestamp() if modified else 0.0,
        )

    def open(self, bucket: str, key: str, *, start: int = 0, end: int | None = None, etag: str | None = None) -> Body:
        """A streaming body for ``[start, end)``. One GET; with ``etag``, sent as If-Match."""
        _check_range(start, end)
        kwargs: dict[str, str] = {}
        if start or end is not None:
            if end is not None and end == start:
                return _EmptyBody()
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        if etag:
            kwargs["IfMatch"] = f'"{etag}"'
        try:
            response = self.client.get_object(Bucket=bucket, Key=key, **kwargs)  # type: ignore[arg-type]
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "GET", bucket, key) from exc
        body: Body = response["Body"]
        return body

    def open_info(self, bucket: str, key: str) -> tuple[ObjectInfo, Body]:
        try:
            response = self.client.get_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "GET", bucket, key) from exc
        modified = response.get("LastModified")
        info = ObjectInfo(
            bucket=bucket,
            key=key,
            size=int(response["ContentLength"]),
            etag=str(response["ETag"]).strip('"'),
            last_modified=modified.timestamp() if modified else 0.0,
        )
        body: Body = response["Body"]
        return info, body

    def cat_file(
        self, bucket: str, key: str, *, start: int = 0, end: int | None = None, etag: str | None = None
    ) -> bytes:
        body = self.open(bucket, key, start=start, end=end, etag=etag)
        try:
            return body.read()
        except (BotoCoreError, OSError) as exc:
            raise self._error(exc, "GET", bucket, key) from exc
        finally:
            body.close()

    def pipe_file(self, bucket: str, key: str, data: bytes) -> ObjectInfo:
        try:
            put = self.client.put_object(Bucket=bucket, Key=key, Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "PUT", bucket, key) from exc
        return ObjectInfo(bucket=bucket, key=key, size=len(data), etag=str(put["ETag"]).strip('"'))

    def put_file(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        try:
            self.client.upload_file(str(path), bucket, key)
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self._error(exc, "PUT", bucket, key) from exc
        return self.info(bucket, key)

    def ls(self, bucket: str, prefix: str = "") -> list[ObjectInfo]:
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    modified = item.get("LastModified")
                    found.append(
                        ObjectInfo(
                            bucket=bucket,
                            key=item["Key"],
                            size=int(item["Size"]),
                            etag=str(item["ETag"]).strip('"'),
                            last_modified=modified.timestamp() if modified else 0.0,
                        )
                    )
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "LIST", bucket, prefix) from exc
        return found

    def rm(self, bucket: str, key: str) -> None:
        try:
            self.client.delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "DELETE", bucket, key) from exc


class _EmptyBody:
    """The body of an empty range (S3 has no way to ask for zero bytes)."""

    def read(self, size: int = -1, /) -> bytes:
        return b""

    def close(self) -> None:
        return None


# ---------------------------------------------------------------------------------------------------------
# Local directory


def publish_atomically(final: Path, chunks: Iterator[bytes] | bytes) -> int:
    """Write to a temp file beside ``final``, fsync, ``os.replace``, fsync the directory. Returns bytes written."""
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    temp = Path(temp_name)
    written = 0
    try:
        with os.fdopen(handle, "wb") as out:
            for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
                out.write(chunk)
                written += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, final)
        fsync_dir(final.parent)
    finally:
        temp.unlink(missing_ok=True)
    return written


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _local_etag(stat: os.stat_result) -> str:
    """Like nginx's ETag: changes whenever the file is rewritten (a new inode after os.replace), costs no read."""
    return f"{stat.st_size:x}-{stat.st_mtime_ns:x}-{stat.st_ino:x}"


class LocalStore:
    """``<root>/<bucket>/<key>`` on a local (or mounted) file system."""

    name = "file"

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, bucket: str, key: str) -> Path:
        if not bucket or "/" in bucket or bucket in (".", ".."):
            raise ValueError(f"bucket {bucket!r} is invalid: one non-empty path segment")
        parts = key.split("/")
        if not key or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"key {key!r} is invalid: no empty, '.' or '..' segments")
        return self.root / bucket / key

    def _info(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        try:
            stat = path.stat()
        except FileNotFoundError as exc:
            raise NotFound(f"file://{bucket}/{key}: no such object under {self.root}") from exc
        if not path.is_file():
            raise NotFound(f"file://{bucket}/{key}: not an object (a directory) under {self.root}")
        etag = _local_etag(stat)
        return ObjectInfo(bucket=bucket, key=key, size=stat.st_size, etag=etag, last_modified=stat.st_mtime)

    def info(self, bucket: str, key: str) -> ObjectInfo:
        return self._info(bucket, key, self._path(bucket, key))

    def open(self, bucket: str, key: str, *, start: int = 0, end: int | None = None, etag: str | None = None) -> Body:
        _check_range(start, end)
        path = self._path(bucket, key)
        try:
            handle = path.open("rb")
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise NotFound(f"file://{bucket}/{key}: no such object under {self.root}") from exc
        if etag is not None and self._info(bucket, key, path).etag != etag:
            handle.close()
            raise ObjectChanged(f"file://{bucket}/{key}: the object was replaced (ETag changed)")
        handle.seek(start)
        return _Window(handle, None if end is None else end - start)

    def open_info(self, bucket: str, key: str) -> tuple[ObjectInfo, Body]:
        path = self._path(bucket, key)
        try:
            handle = path.open("rb")
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise NotFound(f"file://{bucket}/{key}: no such object under {self.root}") from exc
        # The open handle keeps reading the file it opened, even if a writer replaces the path meanwhile; its
        # fstat (not a second stat of the path) names that same version.
        stat = os.fstat(handle.fileno())
        tag = _local_etag(stat)
        return ObjectInfo(bucket=bucket, key=key, size=stat.st_size, etag=tag, last_modified=stat.st_mtime), _Window(
            handle, None
        )

    def cat_file(
        self, bucket: str, key: str, *, start: int = 0, end: int | None = None, etag: str | None = None
    ) -> bytes:
        body = self.open(bucket, key, start=start, end=end, etag=etag)
        try:
            return body.read()
        finally:
            body.close()

    def pipe_file(self, bucket: str, key: str, data: bytes) -> ObjectInfo:
        path = self._path(bucket, key)
        try:
            publish_atomically(path, data)
        except OSError as exc:
            raise StorageError(f"writing file://{bucket}/{key} under {self.root} failed: {exc}") from exc
        return self.info(bucket, key)

    def put_file(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        def chunks() -> Iterator[bytes]:
            with path.open("rb") as source:
                while chunk := source.read(CHUNK):
                    yield chunk

        try:
            publish_atomically(self._path(bucket, key), chunks())
        except OSError as exc:
            raise StorageError(f"uploading {path} to file://{bucket}/{key} failed: {exc}") from exc
        return self.info(bucket, key)

    def ls(self, bucket: str, prefix: str = "") -> list[ObjectInfo]:
        base = self.root / bucket
        if not base.is_dir():
            raise NotFound(f"file://{bucket}: no such bucket under {self.root}")
        found = []
        for path in sorted(base.rglob("*")):
            key = path.relative_to(base).as_posix()
            if path.is_file() and key.startswith(prefix) and not path.name.endswith(".tmp"):
                found.append(self._info(bucket, key, path))
        return found

    def rm(self, bucket: str, key: str) -> None:
        self._path(bucket, key).unlink(missing_ok=True)


class _Window:
    """A read-only view of ``length`` bytes of an open file from its current position (None: to the end)."""

    def __init__(self, handle: BinaryIO, length: int | None) -> None:
        self._handle = handle
        self._left = length

    def read(self, size: int = -1, /) -> bytes:
        if self._left is None:
            return self._handle.read(size)
        want = self._left if size < 0 else min(size, self._left)
        data = self._handle.read(want)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._handle.close()


STORES: dict[str, type[S3Store] | type[LocalStore]] = {"s3": S3Store, "file": LocalStore}
