"""A virtual LTO cartridge in the on-disk layout of the reference LTFS implementation's ``file`` tape backend.

One directory per cartridge; one file per record, ``<P>_<B>_<T>`` (SCSI partition, block from 0, ``R`` record,
``F`` filemark, ``E`` end of data); MAM attributes in ``attr_<P>_<id hex>``. Both partitions start with the label
construct (VOL1, FM, LTFS label, FM) and end with an index construct (FM, index records, FM) before ``E``.

Writing a generation (the order is what makes a crash recoverable; docs/tape.md has the table):

0. every file name is checked (tiers/tape/names.py) before anything is written;
1. data partition: drop ``E``, write each file's records (``blocksize`` each, the last one short); wait until every
   record is durable; then FM, the index (generation N+1, back pointer to the previous data-partition index), FM,
   ``E``, each fsynced;
2. index partition: its leading FM removed first, then rewritten from block 5 with the same generation (back
   pointer to the new data index), the FM re-created last (see :meth:`VirtualCartridge._write_ip`);
3. MAM: the volume change reference, the index partition's VCI, and last the data partition's VCI: the commit
   point of the append.

Every change goes through :class:`tiers.tape.syscalls.Syscalls`, whose hook lets a test kill the writer at any call.
:meth:`VirtualCartridge.recover` brings a cartridge left by a killed writer back to its committed generation (the
one the data partition's VCI names): the data partition is cut after that index (records and indexes of the
interrupted append are dropped), the index partition is rebuilt from it, and the MAM rewritten to match.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from tierlake.errors import TapeError
from tiers.tape import coherency, names
from tiers.tape import ltfs_format as fmt
from tiers.tape.syscalls import Syscalls

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


SYNC_WORKERS = 8
"""fdatasync calls in flight at once. One file per record means one flush per record; issued one after another
each waits for its own journal commit, issued together the file system commits them as a group (ext4, xfs).
fdatasync covers the data and size of a new record; the directory entries are made durable by the directory's own
fsync before the index."""


def _hexdigest(item: FileToWrite, digest: hashlib._Hash | None) -> str:
    if digest is not None:
        return digest.hexdigest()
    if item.sha256 is None:
        raise TapeError(f"{item.name}: no SHA-256 for the index")
    return item.sha256()


class VirtualCartridge:
    """One cartridge directory. Not thread-safe: the library hands a cartridge to one drive (one writer) at a time."""

    def __init__(
        self, path: Path, *, capacity_bytes: int, mb_per_s: float = 0.0, syscalls: Syscalls | None = None
    ) -> None:
        """``syscalls``: the file-system calls that change the cartridge (tests inject a fault hook there)."""
        self.path = path
        self.capacity_bytes = capacity_bytes
        self._mb_per_s = mb_per_s
        self._blocksize: int | None = None
        self._io = syscalls or Syscalls()
        self._listing: frozenset[str] | None = None  # the folder's names, while a read-only check runs

    # -- records ------------------------------------------------------------------------------------------

    def _record(self, part: int, block: int, kind: str) -> Path:
        return self.path / f"{part}_{block}_{kind}"

    def kind(self, part: int, block: int) -> str | None:
        """What the backend finds at (part, block): it looks for E, then F, then R."""
        if self._listing is not None:
            return next((k for k in ("E", "F", "R") if f"{part}_{block}_{k}" in self._listing), None)
        for kind in ("E", "F", "R"):
            if self._record(part, block, kind).exists():
                return kind
        return None

    def _put(self, part: int, block: int, kind: str, data: bytes = b"") -> None:
        """One record, fsynced; whatever else the block held is removed first (one file per block)."""
        for other in ("R", "F", "E"):
            if other != kind:
                self._io.unlink(self._record(part, block, other))
        self._io.create(self._record(part, block, kind), data, sync=True)

    def _put_new(self, part: int, block: int, data: bytes | bytearray) -> Path:
        """A data record past the end of data, where no other file exists for the block (flushed by the caller)."""
        path = self._record(part, block, "R")
        self._io.create(path, data)
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

    def _sync_dir(self) -> None:
        self._io.fsync(self.path)

    # -- format -------------------------------------------------------------------------------------------

    def format(self, *, barcode: str, volume_name: str, blocksize: int, pool: str = "") -> fmt.Index:
        """mkltfs: labels and a generation-1 index on both partitions, MAM attributes."""
        names.check_name(volume_name, parameter="volume_name")
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
        self._sync_dir()
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
        """The current index: the data partition's last one (the authoritative copy), found in one listing of the
        folder (reading it changes nothing)."""
        with self._listed():
            return self.last_index(DP)

    @contextmanager
    def _listed(self) -> Iterator[None]:
        """Look records up in one listing of the folder while a read-only step runs (three stats a block had cost
        a recall's mount check and index read 40 ms for a cartridge of 100 records); re-entrant."""
        if self._listing is not None:
            yield
            return
        self._listing = frozenset(os.listdir(self.path))
        try:
            yield
        finally:
            self._listing = None

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
        names.check_names([item.name for item in files], existing=[entry.name for entry in previous.files])
        for item in files:
            for key, _value in item.xattrs:
                names.check_name(key, parameter=f"FileToWrite.xattrs key of {item.name!r}")
        block = self.eod(DP)
        self._io.unlink(self._record(DP, block, "E"))
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
            first = block
            digest = None if item.sha256 is not None else hashlib.sha256()
            block, length = self._file_records(item, block, blocksize, digest, started=started, before=written)
            written += length
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
        self._sync_dir()
        self._write_ip(index, blocksize)
        self._write_mam(index, barcode=barcode, vcr=self._vcr() + 1)
        return index

    def _file_records(
        self,
        item: FileToWrite,
        block: int,
        blocksize: int,
        digest: hashlib._Hash | None,
        *,
        started: float,
        before: int,
    ) -> tuple[int, int]:
        """Write one file's chunks as records from ``block`` (``blocksize`` each, the last one short); returns the
        next block and the file's length. ``before``: bytes this append wrote earlier (for the throttle)."""
        length = 0
        buffer = bytearray()
        for chunk in item.chunks:
            if not buffer and len(chunk) == blocksize:  # the common case: no copy
                block, length = self._data_record(block, chunk, digest, length)
                self._throttle(started, before + length)
                continue
            buffer += chunk
            while len(buffer) >= blocksize:
                record = bytes(buffer[:blocksize])
                del buffer[:blocksize]
                block, length = self._data_record(block, record, digest, length)
                self._throttle(started, before + length)
        if buffer:
            block, length = self._data_record(block, bytes(buffer), digest, length)
        return block, length

    def _data_record(
        self, block: int, record: bytes | bytearray, digest: hashlib._Hash | None, length: int
    ) -> tuple[int, int]:
        self._synced.append(self._syncer.submit(self._io.fsync, self._put_new(DP, block, record), data_only=True))
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
        for path in sorted(self.path.glob(f"{part}_*_*")):
            if int(path.name.split("_")[1]) > eod:
                self._io.unlink(path)

    def _write_ip(self, index: fmt.Index, blocksize: int) -> None:
        """Rewrite the index partition (``FM`` at block 4, index records from 5, ``FM``, ``E``) so that no reader
        ever sees a torn index there.

        Overwriting the records in place would leave, after a kill, the new first record followed by the old later
        ones: XML that can parse as a valid newer generation listing the old files. So the construct is taken out
        of sight first: the leading FM at block 4 is removed, and from then on the partition reads as labels
        followed by a missing block (no EOD), which the consistency check reports and recovery rebuilds from the
        data partition. Then everything after block 4 is removed, the new records, FM and E are written and
        fsynced, and the directory is fsynced. Only then is the FM at block 4 created again: that one ``create``
        is the commit point of the index partition.
        """
        ip_index = replace(
            index,
            location=fmt.Pointer(partition=fmt.INDEX_PARTITION, block=fmt.FIRST_INDEX_BLOCK),
            previous=index.location,
        )
        for kind in ("F", "E", "R"):
            self._io.unlink(self._record(IP, DATA_START, kind))
        self._drop_after(IP, DATA_START)
        data = ip_index.to_xml()
        block = fmt.FIRST_INDEX_BLOCK
        for offset in range(0, len(data), blocksize):
            self._put(IP, block, "R", data[offset : offset + blocksize])
            block += 1
        self._put(IP, block, "F")
        self._put(IP, block + 1, "E")
        self._sync_dir()
        self._put(IP, DATA_START, "F")
        self._sync_dir()

    # -- MAM ----------------------------------------------------------------------------------------------

    def _vcr(self) -> int:
        """The volume change reference in ``attr_0_9``; 0 when it is missing or unreadable."""
        try:
            return fmt.parse_vcr((self.path / f"attr_0_{fmt.MAM_VCR:x}").read_bytes())
        except (FileNotFoundError, TapeError):
            return 0

    def _attr(self, part: int, attribute: int, data: bytes) -> None:
        self._io.replace(self.path / f"attr_{part}_{attribute:x}", data)

    def _write_mam(self, index: fmt.Index, *, barcode: str, vcr: int, pool: str | None = None) -> None:
        """VCR, then the index partition's VCI, then the data partition's VCI, then a directory fsync.

        The data partition's VCI is written last: it names the generation and block of the committed data index
        and is the commit point of an append (see :meth:`recover`).
        """
        self._attr(IP, fmt.MAM_VCR, fmt.mam_attribute(fmt.MAM_VCR, vcr.to_bytes(4, "big")))
        for part in (IP, DP):
            block = fmt.FIRST_INDEX_BLOCK if part == IP else index.location.block
            vci = fmt.vci(vcr=vcr, generation=index.generation, block=block, volume_uuid=index.volume_uuid)
            self._attr(part, fmt.MAM_VCI, vci)
        if pool is not None:
            self._write_pool_mam(index, barcode=barcode, pool=pool)
        self._sync_dir()

    def _write_pool_mam(self, index: fmt.Index, *, barcode: str, pool: str) -> None:
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

    def _commit_mark(self, volume_uuid: str) -> tuple[int, int] | None:
        """(generation, block) of the data index the data partition's VCI names; None without a usable VCI."""
        try:
            _vcr, generation, block, owner = fmt.parse_vci((self.path / f"attr_{DP}_{fmt.MAM_VCI:x}").read_bytes())
        except (FileNotFoundError, TapeError):
            return None
        return (generation, block) if owner == volume_uuid else None

    # -- recovery -----------------------------------------------------------------------------------------

    def check(self) -> list[str]:
        """What ``ltfsck`` would change or refuse on this cartridge (empty when it is consistent); see
        :func:`tiers.tape.coherency.problems`. The check changes nothing: records are looked up in one listing.
        """
        with self._listed():
            return coherency.problems(self)

    def consistent(self) -> bool:
        """Nothing for ``ltfsck`` to change: indexes, pointers, MAM coherency data, no stray files."""
        return not self.check()

    def _index_constructs(self) -> list[tuple[int, int]]:
        """(first record, trailing FM) of every ``FM, records, FM`` run on the data partition, in block order, up
        to its EOD or its first missing block (a kill can leave a hole; nothing after it counts)."""
        kinds: list[str] = []
        while (kind := self.kind(DP, len(kinds))) is not None:
            kinds.append(kind)
            if kind == "E":
                break
        found = []
        for trailing in range(DATA_START + 2, len(kinds)):
            if kinds[trailing] != "F" or kinds[trailing - 1] != "R":
                continue
            start = trailing - 1
            while kinds[start - 1] == "R":
                start -= 1
            if start - 1 >= DATA_START and kinds[start - 1] == "F":
                found.append((start, trailing))
        return found

    def _data_index(self, start: int) -> fmt.Index | None:
        try:
            index = self._index_at(DP, start)
        except TapeError:
            return None
        return index if index.location == fmt.Pointer(partition=fmt.DATA_PARTITION, block=start) else None

    def _committed(self, volume_uuid: str) -> tuple[int, fmt.Index]:
        """(trailing FM, index) of the generation to keep: the one the data partition's VCI names (the last step
        of an append; a later index on the partition belongs to an append that never returned), else the last
        complete index (a cartridge without MAM, as ``ltfsck`` rolls back)."""
        constructs = list(reversed(self._index_constructs()))
        mark = self._commit_mark(volume_uuid)
        if mark is not None:
            constructs = [c for c in constructs if c[0] == mark[1]] + constructs
        for start, trailing in constructs:
            index = self._data_index(start)
            if index is None or (mark is not None and start == mark[1] and index.generation != mark[0]):
                continue
            return trailing, index
        raise TapeError(f"{self.path.name}: no complete index on the data partition; the cartridge needs reformatting")

    def recover(self) -> fmt.Index | None:
        """Bring an interrupted cartridge back to its committed generation. None if it was consistent.

        The data partition is cut after the committed index (records of an interrupted append are dropped, as
        ``ltfsck`` rolls back), the index partition is rewritten from it, stray temp files are removed and the MAM
        coherency data (VCR, both VCIs) is rewritten to match. Every step is idempotent, so a recovery that is
        itself killed is finished by the next one.
        """
        if self.consistent():
            return None
        barcode, label = self.labels()
        trailing, index = self._committed(label.volume_uuid)
        self._put(DP, trailing + 1, "E")
        self._drop_after(DP, trailing + 1)
        self._sync_dir()
        self._write_ip(index, label.blocksize)
        for temp in sorted(self.path.glob(".*.tmp")):
            self._io.unlink(temp)
        self._write_mam(index, barcode=barcode, vcr=max(self._vcr(), 1))
        logger.warning(
            "cartridge %s recovered to index generation %d at b:%d",
            self.path.name,
            index.generation,
            index.location.block,
            extra={"cartridge": self.path.name},
        )
        return index
