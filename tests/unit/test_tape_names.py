"""File names on a volume: every backend refuses what the LTFS format refuses, before anything is written, and keeps
every name it accepts exactly (leading and trailing spaces included)."""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest

from tiers.tape import InvalidFileName
from tiers.tape.names import check_name
from tiers.tape.virtual import FileToWrite, VirtualCartridge
from tiers.tape.volume import LtfsVolume, VirtualVolume, Volume

from .test_tape_ltfs import _read_back

BLOCK = 4096
CAFE_NFC = unicodedata.normalize("NFC", "café")
CAFE_NFD = unicodedata.normalize("NFD", "café")
BAD_NAMES = [
    ("", "empty"),
    (".", r"'\.' and '\.\.'"),
    ("..", r"'\.' and '\.\.'"),
    ("a/b", "contains '/'"),
    ("x" * 256, "256 bytes of UTF-8.*limit of 255"),
    ("é" * 128, "256 bytes of UTF-8.*limit of 255"),  # 128 characters, 256 bytes
    ("tab\there", "U\\+0009"),
    ("nul\x00", "U\\+0000"),
    ("del\x7f", "U\\+007F"),
    ("bad\ufffe", "U\\+FFFE"),
    ("half\ud800", "not valid Unicode"),
]


def _virtual(tmp_path: Path) -> VirtualVolume:
    cartridge = VirtualCartridge(tmp_path / "A00001", capacity_bytes=1 << 30)
    cartridge.format(barcode="A00001", volume_name="v", blocksize=BLOCK)
    return VirtualVolume(cartridge, "A00001")


def _ltfs(tmp_path: Path) -> LtfsVolume:
    (tmp_path / "mnt").mkdir()
    return LtfsVolume(tmp_path / "mnt", "A00001")


BACKENDS: list[Callable[[Path], Volume]] = [_virtual, _ltfs]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _file(name: str, data: bytes = b"data") -> FileToWrite:
    return FileToWrite(name=name, chunks=[data])


@pytest.mark.parametrize("backend", BACKENDS, ids=["virtual", "ltfs"])
@pytest.mark.parametrize(("name", "reason"), BAD_NAMES, ids=[repr(n[:12]) for n, _ in BAD_NAMES])
def test_a_name_the_format_refuses_is_refused_before_anything_is_written(
    tmp_path: Path, backend: Callable[[Path], Volume], name: str, reason: str
) -> None:
    volume = backend(tmp_path)
    before = _snapshot(tmp_path)
    batch = [_file("good.bin"), _file(name)]  # the good one first: nothing of it may be written either
    with pytest.raises(InvalidFileName, match=reason):
        volume.write_files(batch)
    assert _snapshot(tmp_path) == before


def test_the_message_names_parameter_value_limit_and_fix() -> None:
    with pytest.raises(InvalidFileName, match=r"FileToWrite\.name='x{40}'\.\.\. is 300 bytes .* 255\. Fix: shorten"):
        check_name("x" * 300)


@pytest.mark.parametrize("backend", BACKENDS, ids=["virtual", "ltfs"])
def test_names_equal_after_nfc_are_refused(tmp_path: Path, backend: Callable[[Path], Volume]) -> None:
    volume = backend(tmp_path)
    with pytest.raises(InvalidFileName, match="given twice in one write"):
        volume.write_files([_file(CAFE_NFC), _file(CAFE_NFD)])
    volume.write_files([_file(CAFE_NFC)])
    with pytest.raises(InvalidFileName, match="equals the volume's 'café' after Unicode NFC"):
        volume.write_files([_file(CAFE_NFD)])
    volume.write_files([_file(CAFE_NFC, b"replaced")])  # the very same name replaces the file
    assert b"".join(volume.read(CAFE_NFC)) == b"replaced"


@pytest.mark.parametrize("backend", BACKENDS, ids=["virtual", "ltfs"])
def test_unusual_valid_names_round_trip_exactly(tmp_path: Path, backend: Callable[[Path], Volume]) -> None:
    names = [" lead", "trail ", "  both  ", " ", "ünïcødé ✓ 🎞", "x" * 255, "é" * 127, "a&b<c>'\"d", "-"]
    volume = backend(tmp_path)
    volume.write_files([_file(name, name.encode()) for name in names])
    assert {f.name for f in volume.ls()} == set(names)
    for name in names:
        assert b"".join(volume.read(name)) == name.encode()


def test_names_with_spaces_survive_the_next_append(tmp_path: Path) -> None:
    volume = _virtual(tmp_path)
    volume.write_files([_file(" spaced out ", b"1")])
    volume.write_files([_file("next", b"2")])
    assert sorted(f.name for f in volume.ls()) == [" spaced out ", "next"]
    assert _read_back(volume.cartridge.path) == {" spaced out ": b"1", "next": b"2"}
    assert volume.cartridge.consistent()


def test_xattr_keys_are_checked_like_names(tmp_path: Path) -> None:
    volume = _virtual(tmp_path)
    with pytest.raises(InvalidFileName, match=r"FileToWrite\.xattrs key of 'f'='a/b' contains '/'"):
        volume.write_files([FileToWrite(name="f", chunks=[b"1"], xattrs=(("a/b", "v"),))])
    assert os.listdir(volume.cartridge.path)  # still the formatted cartridge
    assert volume.ls() == []


def test_the_volume_name_is_checked_like_a_file_name(tmp_path: Path) -> None:
    cartridge = VirtualCartridge(tmp_path / "A00001", capacity_bytes=1 << 30)
    with pytest.raises(InvalidFileName, match=r"volume_name='a/b' contains '/'"):
        cartridge.format(barcode="A00001", volume_name="a/b", blocksize=BLOCK)
    assert not cartridge.path.exists()
