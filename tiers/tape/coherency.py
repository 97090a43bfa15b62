"""The consistency check of a virtual cartridge: what the reference ``ltfsck`` would refuse or rewrite.

``ltfsck`` scans both partitions whatever the MAM says, then rewrites the volume coherency information (VCI,
``attr_<P>_80c``) from what it found ("11233I Updating MAM coherency data"). A cartridge it accepts *unchanged*
therefore needs, besides valid indexes:

- both partitions ending in ``FM, index, FM, E``, the index partition's at block 5 (tierlake keeps no data there);
- the same generation on both, the index partition's back pointer at the data partition's index, and the same
  content (a torn index partition can carry the right generation and the wrong files);
- ``attr_0_9`` (the volume change reference, VCR) readable, and each partition's VCI equal to
  (VCR, generation, block of that partition's index, volume UUID);
- no stray files: one record file per block up to each partition's EOD, nothing after it, no temp files.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING

from tierlake.errors import TapeError
from tiers.tape import ltfs_format as fmt

if TYPE_CHECKING:
    from tiers.tape.virtual import VirtualCartridge

IP, DP = 0, 1
_RECORD = re.compile(r"([01])_(\d+)_([RFE])")
_OTHER = re.compile(r"attr_[01]_[0-9a-f]+|filedebug_tc_conf\.xml")


def problems(cartridge: VirtualCartridge) -> list[str]:
    """Every inconsistency found, each in one sentence; empty when ``ltfsck`` has nothing to change."""
    try:
        _barcode, label = cartridge.labels()
        dp, ip = cartridge.last_index(DP), cartridge.last_index(IP)
    except TapeError as exc:
        return [str(exc)]
    found = _index_problems(dp, ip, label.volume_uuid)
    found += _coherency_problems(cartridge, dp, ip)
    found += _stray_files(cartridge)
    return found


def _index_problems(dp: fmt.Index, ip: fmt.Index, volume_uuid: str) -> list[str]:
    found = []
    if ip.location.block != fmt.FIRST_INDEX_BLOCK:
        found.append(f"the index partition's index is at a:{ip.location.block}, not a:{fmt.FIRST_INDEX_BLOCK}")
    if (ip.generation, ip.previous) != (dp.generation, dp.location):
        found.append(
            f"the index partition holds generation {ip.generation} pointing at {ip.previous}, the data partition "
            f"generation {dp.generation} at {dp.location}"
        )
    elif replace(ip, location=dp.location, previous=dp.previous, creator=dp.creator) != dp:
        found.append(f"the two indexes of generation {dp.generation} differ (a torn index partition)")
    if dp.volume_uuid != volume_uuid or ip.volume_uuid != volume_uuid:
        found.append(f"an index names another volume than the label's {volume_uuid}")
    return found


def _coherency_problems(cartridge: VirtualCartridge, dp: fmt.Index, ip: fmt.Index) -> list[str]:
    """The VCR and both VCIs against the indexes, as ``ltfsck`` compares them before rewriting."""
    try:
        vcr = fmt.parse_vcr((cartridge.path / f"attr_{IP}_{fmt.MAM_VCR:x}").read_bytes())
    except (FileNotFoundError, TapeError) as exc:
        return [f"the volume change reference (attr_0_9) is unusable: {exc}"]
    found = []
    for part, index in ((IP, ip), (DP, dp)):
        name = f"attr_{part}_{fmt.MAM_VCI:x}"
        expected = (vcr, index.generation, index.location.block, index.volume_uuid)
        try:
            actual = fmt.parse_vci((cartridge.path / name).read_bytes())
        except (FileNotFoundError, TapeError) as exc:
            found.append(f"{name} (VCI) is unusable: {exc}")
            continue
        if actual != expected:
            found.append(f"{name} (VCI) holds (vcr, generation, block, uuid) {actual[:3]}, expected {expected[:3]}")
    return found


def _stray_files(cartridge: VirtualCartridge) -> list[str]:
    """Files the layout does not account for: past a partition's EOD, a second file for a block, temp files."""
    eods = {part: cartridge.eod(part) for part in (IP, DP)}
    seen: dict[tuple[int, int], str] = {}
    found = []
    for name in sorted(path.name for path in cartridge.path.iterdir()):
        match = _RECORD.fullmatch(name)
        if match is None:
            if not _OTHER.fullmatch(name):
                found.append(f"stray file {name}")
            continue
        part, block = int(match[1]), int(match[2])
        if block > eods[part]:
            found.append(f"stray record {name} after the EOD of partition {part} (block {eods[part]})")
        elif (part, block) in seen:
            found.append(f"two files for partition {part} block {block}: {seen[(part, block)]} and {name}")
        seen[(part, block)] = name
    return found
