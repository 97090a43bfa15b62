"""Where a recall publishes a file, and the one streaming pass that gets it there from tape.

Each member is read from the mounted cartridge once, by a helper thread (:func:`read_ahead`) that also hashes it
(SHA-256, :func:`verified`), so the tape read and the hash run beside the write on another core; the consumer
writes what it receives and publishes only after the stream ended without an error, that is after the size and
SHA-256 matched the catalog's:

- lake (:class:`LakeTarget`): under the file's original key. A file up to ``PART_BYTES`` is one PUT of the
  verified bytes; a bigger one a multipart upload whose parts go out while the rest is still read, **completed
  only once the SHA-256 matched** (aborted otherwise). An object appears whole or not at all, and no temp file
  is written; an upload left by a killed recall is invisible under the key and aborted by the next recall of it.
- cache (:class:`CacheTarget`): only the node's edge cache: temp file, CRC-32C on the way; the stream raises
  before its end on a wrong SHA-256, which aborts the fill. Fills are published in groups (tiers/cache/group.py):
  a publisher thread fsyncs, renames and marks READY (one fsync per folder and one index transaction per group)
  while the next member is read and written; per file, an fsync in the writer and a directory fsync and three
  index transactions had held the recall at 0.43x a raw copy of the cartridge.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from tierlake.config.cache import CacheOptions
from tierlake.errors import NotFound, StorageError, TapeError
from tiers.archive.context import ArchiveContext
from tiers.store import Body, ObjectInfo, ObjectStore, S3Store, publish_atomically

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from tiers.archive.recall import RecallFile

logger = logging.getLogger(__name__)
Step = Callable[[str, str], None]
"""A hook called at each step of one file's recall (``read``, ``verified``, ``published``) with its path; tests
kill the process there. A recall into the cache also calls it with ``synced`` and ``renamed`` and the file's key,
between ``verified`` and ``published`` (tiers/cache/group.py)."""
Done = Callable[[str], None]
"""Called with where a file went once it is readable (from another thread where a target publishes in groups)."""
READ_AHEAD_CHUNKS = 16
"""Tape records (1 MiB each by default) the reading thread may hold ahead of the writer."""
PART_BYTES = 16 * 1024 * 1024
"""The multipart part size of a recall to the lake (files up to this size go in one PUT)."""
UPLOAD_THREADS = 2
"""Parts in flight at once: one being sent while the next one is read and hashed."""
STALE_UPLOAD = timedelta(hours=1)
"""An incomplete upload of a recalled key older than this was left by a killed recall: aborted."""


class ChecksumMismatch(TapeError):
    """A copy read from tape is not the archived file (size or SHA-256 differ); it is never published."""


def verified(chunks: Iterable[bytes], item: RecallFile, step: Step) -> Iterator[bytes]:
    """The member's bytes, passed on as they are read and hashed; at the end, ChecksumMismatch unless the size and
    SHA-256 are the catalog's. A target publishes only once this is exhausted without an error."""
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
        step("read", item.path)
        yield chunk
    if size != item.size or digest.hexdigest() != item.sha256:
        raise ChecksumMismatch(
            f"{item.path}: copy {item.copy} on {item.cartridge} has {size} bytes and another SHA-256"
        )
    step("verified", item.path)


_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def read_ahead(
    chunks: Iterator[bytes], depth: int = READ_AHEAD_CHUNKS, *, pool: ThreadPoolExecutor | None = None
) -> Iterator[bytes]:
    """``chunks``, produced by a helper thread up to ``depth`` ahead: the tape read and the SHA-256 of
    :func:`verified` (both release the GIL) run while the caller writes. An error of the producer (a bad
    SHA-256 included) is raised here, where the producer raised it: after the chunks before it, never before.
    ``pool``: a one-thread executor that produces every file of a recall (a thread started per file had cost
    2 ms a file on a busy machine); without it, a thread of its own."""
    handoff: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(_Failed(exc))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    if pool is not None:
        produced = pool.submit(produce)
        join: Callable[[], object] = produced.result
    else:
        thread = threading.Thread(target=produce, name="recall-read-ahead", daemon=True)
        thread.start()
        join = thread.join
    try:
        while (item := handoff.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        join()


class Target(Protocol):
    """Where a recall publishes a file, and how it tells that a file is already there. ``put`` consumes the
    :func:`verified` stream to its end before the file becomes visible, so a bad copy or a kill publishes nothing.
    ``done(where)`` runs once the file is readable: at once (lake) or later, from another thread (cache, whose
    fills are published in groups); :meth:`flush` waits for every file handed over, :meth:`close` too, then
    frees the target's thread."""

    name: str

    def present(self, bucket: str, key: str, size: int) -> bool: ...

    def put(self, item: RecallFile, chunks: Iterator[bytes], done: Done | None = None) -> str: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def _parts(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """The stream regrouped into pieces of ``size`` bytes (the last one shorter): one copy of each byte (the
    join), plus the one chunk a boundary cuts."""
    pending: list[bytes] = []
    held = 0
    for chunk in chunks:
        rest = chunk
        while rest:
            take = min(len(rest), size - held)
            piece, rest = (rest, b"") if take == len(rest) else (rest[:take], rest[take:])
            pending.append(piece)
            held += take
            if held == size:
                yield b"".join(pending)
                pending, held = [], 0
    if held:
        yield b"".join(pending)


class LakeTarget:
    """The lake: the object store, under the file's original key, without a temp file (see the module docstring).
    The HEAD of :meth:`present` is the one request a file costs besides its upload: it runs under the file's
    lock, so a second reader of the file finds it there instead of recalling it again."""

    name = "lake"

    def __init__(self, store: S3Store, client: S3Client) -> None:
        self.store = store
        self.client = client
        self._swept: set[tuple[str, str]] = set()

    def present(self, bucket: str, key: str, size: int) -> bool:
        try:
            return self.store.info(bucket, key).size == size
        except NotFound:
            return False

    def put(self, item: RecallFile, chunks: Iterator[bytes], done: Done | None = None) -> str:
        try:
            if item.size <= PART_BYTES:
                data = b"".join(chunks)  # verified: the stream ended without ChecksumMismatch
                self.client.put_object(Bucket=item.bucket, Key=item.key, Body=data)
            else:
                self._abort_stale(item.bucket, item.key)
                self._multipart(item, chunks)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"PUT {item.uri} (recalled from {item.cartridge}) failed: {exc}") from exc
        if done is not None:
            done(item.uri)
        return item.uri

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    def _multipart(self, item: RecallFile, chunks: Iterator[bytes]) -> None:
        upload = self.client.create_multipart_upload(Bucket=item.bucket, Key=item.key)["UploadId"]
        done = False
        try:
            with ThreadPoolExecutor(max_workers=UPLOAD_THREADS, thread_name_prefix="recall-upload") as pool:
                sent: list[Future[str]] = []
                for number, part in enumerate(_parts(chunks, PART_BYTES), start=1):
                    while len([f for f in sent if not f.done()]) >= UPLOAD_THREADS:  # bounded memory
                        next(f for f in sent if not f.done()).result()
                    sent.append(pool.submit(self._part, item, upload, number, part))
                etags = [f.result() for f in sent]
            parts = [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]
            self.client.complete_multipart_upload(
                Bucket=item.bucket,
                Key=item.key,
                UploadId=upload,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            )
            done = True
        finally:
            if not done:
                self.client.abort_multipart_upload(Bucket=item.bucket, Key=item.key, UploadId=upload)

    def _part(self, item: RecallFile, upload: str, number: int, data: bytes) -> str:
        answer = self.client.upload_part(
            Bucket=item.bucket, Key=item.key, UploadId=upload, PartNumber=number, Body=data
        )
        return str(answer["ETag"])

    def _abort_stale(self, bucket: str, key: str) -> None:
        """Abort incomplete uploads of ``key`` older than STALE_UPLOAD (a killed recall's; the caller holds the
        file's lock). One listing per folder and recall, not per file."""
        folder = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
        if (bucket, folder) in self._swept:
            return
        self._swept.add((bucket, folder))
        listing = self.client.list_multipart_uploads(Bucket=bucket, Prefix=folder)
        old = datetime.now(UTC) - STALE_UPLOAD
        for upload in listing.get("Uploads", []):
            if upload["Initiated"] < old:
                logger.info("aborting the upload of s3://%s/%s left by a killed recall", bucket, upload["Key"])
                self.client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


class _Stream:
    """A :class:`tiers.store.Body` over an iterator of chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._left = b""

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            return self._left + b"".join(self._chunks)
        piece = self._left or next(self._chunks, b"")
        self._left = piece[size:]
        return piece[:size]

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


class TapeOrigin:
    """The edge cache's origin during a recall: it serves the one member being recalled, from the mounted
    cartridge, and nothing else (NotFound), so the cache never asks the lake for a recalled file."""

    name = "tape"

    def __init__(self) -> None:
        self.current: tuple[RecallFile, Iterator[bytes]] | None = None

    def _member(self, bucket: str, key: str) -> tuple[RecallFile, Iterator[bytes]]:
        if self.current is None or (self.current[0].bucket, self.current[0].key) != (bucket, key):
            raise NotFound(f"s3://{bucket}/{key} is not being recalled from tape")
        return self.current

    def info(self, bucket: str, key: str) -> ObjectInfo:
        item, _ = self._member(bucket, key)
        return ObjectInfo(bucket=bucket, key=key, size=item.size, etag=item.sha256)

    def open(self, bucket: str, key: str, *, start: int = 0, end: int | None = None, etag: str | None = None) -> Body:
        item, chunks = self._member(bucket, key)
        if start != 0 or end not in (None, item.size):
            raise StorageError(f"s3://{bucket}/{key}: a recall fills whole files (asked for [{start}, {end}))")
        return _Stream(chunks)

    def open_info(self, bucket: str, key: str) -> tuple[ObjectInfo, Body]:
        return self.info(bucket, key), self.open(bucket, key)

    def cat_file(
        self, bucket: str, key: str, *, start: int = 0, end: int | None = None, etag: str | None = None
    ) -> bytes:
        return self.open(bucket, key, start=start, end=end).read()

    def _refuse(self, verb: str) -> StorageError:
        return StorageError(f"the tape origin of a recall is read-only: {verb} refused")

    def pipe_file(self, bucket: str, key: str, data: bytes) -> ObjectInfo:
        raise self._refuse("PUT")

    def put_file(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        raise self._refuse("PUT")

    def ls(self, bucket: str, prefix: str = "") -> list[ObjectInfo]:
        return []

    def rm(self, bucket: str, key: str) -> None:
        raise self._refuse("DELETE")


class CacheTarget:
    """Only the node's edge cache: each member is streamed from tape into a cache fill (CRC-32C on the way) whose
    version is the catalog's (the SHA-256 as ETag); the stream raises before its end when the SHA-256 differs,
    which aborts the fill. Fills are published in groups (tiers/cache/group.py): the next member is read and
    written while the last ones are fsynced, renamed and marked READY in one index transaction, so a file is
    readable only once durable. The cache index then remembers the version, so every reader through the edge
    cache, the node's S3-backed one included, is served the recalled file without asking the lake.
    :class:`TapeOrigin` is the cache's origin: it never asks the lake for a recalled file."""

    name = "cache"

    def __init__(self, options: CacheOptions, *, step: Step | None = None) -> None:
        from tiers.cache import EdgeCache  # noqa: PLC0415 - the cache only when used

        self.origin = TapeOrigin()
        origin: ObjectStore = self.origin
        self.cache = EdgeCache(origin, options)
        self.step = step
        self._group: Any = None

    def local_path(self, bucket: str, key: str) -> Path | None:
        """The cached file, or None when the cache holds no copy (never recalled, or evicted since)."""
        try:
            return self.cache.get_path(bucket, key)
        except (NotFound, FileNotFoundError):
            return None

    def present(self, bucket: str, key: str, size: int) -> bool:
        """Whether the cache holds a published copy of that size: one index lookup and a stat, no fill, no lock
        (a recall publishes the version it recalled as the one the cache remembers)."""
        found = self.cache.index.head_and_entry(bucket, key, float("inf"))
        if found is None or found[1] is None or found[1].state.value != "READY" or found[1].size != size:
            return False
        try:
            return self.cache.data_path(found[1].id).stat().st_size == size
        except FileNotFoundError:
            return False

    def put(self, item: RecallFile, chunks: Iterator[bytes], done: Done | None = None) -> str:
        """Write the member into the cache; ``done(where)`` runs once it is published (in the publisher's
        thread). Without ``done``, return once it is published."""
        from tiers.cache.group import GroupFill  # noqa: PLC0415

        if self._group is None:
            self._group = GroupFill(self.cache, step=self.step)
        info = ObjectInfo(bucket=item.bucket, key=item.key, size=item.size, etag=item.sha256)
        where: list[str] = []

        def published(path: Path) -> None:
            where.append(f"cache:{path}")
            if done is not None:
                done(where[0])

        self._group.put(info, _Stream(chunks), published)
        if done is None:
            self.flush()
            return where[0]
        return ""

    def flush(self) -> None:
        """Wait until every member handed to :meth:`put` is published; raise the first error."""
        if self._group is not None:
            self._group.flush()

    def close(self) -> None:
        if self._group is not None:
            group, self._group = self._group, None
            group.close()


class FolderTarget:
    """A local folder: each file under its key relative to ``prefix`` (a checkpoint restored from tape into a
    scratch folder, training/tape.py), published with :func:`tiers.store.publish_atomically` once its stream ended:
    temp file, fsync, rename, so a bad copy or a kill leaves no file under its name."""

    name = "folder"

    def __init__(self, root: Path, prefix: str) -> None:
        self.root = root
        self.prefix = prefix

    def path(self, key: str) -> Path:
        relative = key[len(self.prefix) :] if key.startswith(self.prefix) else ""
        parts = Path(relative).parts
        if not parts or Path(relative).is_absolute() or ".." in parts:
            raise StorageError(
                f"key {key!r} is not a file under {self.prefix!r}: it cannot be recalled into {self.root}. "
                "Fix: recall only the keys under the folder's prefix"
            )
        return self.root.joinpath(*parts)

    def present(self, bucket: str, key: str, size: int) -> bool:
        del bucket
        path = self.path(key)
        return path.is_file() and path.stat().st_size == size

    def put(self, item: RecallFile, chunks: Iterator[bytes], done: Done | None = None) -> str:
        path = self.path(item.key)
        publish_atomically(path, chunks)  # the verified stream raises before its end on a wrong SHA-256
        if done is not None:
            done(str(path))
        return str(path)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


def target_for(context: ArchiveContext, to: str, *, step: Step | None = None) -> Target:
    if to == "lake":
        from tiers.s3 import s3_client  # noqa: PLC0415

        return LakeTarget(S3Store(context.s3), s3_client(context.s3, sign_payload=False))
    if to == "cache":
        return CacheTarget(context.cache, step=step)
    raise StorageError(f"recall_to = {to!r} is invalid. Fix: use lake (the original keys) or cache (edge cache only)")
