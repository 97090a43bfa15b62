"""The cache's file I/O: fills written with O_DIRECT from aligned buffers (or buffered), CRC-32C checksums,
preads of published entries and the free-space probes the byte budget uses."""

from __future__ import annotations

import errno
import logging
import mmap
import os
import queue
import threading
import zlib
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from tierlake.errors import StorageError
from tiers.cache.retry import ShortBody
from tiers.store import CHUNK, Body

logger = logging.getLogger(__name__)
CHECKSUMS: dict[str, Callable[[bytes, int], int]] = {"crc32": zlib.crc32}
try:  # hardware CRC-32C (SSE4.2 / ARMv8), as S3's x-amz-checksum-crc32c and Kafka record batches use
    from crc32c import crc32c as _crc32c

    CHECKSUMS["crc32c"] = _crc32c
except ImportError:  # pragma: no cover - the project depends on crc32c; zlib keeps a bare install working
    logger.warning("the crc32c package is missing: cache fills use zlib's slower CRC-32 (pip install crc32c)")
FILL_CHECKSUM = "crc32c" if "crc32c" in CHECKSUMS else "crc32"


def download(body: Body, temp: Path, *, direct_io: bool, expected: int, sync: bool = True) -> str:
    """Stream ``body`` (``expected`` bytes) into ``temp``, checksummed on the way, fsynced once; the checksum.
    ``sync=False``: no fsync here, the caller fsyncs ``temp`` before publishing it (tiers/cache/group.py).

    One pass of 1 MiB reads (measured against 256 KiB to 4 MiB). With ``direct_io`` the file is written with
    ``O_DIRECT`` from aligned buffers by a second thread: buffered writes cost 4-8x the system CPU of the GET
    itself here (page-cache allocation and reclaim in a memory-limited cgroup), and a fill is mostly read once
    by its asker, so it should not push hot pages out. File systems without ``O_DIRECT`` get plain writes in
    this thread (a writer thread for buffered writes lost on 2 busy cores: their cost is CPU, not waiting).
    A body cut short raises ShortBody (a retry may help).
    """
    update = CHECKSUMS[FILL_CHECKSUM]
    try:
        fd, direct = open_fill(temp, direct=direct_io)
        try:
            crc, written = (copy_direct if direct else copy_buffered)(body, fd, update)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        body.close()
    if written != expected:
        raise ShortBody(f"expected {expected} bytes, the origin sent {written} before the answer ended")
    return checksum_text(crc, FILL_CHECKSUM)


_DIRECT_BUFFERS = 3  # one filling, up to two queued or being written
_ALIGN = 4096  # O_DIRECT: buffer address, file offset and length aligned to the device's block (512 or 4096)


def open_fill(temp: Path, *, direct: bool) -> tuple[int, bool]:
    """The temp file of a fill, opened ``O_DIRECT`` when asked and the file system allows it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if direct and hasattr(os, "O_DIRECT"):
        try:
            return os.open(temp, flags | os.O_DIRECT, 0o644), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: this file system has no O_DIRECT; anything else is real
                raise
            temp.unlink(missing_ok=True)
    return os.open(temp, flags, 0o644), False


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def copy_buffered(body: Body, fd: int, update: Callable[[bytes, int], int]) -> tuple[int, int]:
    crc, written = 0, 0
    while chunk := body.read(CHUNK):
        _write_all(fd, memoryview(chunk))
        crc = update(chunk, crc)
        written += len(chunk)
    return crc, written


def copy_direct(body: Body, fd: int, update: Callable[[bytes, int], int]) -> tuple[int, int]:
    """Gather the stream into aligned 1 MiB buffers; a second thread writes full ones while the next one fills.

    An O_DIRECT write waits for the device, so without the second thread the GET would stall on every write. The
    tail is padded to the alignment and the padding cut off afterwards.
    """
    buffers = [mmap.mmap(-1, CHUNK) for _ in range(_DIRECT_BUFFERS)]  # anonymous mappings are page-aligned
    free: queue.SimpleQueue[int] = queue.SimpleQueue()
    full: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
    failed: list[BaseException] = []
    for index in range(_DIRECT_BUFFERS):
        free.put(index)

    def writer() -> None:
        while (item := full.get()) is not None:
            if not failed:
                try:
                    with memoryview(buffers[item[0]]) as whole:
                        _write_direct(fd, whole[: item[1]])
                except BaseException as exc:  # handed to the filling thread, which raises it
                    failed.append(exc)
            free.put(item[0])

    thread = threading.Thread(target=writer, name="cache-fill-writer", daemon=True)
    thread.start()
    crc, written, filled, index = 0, 0, 0, free.get()
    try:
        view = memoryview(buffers[index])
        while not failed and (chunk := body.read(CHUNK - filled)):
            view[filled : filled + len(chunk)] = chunk
            crc = update(chunk, crc)
            filled += len(chunk)
            if filled == CHUNK:
                view.release()
                full.put((index, CHUNK))
                written, filled, index = written + CHUNK, 0, free.get()
                view = memoryview(buffers[index])
        if filled and not failed:
            padded = filled + (-filled % _ALIGN)
            view[filled:padded] = bytes(padded - filled)
            full.put((index, padded))
            written += filled
        view.release()
    finally:
        full.put(None)
        thread.join()
        for buffer in buffers:
            with suppress(BufferError):  # a slice kept alive by a traceback: the mapping goes with it
                buffer.close()
    if failed:
        raise failed[0]
    if written % CHUNK:
        os.ftruncate(fd, written)
    return crc, written


def _write_direct(fd: int, data: memoryview) -> None:
    """One aligned write; a short one leaves an unaligned rest O_DIRECT cannot write: the disk is full."""
    if (done := os.write(fd, data)) != len(data):
        raise OSError(errno.ENOSPC, f"short write ({done} of {len(data)} bytes): no space left on the device")


def pread(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def checksum_text(crc: int, algorithm: str = FILL_CHECKSUM) -> str:
    return f"{algorithm}:{crc:08x}"


def checksum_file(path: Path, like: str = "") -> str:
    """The checksum recorded at fill, recomputed with the algorithm named in ``like`` (a recorded checksum).

    CRC-32C or CRC-32: what S3, HDFS, Kafka and GCS use against bit rot. Entries filled before CRC-32C keep
    their CRC-32 and verify with it.
    """
    algorithm = like.partition(":")[0] if like else FILL_CHECKSUM
    if (update := CHECKSUMS.get(algorithm)) is None:
        raise StorageError(
            f"cache entry {path} was checksummed with {algorithm!r}, which this install cannot compute. "
            "Fix: pip install crc32c (a tierlake dependency)"
        )
    crc = 0
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            crc = update(chunk, crc)
    return checksum_text(crc, algorithm)


def free_bytes(folder: Path) -> int:
    disk = os.statvfs(folder)
    return disk.f_bavail * disk.f_frsize


def slack(folder: Path) -> int:
    """Room kept free for the index and its WAL: 1 % of the file system, at least 256 KiB."""
    disk = os.statvfs(folder)
    return max(256 * 1024, disk.f_blocks * disk.f_frsize // 100)
