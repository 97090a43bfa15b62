"""When the cache may trust a version it already knows, without asking the origin (a HEAD) first.

Two rules, chosen per key:

- **Immutable keys** (``cache.immutable_patterns``): a key written once and never rewritten in place. Delta data
  files are such keys: a new table version writes new, uniquely named ``*.parquet`` files, and only the log under
  ``_delta_log/`` changes (``_last_checkpoint`` is rewritten in place). For these the cache keeps using the version
  it saw at fill time, with no HEAD per open. If such a key *is* overwritten anyway, the cache goes on serving the
  version it holds until that entry is evicted (``tierlake cache evict --prefix``); a fill still sends ``If-Match``,
  so it never mixes bytes of two versions.
- **Every other key** is revalidated: with ``cache.revalidate_s: 0`` every open asks the origin (a HEAD) which
  version is current, so a replaced object never serves stale bytes; with N > 0, a version seen less than N
  seconds ago is trusted.

Patterns are shell globs over the whole key (``fnmatch``: ``*`` also crosses ``/``), read in order; the last one
that matches decides, and a leading ``!`` makes a match mean "not immutable" (as in ``.gitignore``).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

# The default patterns (DELTA_DATA_FILES) and their syntax check live with the cache's options in
# tierlake.config.cache, so conf/ and the tier agree on one definition.
from tierlake.config.cache import DELTA_DATA_FILES, check_patterns

__all__ = ["DELTA_DATA_FILES", "check_patterns", "is_immutable"]


def is_immutable(key: str, patterns: tuple[str, ...]) -> bool:
    """True when the last pattern matching ``key`` is a positive one."""
    verdict = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if fnmatchcase(key, pattern[1:] if negated else pattern):
            verdict = not negated
    return verdict
