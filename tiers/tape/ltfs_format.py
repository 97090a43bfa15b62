"""LTFS format constructs (SNIA LTFS Format 2.4): VOL1 and LTFS labels, index XML, extents, MAM attributes.

Pure functions and frozen dataclasses, no I/O. Partition letters map to SCSI partitions as mkltfs does: the index
partition ``a`` is SCSI partition 0, the data partition ``b`` is SCSI partition 1. Times are UTC with nanoseconds
(``2026-11-28T15:24:36.109269525Z``), the form the reference implementation writes and requires.
"""

from __future__ import annotations

import re
import struct
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from tierlake.errors import TapeError

FORMAT_VERSION = "2.4.0"
CREATOR = "tierlake 0.1.0 - Linux - tierlake"
INDEX_PARTITION = "a"
DATA_PARTITION = "b"
SCSI_PARTITION = {INDEX_PARTITION: 0, DATA_PARTITION: 1}
LETTER = {0: INDEX_PARTITION, 1: DATA_PARTITION}
LABEL_MAX = 4096
VOL1_BYTES = 80
FIRST_INDEX_BLOCK = 5  # blocks 0-3: VOL1, FM, label, FM; block 4: the index construct's leading FM
_BARCODE = re.compile(r"[0-9A-Z]{6}")
_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z")

# MAM attribute ids (SCSI SPC) as mkltfs writes them
MAM_VCR = 0x0009
MAM_VENDOR = 0x0800
MAM_APP_NAME = 0x0801
MAM_APP_VERSION = 0x0802
MAM_USER_LABEL = 0x0803
MAM_BARCODE = 0x0806
MAM_MEDIA_POOL = 0x0808
MAM_FORMAT_VERSION = 0x080B
MAM_VCI = 0x080C
MAM_VOLUME_LOCK = 0x1623
MAM_BINARY, MAM_ASCII, MAM_TEXT = 0, 1, 2


def ltfs_time(ns: int | None = None) -> str:
    """Nanosecond UTC time in the LTFS form."""
    ns = time.time_ns() if ns is None else ns
    seconds, nanos = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def check_time(text: str, what: str) -> str:
    if not _TIME.fullmatch(text):
        raise TapeError(f"{what} = {text!r} is not an LTFS time (YYYY-MM-DDThh:mm:ss.nnnnnnnnnZ)")
    return text


def check_barcode(barcode: str) -> str:
    if not _BARCODE.fullmatch(barcode):
        raise TapeError(f"barcode {barcode!r} is invalid: a VOL1 volser is 6 characters of 0-9 and A-Z")
    return barcode


# ---------------------------------------------------------------------------------------------------------
# VOL1


def vol1_label(barcode: str) -> bytes:
    """The 80-byte ANSI VOL1 label of an LTFS volume."""
    label = bytearray(b" " * VOL1_BYTES)
    label[0:4] = b"VOL1"
    label[4:10] = check_barcode(barcode).encode("ascii")
    label[10:11] = b"L"
    label[24:28] = b"LTFS"
    label[79:80] = b"4"
    return bytes(label)


def parse_vol1(record: bytes) -> str:
    """The barcode of a VOL1 record; TapeError if it is not an LTFS VOL1 label."""
    if len(record) != VOL1_BYTES or record[0:4] != b"VOL1" or record[24:28] != b"LTFS":
        raise TapeError(f"not an LTFS VOL1 label ({len(record)} bytes, starts {record[:4]!r})")
    return record[4:10].decode("ascii")


# ---------------------------------------------------------------------------------------------------------
# Label XML


@dataclass(frozen=True, kw_only=True)
class Label:
    volume_uuid: str
    format_time: str
    location: str
    blocksize: int
    creator: str = CREATOR
    compression: bool = False

    def to_xml(self) -> bytes:
        root = ET.Element("ltfslabel", version=FORMAT_VERSION)
        _text(root, "creator", self.creator)
        _text(root, "formattime", self.format_time)
        _text(root, "volumeuuid", self.volume_uuid)
        location = ET.SubElement(root, "location")
        _text(location, "partition", self.location)
        partitions = ET.SubElement(root, "partitions")
        _text(partitions, "index", INDEX_PARTITION)
        _text(partitions, "data", DATA_PARTITION)
        _text(root, "blocksize", str(self.blocksize))
        _text(root, "compression", "true" if self.compression else "false")
        data = _serialise(root)
        if len(data) > LABEL_MAX:
            raise TapeError(f"label XML of {len(data)} bytes exceeds LTFS_LABEL_MAX {LABEL_MAX}")
        return data

    def same_volume(self, other: Label) -> bool:
        """The two labels of a volume agree on everything but their location, which must differ."""
        mine = (self.volume_uuid, self.format_time, self.blocksize, self.compression)
        theirs = (other.volume_uuid, other.format_time, other.blocksize, other.compression)
        return mine == theirs and self.location != other.location


def parse_label(record: bytes) -> Label:
    root = _parse(record, "ltfslabel")
    partitions = _child(root, "partitions")
    if (_get(partitions, "index"), _get(partitions, "data")) != (INDEX_PARTITION, DATA_PARTITION):
        raise TapeError("label: partition map is not index=a, data=b")
    return Label(
        creator=_get(root, "creator"),
        format_time=check_time(_get(root, "formattime"), "label formattime"),
        volume_uuid=_get(root, "volumeuuid"),
        location=_get(_child(root, "location"), "partition"),
        blocksize=int(_get(root, "blocksize")),
        compression=_get(root, "compression") == "true",
    )


# ---------------------------------------------------------------------------------------------------------
# Index XML


@dataclass(frozen=True, kw_only=True)
class Extent:
    """Where a run of a file's bytes lies: ``bytecount`` bytes from ``byteoffset`` into block ``startblock``."""

    file_offset: int
    partition: str
    start_block: int
    byte_offset: int
    byte_count: int


@dataclass(frozen=True, kw_only=True)
class IndexFile:
    name: str
    length: int
    uid: int
    created: str
    modified: str
    extents: tuple[Extent, ...] = ()
    xattrs: tuple[tuple[str, str], ...] = ()
    readonly: bool = False

    def xattr(self, key: str) -> str | None:
        return dict(self.xattrs).get(key)


@dataclass(frozen=True, kw_only=True)
class Pointer:
    partition: str
    block: int


@dataclass(frozen=True, kw_only=True)
class Index:
    """One generation of a volume's index. Files live in the root directory (tierlake writes flat volumes)."""

    volume_uuid: str
    generation: int
    update_time: str
    location: Pointer
    previous: Pointer | None
    volume_name: str
    root_created: str
    files: tuple[IndexFile, ...] = field(default_factory=tuple)
    creator: str = CREATOR

    @property
    def highest_file_uid(self) -> int:
        return max([1, *(f.uid for f in self.files)])

    def to_xml(self) -> bytes:
        root = ET.Element("ltfsindex", version=FORMAT_VERSION)
        _text(root, "creator", self.creator)
        _text(root, "volumeuuid", self.volume_uuid)
        _text(root, "generationnumber", str(self.generation))
        _text(root, "updatetime", self.update_time)
        _pointer(root, "location", self.location)
        if self.previous is not None:
            _pointer(root, "previousgenerationlocation", self.previous)
        _text(root, "allowpolicyupdate", "true")
        _text(root, "volumelockstate", "unlocked")
        _text(root, "highestfileuid", str(self.highest_file_uid))
        directory = ET.SubElement(root, "directory")
        _text(directory, "name", self.volume_name)
        _text(directory, "readonly", "false")
        _times(directory, self.root_created, self.update_time)
        _text(directory, "fileuid", "1")
        contents = ET.SubElement(directory, "contents")
        for entry in self.files:
            _file_xml(contents, entry)
        return _serialise(root)


def _file_xml(contents: ET.Element, entry: IndexFile) -> None:
    node = ET.SubElement(contents, "file")
    _text(node, "name", entry.name)
    _text(node, "length", str(entry.length))
    _text(node, "readonly", "true" if entry.readonly else "false")
    _times(node, entry.created, entry.modified)
    _text(node, "fileuid", str(entry.uid))
    if entry.xattrs:
        attrs = ET.SubElement(node, "extendedattributes")
        for key, value in entry.xattrs:
            xattr = ET.SubElement(attrs, "xattr")
            _text(xattr, "key", key)
            _text(xattr, "value", value)
    if entry.extents:
        info = ET.SubElement(node, "extentinfo")
        for extent in entry.extents:
            item = ET.SubElement(info, "extent")
            _text(item, "fileoffset", str(extent.file_offset))
            _text(item, "partition", extent.partition)
            _text(item, "startblock", str(extent.start_block))
            _text(item, "byteoffset", str(extent.byte_offset))
            _text(item, "bytecount", str(extent.byte_count))


def parse_index(data: bytes) -> Index:
    """Parse and validate an index (the checks the reference reader makes that apply to a flat volume)."""
    root = _parse(data, "ltfsindex")
    version = root.get("version", "")
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or not (1, 0, 0) <= tuple(map(int, parts)) < (3, 0, 0):
        raise TapeError(f"index version {version!r} is not between 1.0.0 and 2.99.99")
    for tag in ("creator", "volumeuuid", "generationnumber", "updatetime", "allowpolicyupdate", "highestfileuid"):
        _get(root, tag)
    directory = _child(root, "directory")
    files = tuple(_parse_file(node) for node in directory.iterfind("contents/file"))
    previous = root.find("previousgenerationlocation")
    index = Index(
        creator=_get(root, "creator"),
        volume_uuid=_get(root, "volumeuuid"),
        generation=int(_get(root, "generationnumber")),
        update_time=check_time(_get(root, "updatetime"), "index updatetime"),
        location=_parse_pointer(_child(root, "location")),
        previous=None if previous is None else _parse_pointer(previous),
        volume_name=_name(directory),
        root_created=_get(directory, "creationtime"),
        files=files,
    )
    if int(_get(root, "highestfileuid")) < index.highest_file_uid:
        raise TapeError("index highestfileuid is below a file's fileuid")
    return index


def _parse_file(node: ET.Element) -> IndexFile:
    for tag in ("readonly", "changetime", "accesstime", "backuptime"):
        _get(node, tag)
    extents = tuple(
        Extent(
            file_offset=int(_get(item, "fileoffset")),
            partition=_get(item, "partition"),
            start_block=int(_get(item, "startblock")),
            byte_offset=int(_get(item, "byteoffset")),
            byte_count=int(_get(item, "bytecount")),
        )
        for item in node.iterfind("extentinfo/extent")
    )
    xattrs = tuple((_name(x, "key"), x.findtext("value", "")) for x in node.iterfind("extendedattributes/xattr"))
    return IndexFile(
        name=_name(node),
        length=int(_get(node, "length")),
        uid=int(_get(node, "fileuid")),
        created=check_time(_get(node, "creationtime"), "file creationtime"),
        modified=check_time(_get(node, "modifytime"), "file modifytime"),
        readonly=_get(node, "readonly") == "true",
        extents=extents,
        xattrs=xattrs,
    )


# ---------------------------------------------------------------------------------------------------------
# MAM attributes (the file backend's attr_<P>_<id> files)


def mam_attribute(attribute: int, value: bytes, *, kind: int = MAM_BINARY) -> bytes:
    """``ID (BE u16) | format (u8) | length (BE u16) | value``."""
    return struct.pack(">HBH", attribute, kind, len(value)) + value


def padded(text: str, width: int) -> bytes:
    return text.encode("ascii")[:width].ljust(width, b" ")


def vci(*, vcr: int, generation: int, block: int, volume_uuid: str) -> bytes:
    """The Volume Coherency Information attribute (0x080C), 75 bytes."""
    application = b"LTFS\0" + volume_uuid.encode("ascii") + b"\0" + b"\x01"
    body = struct.pack(">BQQQH", 8, vcr, generation, block, len(application)) + application
    return mam_attribute(MAM_VCI, body)


def parse_vcr(data: bytes) -> int:
    """The volume change reference of an ``attr_0_9`` file (4-byte big-endian binary attribute)."""
    if len(data) != 9 or struct.unpack(">HBH", data[:5]) != (MAM_VCR, MAM_BINARY, 4):
        raise TapeError(f"not a volume change reference attribute ({len(data)} bytes, starts {data[:5].hex()})")
    return int.from_bytes(data[5:9], "big")


def parse_vci(data: bytes) -> tuple[int, int, int, str]:
    """(vcr, generation, index block, volume uuid) of a VCI attribute."""
    if len(data) != 5 + 0x46:
        raise TapeError(f"not a VCI attribute ({len(data)} bytes, not {5 + 0x46})")
    attribute, _kind, length = struct.unpack(">HBH", data[:5])
    if attribute != MAM_VCI or length != 0x46 or data[5] != 8:
        raise TapeError(f"not a VCI attribute (id {attribute:#x}, length {length})")
    vcr, generation, block, app_length = struct.unpack(">QQQH", data[6:32])
    application = data[32 : 32 + app_length]
    if app_length not in (42, 43) or not application.startswith(b"LTFS\0"):
        raise TapeError("VCI application-specific part is not LTFS")
    return vcr, generation, block, application[5:41].decode("ascii")


# ---------------------------------------------------------------------------------------------------------
# XML helpers


def _text(parent: ET.Element, tag: str, value: str) -> None:
    ET.SubElement(parent, tag).text = value


def _times(node: ET.Element, created: str, modified: str) -> None:
    _text(node, "creationtime", created)
    _text(node, "changetime", modified)
    _text(node, "modifytime", modified)
    _text(node, "accesstime", modified)
    _text(node, "backuptime", modified)


def _pointer(parent: ET.Element, tag: str, pointer: Pointer) -> None:
    node = ET.SubElement(parent, tag)
    _text(node, "partition", pointer.partition)
    _text(node, "startblock", str(pointer.block))


def _parse_pointer(node: ET.Element) -> Pointer:
    return Pointer(partition=_get(node, "partition"), block=int(_get(node, "startblock")))


def _serialise(root: ET.Element) -> bytes:
    ET.indent(root, space="    ")
    body: bytes = ET.tostring(root, encoding="utf-8")
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body + b"\n"


def _parse(data: bytes, tag: str) -> ET.Element:
    try:
        root = ET.fromstring(data)  # noqa: S314 - our own volumes; expat does not expand external entities
    except ET.ParseError as exc:
        raise TapeError(f"not valid <{tag}> XML: {exc}") from exc
    if root.tag != tag:
        raise TapeError(f"expected <{tag}>, found <{root.tag}>")
    return root


def _child(node: ET.Element, tag: str) -> ET.Element:
    child = node.find(tag)
    if child is None:
        raise TapeError(f"<{node.tag}> lacks the required <{tag}>")
    return child


def _get(node: ET.Element, tag: str) -> str:
    """A value element's text without surrounding white space (numbers, times, letters)."""
    return (_child(node, tag).text or "").strip()


def _name(node: ET.Element, tag: str = "name") -> str:
    """A name element's text exactly as written: leading and trailing spaces are part of a name."""
    return _child(node, tag).text or ""
