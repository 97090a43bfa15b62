"""The `ltfs` backend over a plain directory (LTFS's virtual attributes emulated with user.* xattrs), and the
library: pools with barcodes, drives, changer/mount command templates, and recovery at mount."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from tierlake.config import ArchiveSettings, load_settings
from tierlake.errors import TapeError
from tiers.tape.library import Library
from tiers.tape.virtual import FileToWrite
from tiers.tape.volume import HASH_XATTR, LtfsVolume, get_xattr, set_xattr

REPO = Path(__file__).resolve().parents[2]


def test_ltfs_volume_on_a_plain_directory(tmp_path: Path) -> None:
    volume = LtfsVolume(tmp_path, "A00001")
    payload = os.urandom(100_000)
    [written] = volume.write_files([FileToWrite(name="agg-1", chunks=[payload[:7], payload[7:]], xattrs=(("k", "v"),))])
    assert (tmp_path / "agg-1").read_bytes() == payload
    assert b"".join(volume.read("agg-1", start=5, length=10)) == payload[5:15]
    # Linux refuses names without a namespace: the hash lands in user.ltfs.hash.sha256sum.
    assert os.getxattr(tmp_path / "agg-1", f"user.{HASH_XATTR}").decode() == written.sha256
    assert get_xattr(tmp_path / "agg-1", "k") == "v"
    assert (written.start_block, written.volume_uuid) == (-1, "")  # not an LTFS mount: extent unknown
    assert volume.block_size() is None
    # What LTFS exposes on a real mount, emulated: the extent and identity are read back.
    set_xattr(tmp_path, "ltfs.volumeUUID", "6b3cb9c2-0000-4000-8000-000000000000")
    set_xattr(tmp_path, "ltfs.volumeBlocksize", "262144")
    assert volume.block_size() == 262144
    set_xattr(tmp_path / "agg-1", "ltfs.startblock", "7")
    set_xattr(tmp_path / "agg-1", "ltfs.partition", "b")
    [listed] = volume.ls()
    assert (listed.start_block, listed.partition, listed.volume_uuid) == (
        7,
        "b",
        "6b3cb9c2-0000-4000-8000-000000000000",
    )
    with pytest.raises(TapeError, match="contains '/'"):
        volume.read("../etc")


def _archive(tmp_path: Path, **changes: Any) -> ArchiveSettings:
    archive = load_settings("ci", conf_dir=REPO / "conf", env={}).archive
    return dataclasses.replace(
        archive, library_dir=tmp_path / "tape", cartridges_per_site=2, block_size=4096, **changes
    )


def test_ltfs_library_runs_changer_and_mount_templates(tmp_path: Path) -> None:
    archive = _archive(
        tmp_path,
        backend="ltfs",
        changer_load="touch {mount}/loaded-slot{slot}-drive{drive}",
        mount_command="touch {mount}/mounted",
        unmount_command="rm {mount}/mounted",
    )
    library = Library(archive)
    with library.mount("B00002") as volume:
        mount = tmp_path / "tape" / "site-b" / "mnt" / "B00002"
        assert (mount / "mounted").exists()
        assert (mount / "loaded-slot2-drive0").exists()
        volume.write_files([FileToWrite(name="x", chunks=[b"1"])])
    assert not (mount / "mounted").exists()
    failing = Library(dataclasses.replace(archive, mount_command="false"))
    with pytest.raises(TapeError, match="`false` failed"), failing.mount("A00001"):
        pass


def test_virtual_library_pools_and_choice(tmp_path: Path) -> None:
    library = Library(_archive(tmp_path, cartridge_capacity_mb=1))
    assert [s.barcode for s in library.slots("site-a")] == ["A00001", "A00002"]
    assert library.find("B00002").site == "site-b"
    with pytest.raises(TapeError, match="in no pool"):
        library.find("Z00001")
    with library.mount("A00001") as volume:
        assert volume.block_size() == 4096  # from the cartridge's label
        volume.write_files([FileToWrite(name="big", chunks=[os.urandom(1024 * 1024 - 10_000)])])
    assert library.choose("site-a", 100_000) == "A00002"  # A00001 is nearly full
    with pytest.raises(TapeError, match="no cartridge at site-a"):
        library.choose("site-a", 10 * 1024 * 1024)
