"""The tape tier: LTFS format constructs, virtual cartridges, mounted LTFS volumes, and the library."""

from tiers.tape.library import Library
from tiers.tape.names import InvalidFileName
from tiers.tape.virtual import FileToWrite, VirtualCartridge
from tiers.tape.volume import LtfsVolume, VirtualVolume, Volume, WrittenFile

BACKENDS = {"virtual": VirtualVolume, "ltfs": LtfsVolume}

__all__ = [
    "BACKENDS",
    "FileToWrite",
    "InvalidFileName",
    "Library",
    "LtfsVolume",
    "VirtualCartridge",
    "VirtualVolume",
    "Volume",
    "WrittenFile",
]
