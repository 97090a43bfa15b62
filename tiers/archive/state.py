"""The life of an archived file, and the only transitions allowed.

STAGED     copied from the object store to the staging folder, SHA-256 known (run journal)
WRITTEN    on both sites' cartridges, the volumes' indexes committed (run journal)
VERIFIED   both copies read back and their SHA-256 compared; the catalog row is written only now
PURGEABLE  retention of the online copy has ended and no legal hold applies (``archive retention``)
PURGED     the object-store copy was deleted (``archive purge --execute``); the tape copies remain

A legal hold sends PURGEABLE back to VERIFIED; a restore to the object store sends PURGED back to VERIFIED.
"""

from __future__ import annotations

import enum

from tierlake.errors import TierlakeError


class FileState(enum.Enum):
    STAGED = "STAGED"
    WRITTEN = "WRITTEN"
    VERIFIED = "VERIFIED"
    PURGEABLE = "PURGEABLE"
    PURGED = "PURGED"


TRANSITIONS: dict[FileState, frozenset[FileState]] = {
    FileState.STAGED: frozenset({FileState.WRITTEN}),
    FileState.WRITTEN: frozenset({FileState.VERIFIED}),
    FileState.VERIFIED: frozenset({FileState.PURGEABLE}),
    FileState.PURGEABLE: frozenset({FileState.PURGED, FileState.VERIFIED}),
    FileState.PURGED: frozenset({FileState.VERIFIED}),
}


class InvalidTransition(TierlakeError):
    """A file was asked to skip or reverse a step of its life."""


def advance(current: FileState, target: FileState, *, what: str = "file") -> FileState:
    if target not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "none"
        raise InvalidTransition(
            f"{what}: {current.value} -> {target.value} is not allowed (from {current.value}: {allowed})"
        )
    return target
