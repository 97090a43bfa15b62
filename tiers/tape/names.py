"""File names on an LTFS volume: what the format accepts, checked before anything is written, in every backend.

The reference implementation (``pathname_validate_file``, ``xml_parse_filename``) normalises a name to Unicode NFC
and refuses it when it is empty, longer than 255, contains ``/`` or a character XML cannot carry, or is not UTF-8.
One bad name makes the whole index unreadable for it (17031E, 17004E, 17037E), so a volume must never hold one.
tierlake refuses, with :class:`InvalidFileName`:

- the empty name, ``.`` and ``..`` (a mount hides them);
- ``/`` (the path separator);
- more than 255 bytes of UTF-8 (the format counts code points; bytes is the stricter bound, so both agree);
- control characters (Unicode category Cc: U+0000-U+001F, U+007F-U+009F) and U+FFFE/U+FFFF;
- a string that is not valid Unicode (lone surrogates cannot be encoded as UTF-8);
- two names in one directory that are equal after NFC but differ as strings (a mount shows only one of them).

Leading and trailing spaces are allowed and kept exactly.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from tierlake.errors import TapeError

NAME_MAX_BYTES = 255
_NONCHARACTERS = frozenset("\ufffe\uffff")


class InvalidFileName(TapeError, ValueError):
    """A file name the LTFS format refuses (the message names the value, the rule and the fix)."""


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def check_name(name: str, *, parameter: str = "FileToWrite.name") -> str:
    """``name`` unchanged when the LTFS format accepts it as one directory entry; InvalidFileName otherwise."""
    if name in ("", ".", ".."):
        raise InvalidFileName(
            f"{parameter}={name!r} is not a file name: LTFS refuses the empty name, '.' and '..'. "
            "Fix: give the file a name of 1 to 255 bytes"
        )
    if "/" in name:
        raise InvalidFileName(
            f"{parameter}={name!r} contains '/': a volume is flat and '/' separates paths. Fix: replace the '/'"
        )
    try:
        size = len(_nfc(name).encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidFileName(
            f"{parameter}={name!r} is not valid Unicode ({exc.reason} at {exc.start}): LTFS names are UTF-8. "
            "Fix: decode the name with errors='strict' before writing"
        ) from exc
    bad = next((c for c in name if unicodedata.category(c) == "Cc" or c in _NONCHARACTERS), None)
    if bad is not None:
        raise InvalidFileName(
            f"{parameter}={name!r} contains U+{ord(bad):04X}, a control character or non-character that LTFS "
            "index XML cannot carry. Fix: remove or replace it"
        )
    if size > NAME_MAX_BYTES:
        raise InvalidFileName(
            f"{parameter}={name[:40]!r}... is {size} bytes of UTF-8 (NFC), over the LTFS limit of {NAME_MAX_BYTES}. "
            "Fix: shorten the name"
        )
    return name


def check_names(names: Iterable[str], *, existing: Iterable[str] = ()) -> None:
    """Every name valid, and no two alike after NFC: within ``names`` (one write), nor with an ``existing`` entry of
    the directory that is not the very same string (the same string replaces that file)."""
    on_volume = {_nfc(name): name for name in existing}
    batch: dict[str, str] = {}
    for name in names:
        key = _nfc(check_name(name))
        if key in batch:
            raise InvalidFileName(
                f"FileToWrite.name={name!r} is given twice in one write (as {batch[key]!r}; names are compared after "
                "Unicode NFC). Fix: write each name once"
            )
        batch[key] = name
        other = on_volume.get(key)
        if other is not None and other != name:
            raise InvalidFileName(
                f"FileToWrite.name={name!r} equals the volume's {other!r} after Unicode NFC normalisation; a mount "
                f"would show only one of them. Fix: write it as {other!r} to replace that file, or rename it"
            )
