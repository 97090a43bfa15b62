"""The tape library: one pool of cartridges per site, slots, drives, and a volume per mounted cartridge.

Layout under ``archive.library_dir``::

    <site>/library.json            the pool: slots (slot number -> barcode), drives, capacity, backend
    <site>/cartridges/<barcode>/   virtual backend: the cartridge in the LTFS file-backend layout
    <site>/mnt/<barcode>/          ltfs backend: where the cartridge's LTFS volume is mounted
    <site>/drives/<n>.lock         a drive is held by whoever holds its flock (a killed holder frees it)

Mounting a cartridge takes a free drive, runs the changer and mount commands (ltfs backend; none for virtual),
and recovers an interrupted volume to its last consistent index before anyone uses it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shlex
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tierlake.errors import TapeError
from tiers.store import publish_atomically
from tiers.tape.virtual import VirtualCartridge
from tiers.tape.volume import LtfsVolume, VirtualVolume, Volume

logger = logging.getLogger(__name__)
MEDIA = "L8"


@dataclass(frozen=True, kw_only=True)
class Slot:
    site: str
    slot: int
    barcode: str


class LibraryConfig(Protocol):
    """What the library needs to know (``tierlake.config.ArchiveSettings`` provides it)."""

    @property
    def backend(self) -> str: ...
    @property
    def library_dir(self) -> Path: ...
    @property
    def sites(self) -> tuple[str, ...]: ...
    @property
    def cartridges_per_site(self) -> int: ...
    @property
    def drives_per_site(self) -> int: ...
    @property
    def cartridge_capacity_mb(self) -> int: ...
    @property
    def block_size(self) -> int: ...
    @property
    def drive_mb_s(self) -> float: ...
    @property
    def changer_load(self) -> str: ...
    @property
    def changer_unload(self) -> str: ...
    @property
    def mount_command(self) -> str: ...
    @property
    def unmount_command(self) -> str: ...


def barcode_for(site_index: int, number: int) -> str:
    """Six-character volser: a letter per site, five digits (``A00001``); the media suffix (L8) is not in VOL1."""
    return f"{chr(ord('A') + site_index)}{number:05d}"


class Library:
    def __init__(self, settings: LibraryConfig) -> None:
        self.settings = settings
        self.root = settings.library_dir

    # -- inventory ----------------------------------------------------------------------------------------

    def ensure(self) -> None:
        """Create each site's pool on first use: slots with barcodes, formatted cartridges (virtual backend)."""
        if all((self.root / site / "library.json").exists() for site in self.settings.sites):
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".library.lock").open("a") as lock:  # two site writers may start the library at once
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._create_pools()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _create_pools(self) -> None:
        for index, site in enumerate(self.settings.sites):
            manifest = self.root / site / "library.json"
            if manifest.exists():
                continue
            slots = {str(n): barcode_for(index, n) for n in range(1, self.settings.cartridges_per_site + 1)}
            for barcode in slots.values():
                if self.settings.backend == "virtual":
                    cartridge = self._cartridge(site, barcode)
                    if not cartridge.path.exists():
                        cartridge.format(
                            barcode=barcode,
                            volume_name=f"{site}-{barcode}",
                            blocksize=self.settings.block_size,
                            pool=site,
                        )
                else:
                    (self.root / site / "mnt" / barcode).mkdir(parents=True, exist_ok=True)
            body: dict[str, object] = {"site": site, "pool": site, "media": MEDIA, "slots": slots}
            body |= {"backend": self.settings.backend, "drives": self.settings.drives_per_site}
            body["capacity_mb"] = self.settings.cartridge_capacity_mb
            publish_atomically(manifest, json.dumps(body, indent=2).encode())

    def slots(self, site: str) -> list[Slot]:
        self.ensure()
        manifest = json.loads((self.root / site / "library.json").read_text())
        return [
            Slot(site=site, slot=int(n), barcode=b)
            for n, b in sorted(manifest["slots"].items(), key=lambda x: int(x[0]))
        ]

    def find(self, barcode: str) -> Slot:
        for site in self.settings.sites:
            for slot in self.slots(site):
                if slot.barcode == barcode:
                    return slot
        raise TapeError(f"cartridge {barcode!r} is in no pool of {self.root}. Fix: `tierlake archive query` lists them")

    def _cartridge(self, site: str, barcode: str) -> VirtualCartridge:
        return VirtualCartridge(
            self.root / site / "cartridges" / barcode,
            capacity_bytes=self.settings.cartridge_capacity_mb * 1024 * 1024,
            mb_per_s=self.settings.drive_mb_s,
        )

    def cartridge_dir(self, barcode: str) -> Path:
        slot = self.find(barcode)
        sub = "cartridges" if self.settings.backend == "virtual" else "mnt"
        return self.root / slot.site / sub / barcode

    # -- drives -------------------------------------------------------------------------------------------

    @contextmanager
    def _drive(self, site: str, timeout_s: float = 600.0) -> Iterator[int]:
        folder = self.root / site / "drives"
        folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout_s
        while True:
            for drive in range(self.settings.drives_per_site):
                handle = (folder / f"{drive}.lock").open("a")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                try:
                    yield drive
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
                    handle.close()
                return
            if time.monotonic() > deadline:
                raise TapeError(
                    f"no free drive at {site} within {timeout_s:.0f} s ({self.settings.drives_per_site} drives)"
                )
            time.sleep(0.2)

    @contextmanager
    def _cartridge_lock(self, site: str, barcode: str) -> Iterator[None]:
        folder = self.root / site / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"{barcode}.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _run(self, template: str, **fields: object) -> None:
        if not template:
            return
        command = [part.format(**fields) for part in shlex.split(template)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0:
            raise TapeError(f"`{shlex.join(command)}` failed ({result.returncode}): {result.stderr.strip()[-300:]}")

    @contextmanager
    def mount(self, barcode: str) -> Iterator[Volume]:
        """Load a cartridge into a free drive of its site and mount it; recovered if a writer died on it."""
        slot = self.find(barcode)
        with self._cartridge_lock(slot.site, barcode), self._drive(slot.site) as drive:
            mount = self.root / slot.site / "mnt" / barcode
            fields = {"barcode": barcode, "slot": slot.slot, "drive": drive, "mount": mount, "site": slot.site}
            volume: Volume
            if self.settings.backend == "virtual":
                volume = VirtualVolume(self._cartridge(slot.site, barcode), barcode)
            else:
                self._run(self.settings.changer_load, **fields)
                self._run(self.settings.mount_command, **fields)
                volume = LtfsVolume(mount, barcode)
            try:
                recovered = volume.recover()
                if recovered is not None:
                    logger.warning("%s: recovered to generation %d", barcode, recovered, extra={"cartridge": barcode})
                yield volume
            finally:
                if self.settings.backend != "virtual":
                    self._run(self.settings.unmount_command, **fields)
                    self._run(self.settings.changer_unload, **fields)

    def choose(self, site: str, needed: int) -> str:
        """The first cartridge of the site's pool with room for ``needed`` bytes (pools fill in slot order)."""
        for slot in self.slots(site):
            if self.settings.backend != "virtual":
                return slot.barcode
            cartridge = self._cartridge(site, slot.barcode)
            if cartridge.capacity_bytes - cartridge.used_bytes() >= needed:
                return slot.barcode
        raise TapeError(
            f"no cartridge at {site} has {needed / 1e6:.1f} MB free. Fix: raise archive.cartridges_per_site "
            "(new pools only) or add cartridges to the pool"
        )
