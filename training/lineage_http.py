"""OpenLineage events over HTTP (``checkpoint.lineage_url``: Marquez or any OpenLineage endpoint), besides the files.

The files are the record: an event is written to its JSON-lines file (the checkpointer's ``checkpoints.jsonl``) or
to the lineage Delta table and ``lake.jsonl`` (``tierlake lineage sync``) *before* it is posted, so an endpoint
that is down or refuses it loses nothing. A failed post raises :class:`LineageUndelivered`, which names the
endpoint, the reason, where the events stay and how to send them again (``tierlake lineage send <file>``).

The posts go through OpenLineage's own ``HttpTransport`` (its JSON, headers and compression) with a bounded retry:
``attempts`` tries of each event on a refused connection or a 5xx answer, then the next event is not tried.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openlineage.client.transport.http import ApiKeyTokenProvider, HttpConfig, HttpTransport, TokenProvider
from requests import RequestException

from tierlake.config import CheckpointSettings, Secret
from tierlake.config.checkpoint import lineage_api_key
from tierlake.errors import StorageError

logger = logging.getLogger(__name__)
ENDPOINT = "api/v1/lineage"


class LineageUndelivered(StorageError):
    """Lineage events were kept in their file or table but the HTTP endpoint did not take them (``unsent``)."""

    def __init__(self, message: str, *, unsent: int) -> None:
        super().__init__(message)
        self.unsent = unsent


@dataclass(frozen=True, kw_only=True)
class LineageHttp:
    """Posts events to ``<url>/<endpoint>``; ``timeout_s`` per request, ``attempts`` per event (1 or more)."""

    url: str
    endpoint: str = ENDPOINT
    timeout_s: float = 5.0
    attempts: int = 2
    api_key: str = field(default="", repr=False)  # sent as ``Authorization: Bearer <key>``; never logged
    key_setting: str = ""  # the setting the key came from, named when the endpoint refuses it

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise StorageError(
                f"lineage url = {self.url!r} is not an http(s) URL. Fix: set checkpoint.lineage_url to the "
                "endpoint's base URL (e.g. http://marquez:5000), or leave it empty for the files alone"
            )
        if self.attempts < 1 or self.timeout_s <= 0:
            raise StorageError(
                f"attempts = {self.attempts}, timeout_s = {self.timeout_s}: need 1 or more attempts and a positive "
                "timeout. Fix: pass attempts >= 1 and timeout_s > 0"
            )

    @property
    def target(self) -> str:
        return f"{self.url.rstrip('/')}/{self.endpoint.lstrip('/')}"

    def _transport(self) -> HttpTransport:
        retry = {"total": self.attempts - 1, "connect": self.attempts - 1, "read": self.attempts - 1}
        config = HttpConfig(
            url=self.url.rstrip("/") + "/",
            endpoint=self.endpoint,
            timeout=self.timeout_s,
            retry={**_RETRY, **retry},
            auth=ApiKeyTokenProvider({"apiKey": self.api_key}) if self.api_key else TokenProvider({}),
        )
        return HttpTransport(config)

    def _refused_key(self, exc: BaseException) -> str:
        """The fix when the endpoint refused the request's credentials (401, 403); "" for any other failure."""
        response = getattr(exc, "response", None)
        if response is None or response.status_code not in (401, 403):
            return ""
        if self.key_setting:
            return (
                f"the endpoint refused the API key from {self.key_setting}. Fix: put a valid key there (the "
                "endpoint's API key, sent as Authorization: Bearer)"
            )
        return (
            "the endpoint wants an API key and none is configured. Fix: set checkpoint.lineage_api_key_env (the "
            "name of an environment variable holding the key) or checkpoint.lineage_api_key_file (a secrets file)"
        )

    def send(self, events: Iterable[Mapping[str, Any] | str], *, kept_in: str) -> int:
        """Post ``events`` in order (dicts or JSON strings); the number posted. Raises :class:`LineageUndelivered`
        at the first one the endpoint does not take; ``kept_in`` says where the events stay (the error says it)."""
        pending = [json.loads(e) if isinstance(e, str) else dict(e) for e in events]
        if not pending:
            return 0
        transport = self._transport()
        try:
            for sent, event in enumerate(pending):
                try:
                    transport.emit(event)  # type: ignore[arg-type]  # Serde takes a dict as it is
                except (RequestException, OSError) as exc:
                    unsent = len(pending) - sent
                    if refused := self._refused_key(exc):
                        raise LineageUndelivered(
                            f"{unsent} of {len(pending)} lineage events not delivered to {self.target}: "
                            f"{_reason(exc)}: {refused}. Nothing is lost: they stay in {kept_in}; send them again "
                            f"with `tierlake lineage send <file> --last {unsent}`",
                            unsent=unsent,
                        ) from exc
                    raise LineageUndelivered(
                        f"{unsent} of {len(pending)} lineage events not delivered to {self.target} after "
                        f"{self.attempts} attempt(s): {_reason(exc)}. Nothing is lost: they stay in {kept_in}. "
                        "Fix: check that the endpoint answers (checkpoint.lineage_url), then send them again with "
                        f"`tierlake lineage send <file> --last {unsent}` (the file's last {unsent} events; "
                        "an endpoint takes a repeated event as the same run state)",
                        unsent=unsent,
                    ) from exc
        finally:
            transport.close()
        logger.info("%d lineage events posted to %s", len(pending), self.target, extra={"target": self.target})
        return len(pending)


_RETRY = {
    "backoff_factor": 0.2,
    "status_forcelist": [500, 502, 503, 504],
    "allowed_methods": ["POST"],
    "raise_on_status": False,  # the last answer comes back, so the error can say which it was
}


def _reason(exc: BaseException) -> str:
    """The innermost cause, short: 'HTTP 503 Service Unavailable', 'connection refused', a timeout."""
    response = getattr(exc, "response", None)
    if response is not None:
        return f"HTTP {response.status_code} {response.reason}"
    text = str(exc)
    for marker in ("Connection refused", "timed out", "Name or service not known", "Max retries exceeded"):
        if marker in text:
            return f"{marker.lower()} ({type(exc).__name__})"
    return f"{type(exc).__name__}: {text[:300]}"


def lineage_http(url: str, *, api_key: Secret | None = None, key_setting: str = "") -> LineageHttp | None:
    """The sender for ``checkpoint.lineage_url``; None when it is empty (the files alone). ``api_key``: from
    :func:`lineage_http_for` (the settings' key, read at the process edge)."""
    if not url:
        return None
    return LineageHttp(url=url, api_key=api_key.value if api_key else "", key_setting=key_setting)


def lineage_http_for(section: CheckpointSettings, env: Mapping[str, str], url: str = "") -> LineageHttp | None:
    """The sender of the settings: ``url`` (default ``checkpoint.lineage_url``) with the API key that
    ``checkpoint.lineage_api_key_env`` or ``_file`` names; ``env`` is the process's environment, passed down by the
    entry point. Raises ConfigError naming the setting when it names a missing or empty key."""
    target = url or section.lineage_url
    if not target:
        return None
    key, setting = lineage_api_key(section, env)
    return lineage_http(target, api_key=key, key_setting=setting)


def events_in(path: Path) -> list[dict[str, Any]]:
    """The events of a JSON-lines file (the file transport's format), in order, for ``tierlake lineage send``."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise StorageError(f"{path}: cannot be read ({exc}). Fix: name a lineage events file (*.jsonl)") from exc
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError as exc:
            raise StorageError(f"{path}:{number}: not a JSON event ({exc}). Fix: repair or remove that line") from exc
    return events
