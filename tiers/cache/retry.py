"""Bounded retries of reads from the origin that failed for a passing reason: the endpoint restarting (connection
refused or reset, a body cut short, a timeout, a 5xx answer). Anything else (NotFound, ObjectChanged, 4xx, a full
disk) is raised at once. Used by cache fills; the mirror's copies use the same rule."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from urllib3.exceptions import HTTPError as Urllib3Error

from tierlake.errors import NotFound, StorageError
from tiers.store import ObjectChanged

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


class ShortBody(StorageError):
    """The origin's answer ended before the bytes it announced (the connection was cut)."""


class OriginUnavailable(StorageError):
    """The origin kept failing for a passing reason until the retry budget ran out."""


@dataclass(frozen=True, kw_only=True)
class Retry:
    """``attempts`` tries, waiting ``first_s``, then twice as long each time, at most ``max_s`` between two."""

    attempts: int = 8
    first_s: float = 0.25
    max_s: float = 4.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.first_s < 0 or self.max_s < self.first_s:
            raise ValueError(f"retry {self!r} is invalid. Fix: attempts >= 1 and 0 <= first_s <= max_s")

    def budget_s(self) -> float:
        return float(sum(min(self.first_s * 2**n, self.max_s) for n in range(self.attempts - 1)))


def _http_status(exc: BaseException) -> int:
    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` says "try again shortly" rather than "this will not work"."""
    if isinstance(exc, (NotFound, ObjectChanged)):
        return False
    if isinstance(exc, (ShortBody, BotoCoreError, Urllib3Error, ConnectionError, TimeoutError)):
        return True
    if _http_status(exc) >= 500:
        return True
    cause = exc.__cause__
    return isinstance(exc, StorageError) and cause is not None and cause is not exc and transient(cause)


def with_retries(
    what: str,
    call: Callable[[], _T],
    policy: Retry = Retry(),
    *,
    fix: str = "check that the object store answers, then read again (nothing partial was kept)",
) -> _T:
    """``call()``, again after a passing failure, at most ``policy.attempts`` times; then OriginUnavailable."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return call()
        except Exception as exc:
            if not transient(exc):
                raise
            if attempt == policy.attempts:
                raise OriginUnavailable(
                    f"{what} failed {attempt} times over about {policy.budget_s():.0f} s, the last time with: "
                    f"{exc}. Fix: {fix}"
                ) from exc
            pause = min(policy.first_s * 2 ** (attempt - 1), policy.max_s)
            logger.warning(
                "%s failed (attempt %d of %d): %s; again in %.2f s", what, attempt, policy.attempts, exc, pause
            )
            time.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises
