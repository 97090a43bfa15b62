"""A virtual LTO cartridge in the on-disk layout of the reference LTFS implementation's ``file`` tape backend.

One directory per cartridge; one file per record, ``<P>_<B>_<T>`` (SCSI partition, block from 0, ``R`` record,
``F`` filemark, ``E`` end of data); MAM attributes in ``attr_<P>_<id hex>``. Both partitions start with the label
construct (VOL1, FM, LTFS label, FM) and end with an index construct (FM, index records, FM) before ``E``.

Writing a generation (the order is what makes a crash recoverable):

1. data partition: drop ``E``, write each file's records (``blocksize`` each, the last one short); wait until every
   record is durable; then FM, the index (generation N+1, back pointer to the previous data-partition index), FM,
   ``E``; fsync;
2. index partition: rewritten from block 4 with the same generation, back pointer to the new data index;
3. MAM: the volume change reference and both partitions' coherency information.

:meth:`VirtualCartridge.recover` brings a cartridge left by a killed writer back to its last consistent index:
the data partition is cut after the last complete index construct (records of the interrupted generation are
dropped, as ``ltfsck`` rolls back) and the index partition is rewritten from it when it lags.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from tierlake.errors import TapeError
from tiers.tape import ltfs_format as fmt

logger = logging.getLogger(__name__)
IP, DP = 0, 1
DATA_START = fmt.FIRST_INDEX_BLOCK - 1  # block 4: after the label construct


@dataclass(frozen=True, kw_only=True)
class FileToWrite:
    """A file for the next generation: its name on the volume, its bytes (chunks) and its extended attributes.

    ``sha256``: when the caller already hashes the stream (one hash for several copies), a callable that returns
    the hex digest once the chunks are exhausted; the volume then does not hash again (verify-after-write reads
    the copy back and compares).
    """

    name: str
    chunks: Iterable[bytes | bytearray]
    xattrs: tuple[tuple[str, str], ...] = ()
    sha256: Callable[[], str] | None = None


def _write_file(path: Path, data: bytes | bytearray) -> None:
    """Mode 0644: the reference backend opens every record read-write, so the checking user must own them."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


SYNC_WORKERS = 8
"""fdatasync calls in flight at once. One file per record means one flush per record; issued one after another
each waits for its own journal commit, issued together the file system commits them as a group (ext4, xfs)."""


def _fdatasync(path: Path) -> None:
    """Data and size of a new record (fdatasync covers the metadata needed to read it back; the directory entry is
    made durable by the directory's own fsync before the index)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _hexdigest(item: FileToWrite, digest: hashlib._Hash | None) -> str:
    if digest is not None:
        return digest.hexdigest()
    if item.sha256 is None:
        raise TapeError(f"{item.name}: no SHA-256 for the index")
    return item.sha256()


class VirtualCartridge:
    """One cartridge directory. Not thread-safe: the library hands a cartridge to one drive (one writer) at a time."""

    def __init__(self, path: Path, *, capacity_bytes: int, mb_per_s: float = 0.0) -> None:
        self.path = path
        self.capacity_bytes = capacity_bytes
        self._mb_per_s = mb_per_s
        self._blocksize: int | None = None

    # -- records ------------------------------------------------------------------------------------------

    def _record(self, part: int, block: int, kind: str) -> Path:
        return self.path / f"{part}_{block}_{kind}"

    def kind(self, part: int, block: int) -> str | None:
        """What the backend finds at (part, block): it looks for E, then F, then R."""
        for kind in ("E", "F", "R"):
            if self._record(part, block, kind).exists():
                return kind
        return None

    def _put(self, part: int, block: int, kind: str, data: bytes = b"") -> None:
        for other in {"R", "F", "E"} - {kind}:
            self._record(part, block, other).unlink(missing_ok=True)
        _write_file(self._record(part, block, kind), data)

    def _put_new(self, part: int, block: int, data: bytes | bytearray) -> Path:
        """A data record past the end of data, where no other file exists for the block."""
        path = self._record(part, block, "R")
        _write_file(path, data)
        return path

    def read_record(self, part: int, block: int) -> bytes:
        kind = self.kind(part, block)
        if kind != "R":
            raise TapeError(f"{self.path.name}: no data record at partition {part} block {block} (found {kind})")
        return self._record(part, block, "R").read_bytes()

    def eod(self, part: int) -> int:
        """The block of ``E`` on a partition; TapeError when the partition has no end of data."""
        block = 0
        while (kind := self.kind(part, block)) in ("R", "F"):
            block += 1
        if kind != "E":
            raise TapeError(f"{self.path.name}: EOD of partition {part} is missing after block {block}")
        return block

    def _sync(self, part: int, first: int, last: int) -> None:
        for block in range(first, last + 1):
            kind = self.kind(part, block)
            if kind is None:
                continue
            fd = os.open(self._record(part, block, kind), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._sync_dir()

    def _sync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- format -------------------------------------------------------------------------------------------

    def format(self, *, barcode: str, volume_name: str, blocksize: int, pool: str = "") -> fmt.Index:
        """mkltfs: labels and a generation-1 index on both partitions, MAM attributes."""
        if self.path.exists() and any(self.path.iterdir()):
            raise TapeError(f"{self.path}: not empty; a cartridge is formatted once (erase it first)")
        self.path.mkdir(parents=True, exist_ok=True)
        now = fmt.ltfs_time()
        volume_uuid = str(uuid.uuid4())
        for part in (IP, DP):
            label = fmt.Label(volume_uuid=volume_uuid, format_time=now, location=fmt.LETTER[part], blocksize=blocksize)
            self._put(part, 0, "R", fmt.vol1_label(barcode))
            self._put(part, 1, "F")
            self._put(part, 2, "R", label.to_xml())
            self._put(part, 3, "F")
        empty = fmt.Index(
            volume_uuid=volume_uuid,
            generation=1,
            update_time=now,
            location=fmt.Pointer(partition=fmt.DATA_PARTITION, block=fmt.FIRST_INDEX_BLOCK),
            previous=None,
            volume_name=volume_name,
            root_created=now,
        )
        self._write_index(DP, DATA_START, empty, blocksize)
        self._sync(DP, 0, DATA_START + 3)
        self._write_ip(empty, blocksize)
        self._write_mam(empty, barcode=barcode, vcr=1, pool=pool)
        return empty

    # -- reading the volume -------------------------------------------------------------------------------

    def labels(self) -> tuple[str, fmt.Label]:
        """(barcode, label) after checking that both partitions carry the same VOL1 and agreeing labels."""
        barcodes = {fmt.parse_vol1(self.read_record(part, 0)) for part in (IP, DP)}
        if len(barcodes) != 1:
            raise TapeError(f"{self.path.name}: the VOL1 labels of the two partitions differ: {sorted(barcodes)}")
        ip, dp = (fmt.parse_label(self.read_record(part, 2)) for part in (IP, DP))
        if not ip.same_volume(dp) or (ip.location, dp.location) != (fmt.INDEX_PARTITION, fmt.DATA_PARTITION):
            raise TapeError(f"{self.path.name}: the two LTFS labels disagree")
        return barcodes.pop(), dp

    def _index_at(self, part: int, block: int) -> fmt.Index:
        """Read an index construct's records from ``block`` until the trailing filemark."""
        chunks = []
        while self.kind(part, block) == "R":
            chunks.append(self.read_record(part, block))
            block += 1
        return fmt.parse_index(b"".join(chunks))

    def last_index(self, part: int = DP) -> fmt.Index:
        """The index just before ``E`` on a partition (``FM, index, FM, E``), with its self pointer checked."""
        eod = self.eod(part)
        if eod <= DATA_START or self.kind(part, eod - 1) != "F":
            raise TapeError(f"{self.path.name}: partition {part} does not end with an index construct")
        start = eod - 2
        while start > DATA_START and self.kind(part, start - 1) == "R":
            start -= 1
        if self.kind(part, start - 1) != "F":
            raise TapeError(f"{self.path.name}: partition {part} index at block {start} lacks its leading FM")
        index = self._index_at(part, start)
        if index.location != fmt.Pointer(partition=fmt.LETTER[part], block=start):
            raise TapeError(f"{self.path.name}: index self pointer {index.location} is not {fmt.LETTER[part]}:{start}")
        return index

    def index(self) -> fmt.Index:
        """The current index: the data partition's last one (the authoritative copy)."""
        return self.last_index(DP)

    def read_file(self, entry: fmt.IndexFile, *, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The bytes ``[start, start+length)`` of a file, from its extents."""
        blocksize = self.blocksize
        end = entry.length if length is None else min(entry.length, start + length)
        for extent in entry.extents:
            lo = max(start, extent.file_offset)
            hi = min(end, extent.file_offset + extent.byte_count)
            if lo >= hi:
                continue
            offset = extent.byte_offset + (lo - extent.file_offset)
            block = extent.start_block + offset // blocksize
            skip = offset % blocksize
            left = hi - lo
            part = fmt.SCSI_PARTITION[extent.partition]
            while left > 0:
                record = self.read_record(part, block)
                piece = record[skip : skip + left]
                if not piece:
                    raise TapeError(f"{self.path.name}: extent of {entry.name} runs past record {part}_{block}")
                yield piece
                left -= len(piece)
                skip = 0
                block += 1

    @property
    def blocksize(self) -> int:
        if self._blocksize is None:
            self._blocksize = self.labels()[1].blocksize
        return self._blocksize

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.glob(f"{DP}_*_R"))

    # -- writing a generation -----------------------------------------------------------------------------

    def append(self, files: list[FileToWrite]) -> fmt.Index:
        """Write files and a new index generation. Returns the new index (its files carry their extents)."""
        barcode, label = self.labels()
        previous = self.last_index(DP)
        block = self.eod(DP)
        self._record(DP, block, "E").unlink()
        self._drop_after(DP, block)  # leftovers of an earlier interrupted generation
        # Records are flushed by helper threads while the next ones are written (many at once, so the file system
        # groups them into few journal commits); the index is written only once all of them are durable.
        self._syncer = ThreadPoolExecutor(max_workers=SYNC_WORKERS, thread_name_prefix="tape-fsync")
        self._synced: list[Future[None]] = []
        try:
            return self._append(files, barcode=barcode, blocksize=label.blocksize, previous=previous, block=block)
        finally:
            self._syncer.shutdown(wait=True)

    def _append(
        self, files: list[FileToWrite], *, barcode: str, blocksize: int, previous: fmt.Index, block: int
    ) -> fmt.Index:
        written = 0
        uid = previous.highest_file_uid
        entries = []
        digests: list[tuple[FileToWrite, hashlib._Hash | None]] = []
        started = time.monotonic()
        for item in files:
            uid += 1
            now = fmt.ltfs_time()
            first, length = block, 0
            digest = None if item.sha256 is not None else hashlib.sha256()
            buffer = bytearray()
            for chunk in item.chunks:
                if not buffer and len(chunk) == blocksize:  # the common case: no copy
                    block, length = self._data_record(block, chunk, digest, length)
                    written += blocksize
                    self._throttle(started, written)
                    continue
                buffer += chunk
                while len(buffer) >= blocksize:
                    record = bytes(buffer[:blocksize])
                    del buffer[:blocksize]
                    block, length = self._data_record(block, record, digest, length)
                    written += len(record)
                    self._throttle(started, written)
            if buffer:
                block, length = self._data_record(block, bytes(buffer), digest, length)
                written += len(buffer)
            extents = (
                (
                    fmt.Extent(
                        file_offset=0, partition=fmt.DATA_PARTITION, start_block=first, byte_offset=0, byte_count=length
                    ),
                )
                if length
                else ()
            )
            xattrs = tuple((k, v) for k, v in item.xattrs if k != "ltfs.hash.sha256sum")
            entries.append(
                fmt.IndexFile(
                    name=item.name,
                    length=length,
                    uid=uid,
                    created=now,
                    modified=now,
                    extents=extents,
                    xattrs=xattrs,
                )
            )
            digests.append((item, digest))
        # Digests are asked for only now: a hash computed beside the writes (FileToWrite.sha256) may still be
        # catching up, and waiting for it per file would stall the next file's records.
        entries = [
            replace(entry, xattrs=(*entry.xattrs, ("ltfs.hash.sha256sum", _hexdigest(item, digest))))
            for entry, (item, digest) in zip(entries, digests, strict=True)
        ]
        kept = [f for f in previous.files if f.name not in {e.name for e in entries}]
        index = replace(
            previous,
            generation=previous.generation + 1,
            update_time=fmt.ltfs_time(),
            location=fmt.Pointer(partition=fmt.DATA_PARTITION, block=block + 1),
            previous=previous.location,
            files=(*kept, *entries),
        )
        for future in self._synced:
            future.result()
        self._sync_dir()  # the records' directory entries, before the index that names their blocks
        self._write_index(DP, block, index, blocksize)
        self._sync(DP, block, block + 2 + len(index.to_xml()) // blocksize + 1)
        self._write_ip(index, blocksize)
        self._write_mam(index, barcode=barcode, vcr=self._vcr() + 1)
        return index

    def _data_record(
        self, block: int, record: bytes | bytearray, digest: hashlib._Hash | None, length: int
    ) -> tuple[int, int]:
        self._synced.append(self._syncer.submit(_fdatasync, self._put_new(DP, block, record)))
        if digest is not None:
            digest.update(record)
        return block + 1, length + len(record)

    def _throttle(self, started: float, written: int) -> None:
        """Emulated drive speed (``mb_per_s`` > 0): a writer that outruns it sleeps."""
        if self._mb_per_s > 0:
            ahead = written / (self._mb_per_s * 1e6) - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)

    def _write_index(self, part: int, block: int, index: fmt.Index, blocksize: int) -> int:
        """FM, index records, FM, E from ``block``; returns the block of E. Leftover blocks past E are removed."""
        data = index.to_xml()
        self._put(part, block, "F")
        block += 1
        for offset in range(0, len(data), blocksize):
            self._put(part, block, "R", data[offset : offset + blocksize])
            block += 1
        self._put(part, block, "F")
        self._put(part, block + 1, "E")
        self._drop_after(part, block + 1)
        return block + 1

    def _drop_after(self, part: int, eod: int) -> None:
        for path in self.path.glob(f"{part}_*_*"):
            if int(path.name.split("_")[1]) > eod:
                path.unlink()

    def _write_ip(self, index: fmt.Index, blocksize: int) -> None:
        ip_index = replace(
            index,
            location=fmt.Pointer(partition=fmt.INDEX_PARTITION, block=fmt.FIRST_INDEX_BLOCK),
            previous=index.location,
        )
        eod = self._write_index(IP, DATA_START, ip_index, blocksize)
        self._sync(IP, DATA_START, eod)

    # -- MAM ----------------------------------------------------------------------------------------------

    def _vcr(self) -> int:
        path = self.path / f"attr_0_{fmt.MAM_VCR:x}"
        try:
            return int.from_bytes(path.read_bytes()[5:9], "big")
        except FileNotFoundError:
            return 0

    def _attr(self, part: int, attribute: int, data: bytes) -> None:
        path = self.path / f"attr_{part}_{attribute:x}"
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_bytes(data)
        os.replace(temp, path)

    def _write_mam(self, index: fmt.Index, *, barcode: str, vcr: int, pool: str | None = None) -> None:
        self._attr(IP, fmt.MAM_VCR, fmt.mam_attribute(fmt.MAM_VCR, vcr.to_bytes(4, "big")))
        for part in (IP, DP):
            block = fmt.FIRST_INDEX_BLOCK if part == IP else index.location.block
            vci = fmt.vci(vcr=vcr, generation=index.generation, block=block, volume_uuid=index.volume_uuid)
            self._attr(part, fmt.MAM_VCI, vci)
        if pool is None:
            return
        text = {
            fmt.MAM_VENDOR: (fmt.padded("TIERLAKE", 8), fmt.MAM_ASCII),
            fmt.MAM_APP_NAME: (fmt.padded("tierlake", 32), fmt.MAM_ASCII),
            fmt.MAM_APP_VERSION: (fmt.padded("0.1.0", 8), fmt.MAM_ASCII),
            fmt.MAM_USER_LABEL: (index.volume_name.encode()[:160].ljust(160, b"\0"), fmt.MAM_TEXT),
            fmt.MAM_BARCODE: (fmt.padded(barcode, 32), fmt.MAM_ASCII),
            fmt.MAM_MEDIA_POOL: (pool.encode()[:160].ljust(160, b"\0"), fmt.MAM_TEXT),
            fmt.MAM_FORMAT_VERSION: (fmt.padded(fmt.FORMAT_VERSION, 16), fmt.MAM_ASCII),
            fmt.MAM_VOLUME_LOCK: (b"\0", fmt.MAM_BINARY),
        }
        for attribute, (value, kind) in text.items():
            self._attr(IP, attribute, fmt.mam_attribute(attribute, value, kind=kind))

    # -- recovery -----------------------------------------------------------------------------------------

    def consistent(self) -> bool:
        """Both partitions end in an index construct, and the IP index points at the last DP index."""
        try:
            dp, ip = self.last_index(DP), self.last_index(IP)
        except TapeError:
            return False
        return ip.generation == dp.generation and ip.previous == dp.location

    def recover(self) -> fmt.Index | None:
        """Roll an interrupted cartridge back to its last complete data-partition index. None if it was fine."""
        if self.consistent():
            return None
        _, label = self.labels()
        blocks = []
        block = 0
        while (kind := self.kind(DP, block)) is not None:
            blocks.append(kind)
            if kind == "E":
                break
            block += 1
        for trailing in range(len(blocks) - 1, DATA_START, -1):
            if blocks[trailing] != "F" or blocks[trailing - 1] != "R":
                continue
            start = trailing - 1
            while blocks[start - 1] == "R":
                start -= 1
            if blocks[start - 1] != "F":
                continue
            try:
                index = self._index_at(DP, start)
            except TapeError:
                continue
            if index.location != fmt.Pointer(partition=fmt.DATA_PARTITION, block=start):
                continue
            self._put(DP, trailing + 1, "E")
            self._drop_after(DP, trailing + 1)
            self._sync(DP, trailing, trailing + 1)
            self._write_ip(index, label.blocksize)
            self._write_mam(index, barcode=fmt.parse_vol1(self.read_record(DP, 0)), vcr=self._vcr() + 1)
            logger.warning(
                "cartridge %s recovered to index generation %d at b:%d",
                self.path.name,
                index.generation,
                start,
                extra={"cartridge": self.path.name},
            )
            return index
        raise TapeError(f"{self.path.name}: no complete index on the data partition; the cartridge needs reformatting")
