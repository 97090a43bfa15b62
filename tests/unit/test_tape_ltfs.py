"""The virtual cartridge is an LTFS volume in the reference file-backend layout: a reader that knows only the
layout (record files, labels, the last index, extents) gets every file back byte for byte; generations, pointers,
MAM coherency data and crash recovery follow the LTFS format."""

from __future__ import annotations

import hashlib
import os
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tierlake.errors import TapeError
from tiers.tape import ltfs_format as fmt
from tiers.tape.syscalls import Syscalls
from tiers.tape.virtual import FileToWrite, VirtualCartridge

BLOCK = 4096


def _cartridge(tmp_path: Path) -> VirtualCartridge:
    cartridge = VirtualCartridge(tmp_path / "A00001", capacity_bytes=1 << 30)
    cartridge.format(barcode="A00001", volume_name="site-a-A00001", blocksize=BLOCK, pool="site-a")
    return cartridge


def _files(cartridge: VirtualCartridge, payloads: dict[str, bytes]) -> fmt.Index:
    return cartridge.append(
        [FileToWrite(name=n, chunks=[p[i : i + 1000] for i in range(0, len(p), 1000)]) for n, p in payloads.items()]
    )


def _kind(folder: Path, part: int, block: int) -> str | None:
    for kind in "EFR":
        if (folder / f"{part}_{block}_{kind}").exists():
            return kind
    return None


def _partition_kinds(folder: Path) -> dict[int, list[str]]:
    """Each partition's record kinds up to its EOD, once its start is mkltfs's (VOL1, filemark, label, filemark)
    and its VOL1 label is LTFS's."""
    kinds = {}
    for part in (0, 1):
        block, seen = 0, []
        while (kind := _kind(folder, part, block)) in ("R", "F"):
            seen.append(kind)
            block += 1
        assert kind == "E", f"partition {part} lacks EOD"
        assert seen[:4] == ["R", "F", "R", "F"]
        vol1 = (folder / f"{part}_0_R").read_bytes()
        assert len(vol1) == 80
        assert vol1[:4] == b"VOL1"
        assert vol1[24:28] == b"LTFS"
        assert vol1[79:80] == b"4"
        kinds[part] = seen
    return kinds


def _last_indexes(
    folder: Path, kinds: dict[int, list[str]], volume_uuid: str | None
) -> dict[str, tuple[int, ET.Element]]:
    """Each partition's last index (the records between the last two filemarks before EOD), by partition letter,
    with its start block; each must say where it stands and name the labels' volume."""
    indexes = {}
    for part, letter in ((0, "a"), (1, "b")):
        seen = kinds[part]
        assert seen[-1] == "F"
        start = len(seen) - 2
        while seen[start - 1] == "R":
            start -= 1
        assert seen[start - 1] == "F"
        xml = b"".join((folder / f"{part}_{b}_R").read_bytes() for b in range(start, len(seen) - 1))
        index = ET.fromstring(xml)  # noqa: S314
        assert index.findtext("location/partition") == letter
        assert int(index.findtext("location/startblock") or -1) == start
        assert index.findtext("volumeuuid") == volume_uuid
        indexes[letter] = (start, index)
    return indexes


def _file_bytes(folder: Path, node: ET.Element, blocksize: int) -> bytes:
    """One file of the index, read by its extents alone; its length and SHA-256 xattr must match what was read."""
    data = bytearray()
    for extent in node.iterfind("extentinfo/extent"):
        part = {"a": 0, "b": 1}[extent.findtext("partition") or ""]
        block = int(extent.findtext("startblock") or 0)
        skip = int(extent.findtext("byteoffset") or 0)
        left = int(extent.findtext("bytecount") or 0)
        while left:
            record = (folder / f"{part}_{block}_R").read_bytes()
            assert len(record) <= blocksize
            piece = record[skip : skip + left]
            data += piece
            left -= len(piece)
            skip, block = 0, block + 1
    assert len(data) == int(node.findtext("length") or -1)
    hashes = {x.findtext("key"): x.findtext("value") for x in node.iterfind("extendedattributes/xattr")}
    assert hashes["ltfs.hash.sha256sum"] == hashlib.sha256(data).hexdigest()
    return bytes(data)


def _read_back(folder: Path) -> dict[str, bytes]:
    """An independent reader: only the layout rules of the reference file backend and the LTFS spec."""
    names = os.listdir(folder)
    assert all(re.fullmatch(r"[01]_\d+_[RFE]|attr_[01]_[0-9a-f]+", n) for n in names), names
    kinds = _partition_kinds(folder)
    labels = [ET.fromstring((folder / f"{p}_2_R").read_bytes()) for p in (0, 1)]  # noqa: S314
    assert [label.findtext("location/partition") for label in labels] == ["a", "b"]
    assert labels[0].findtext("volumeuuid") == labels[1].findtext("volumeuuid")
    assert labels[0].findtext("formattime") == labels[1].findtext("formattime")
    blocksize = int(labels[1].findtext("blocksize") or 0)
    indexes = _last_indexes(folder, kinds, labels[0].findtext("volumeuuid"))
    dp_start, dp = indexes["b"]
    _ip_start, ip = indexes["a"]
    assert ip.findtext("generationnumber") == dp.findtext("generationnumber")
    assert ip.findtext("previousgenerationlocation/partition") == "b"
    assert int(ip.findtext("previousgenerationlocation/startblock") or -1) == dp_start
    return {
        node.findtext("name") or "": _file_bytes(folder, node, blocksize)
        for node in dp.iterfind("directory/contents/file")
    }


def test_fresh_cartridge_matches_mkltfs_layout(tmp_path: Path) -> None:
    cartridge = _cartridge(tmp_path)
    for part in (0, 1):
        assert [_kind(cartridge.path, part, b) for b in range(8)] == ["R", "F", "R", "F", "F", "R", "F", "E"]
        assert len((cartridge.path / f"{part}_0_R").read_bytes()) == 80
    assert _read_back(cartridge.path) == {}
    index = cartridge.index()
    assert (index.generation, index.location, index.previous) == (1, fmt.Pointer(partition="b", block=5), None)
    ip = cartridge.last_index(0)
    assert ip.previous == fmt.Pointer(partition="b", block=5)
    vcr = (cartridge.path / "attr_0_9").read_bytes()
    assert struct.unpack(">HBH", vcr[:5]) == (0x0009, 0, 4)
    for part, block in ((0, 5), (1, 5)):
        data = (cartridge.path / f"attr_{part}_80c").read_bytes()
        assert len(data) == 75
        assert fmt.parse_vci(data) == (1, 1, block, index.volume_uuid)
    assert (cartridge.path / "1_0_R").stat().st_mode & 0o777 == 0o644


def test_files_round_trip_through_the_layout_alone(tmp_path: Path) -> None:
    cartridge = _cartridge(tmp_path)
    first = {"big.bin": os.urandom(BLOCK * 2 + 123), "small.txt": b"hello world"}
    index = _files(cartridge, first)
    assert index.generation == 2
    big = next(f for f in index.files if f.name == "big.bin")
    assert big.extents[0].start_block == 7  # straight after gen 1's trailing filemark (FM at 4, index 5, FM 6)
    second = {"third.bin": os.urandom(BLOCK * 3)}
    index = _files(cartridge, second)
    assert index.generation == 3
    assert index.previous is not None
    assert index.previous.partition == "b"
    assert _read_back(cartridge.path) == first | second
    assert b"".join(cartridge.read_file(big, start=BLOCK - 5, length=10)) == first["big.bin"][BLOCK - 5 : BLOCK + 5]
    vcr, generation, block, _ = fmt.parse_vci((cartridge.path / "attr_1_80c").read_bytes())
    assert (vcr, generation, block) == (3, 3, index.location.block)


def test_index_xml_round_trip_and_validation() -> None:
    now = fmt.ltfs_time()
    extent = fmt.Extent(file_offset=0, partition="b", start_block=7, byte_offset=0, byte_count=10)
    entry = fmt.IndexFile(
        name="x", length=10, uid=2, created=now, modified=now, extents=(extent,), xattrs=(("k", "v"),)
    )
    index = fmt.Index(
        volume_uuid="6b3cb9c2-0000-4000-8000-000000000000",
        generation=4,
        update_time=now,
        location=fmt.Pointer(partition="b", block=9),
        previous=fmt.Pointer(partition="b", block=5),
        volume_name="vol",
        root_created=now,
        files=(entry,),
    )
    assert fmt.parse_index(index.to_xml()) == index
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", now)
    with pytest.raises(TapeError, match="not an LTFS time"):
        fmt.parse_index(index.to_xml().replace(now.encode(), b"yesterday"))
    with pytest.raises(TapeError, match=r"between 1\.0\.0 and 2\.99\.99"):
        fmt.parse_index(index.to_xml().replace(b'version="2.4.0"', b'version="3.0.0"'))
    with pytest.raises(TapeError, match="barcode"):
        fmt.vol1_label("a1")


def test_interrupted_generation_rolls_back_to_last_consistent_index(tmp_path: Path) -> None:
    cartridge = _cartridge(tmp_path)
    kept = {"kept.bin": os.urandom(BLOCK + 1)}
    _files(cartridge, kept)
    eod = cartridge.eod(1)
    # A writer killed mid-file: E gone, two data records written, no index.
    (cartridge.path / f"1_{eod}_E").unlink()
    for block in (eod, eod + 1):
        (cartridge.path / f"1_{block}_R").write_bytes(os.urandom(BLOCK))
    assert not cartridge.consistent()
    recovered = cartridge.recover()
    assert recovered is not None
    assert recovered.generation == 2
    assert cartridge.consistent()
    assert _read_back(cartridge.path) == kept
    after = {"next.bin": os.urandom(100)}
    assert _files(cartridge, after).generation == 3
    assert _read_back(cartridge.path) == kept | after


def test_lagging_index_partition_is_rewritten_from_the_data_partition(tmp_path: Path) -> None:
    cartridge = _cartridge(tmp_path)
    _files(cartridge, {"a": b"1" * 10})
    (cartridge.path / "0_7_E").unlink()  # the IP rewrite was cut short
    assert not cartridge.consistent()
    cartridge.recover()
    assert cartridge.consistent()
    assert _read_back(cartridge.path) == {"a": b"1" * 10}


def test_every_data_record_is_flushed_before_the_index_that_names_it(tmp_path: Path) -> None:
    """Crash consistency: the records' flushes run in helper threads, but all of them end before the new index."""
    events: list[tuple[str, str]] = []
    cartridge = VirtualCartridge(
        tmp_path / "A00001",
        capacity_bytes=1 << 30,
        syscalls=Syscalls(before=lambda operation, path: events.append((operation, path.name))),
    )
    cartridge.format(barcode="A00001", volume_name="v", blocksize=BLOCK)
    events.clear()
    payload = os.urandom(20 * BLOCK + 17)
    index = _files(cartridge, {"a.bin": payload, "b.bin": payload[:5]})
    records = {
        f"1_{block}_R"
        for entry in index.files
        for extent in entry.extents
        for block in range(extent.start_block, extent.start_block + -(-extent.byte_count // BLOCK))
    }
    assert len(records) == 22
    assert records <= set(os.listdir(cartridge.path))
    new_index = events.index(("create", f"1_{index.location.block - 1}_F"))
    assert records <= {name for operation, name in events[:new_index] if operation == "fsync"}
