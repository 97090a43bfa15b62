"""AWS Signature Version 4 for the site server: verify what a client signed with the site's keys (header or
presigned-URL form), and sign what the site forwards to the origin with the origin's keys.

Verification rebuilds the canonical request from what arrived: the path and query decoded and re-encoded the way
S3 expects (so ``date=2024-01-01`` and ``date%3D2024-01-01`` agree), the headers the client listed in
``SignedHeaders``, and the payload hash the client declared in ``x-amz-content-sha256``. Bodies of writes are not
hashed here: the site forwards the declared hash and the origin checks the body against it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED = "UNSIGNED-PAYLOAD"
MAX_SKEW = dt.timedelta(minutes=15)
_AUTH = re.compile(r"AWS4-HMAC-SHA256\s+Credential=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-f]{64})")


class AuthFailure(Exception):
    """Carries the S3 error code (InvalidAccessKeyId, SignatureDoesNotMatch, AccessDenied, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Keys:
    access_key: str
    secret_key: str

    def __repr__(self) -> str:
        return f"Keys({self.access_key!r}, '****')"


def _encode(text: str, safe: str) -> str:
    return quote(text, safe=safe)


def canonical_uri(raw_path: str) -> str:
    return _encode(unquote(raw_path), "/~") or "/"


def canonical_query(raw_query: str, *, drop: str = "") -> str:
    pairs = []
    for part in raw_query.split("&") if raw_query else []:
        name, _, value = part.partition("=")
        name, value = unquote(name.replace("+", " ")), unquote(value.replace("+", " "))
        if name != drop:
            pairs.append((_encode(name, "-_.~"), _encode(value, "-_.~")))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def signature(
    *,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    signed_headers: list[str],
    payload_hash: str,
    amz_date: str,
    scope: str,
    secret: str,
    drop_query: str = "",
) -> str:
    """The hex signature of one request (``headers`` keyed by lower-case name)."""
    canonical_headers = "".join(f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed_headers)
    canonical = "\n".join(
        [
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(raw_query, drop=drop_query),
            canonical_headers,
            ";".join(signed_headers),
            payload_hash,
        ]
    )
    to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    date, region, service, _ = scope.split("/")
    return hmac.new(_signing_key(secret, date, region, service), to_sign.encode(), hashlib.sha256).hexdigest()


def _check_time(amz_date: str, now: dt.datetime, *, expires_s: int | None = None) -> None:
    try:
        when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise AuthFailure("AccessDenied", f"X-Amz-Date {amz_date!r} is not of the form 20240101T000000Z") from exc
    if expires_s is not None:
        if now > when + dt.timedelta(seconds=expires_s):
            raise AuthFailure("AccessDenied", "the presigned URL has expired")
    elif abs(now - when) > MAX_SKEW:
        raise AuthFailure("RequestTimeTooSkewed", f"the request time {amz_date} is more than 15 minutes off")


def verify(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    keys: Keys,
    *,
    now: dt.datetime | None = None,
) -> None:
    """Raise AuthFailure unless the request is signed with ``keys`` (``headers`` keyed by lower-case name)."""
    now = now or dt.datetime.now(dt.UTC)
    query = {unquote(k): unquote(v) for k, _, v in (p.partition("=") for p in raw_query.split("&") if p)}
    if "X-Amz-Signature" in query:  # presigned URL
        credential, signed, given = query.get("X-Amz-Credential", ""), query.get("X-Amz-SignedHeaders", ""), ""
        given = query["X-Amz-Signature"]
        amz_date = query.get("X-Amz-Date", "")
        _check_time(amz_date, now, expires_s=int(query.get("X-Amz-Expires", "0") or 0))
        payload, drop = UNSIGNED, "X-Amz-Signature"
    else:
        match = _AUTH.fullmatch(headers.get("authorization", "").strip())
        if match is None:
            raise AuthFailure("AccessDenied", "the request is not signed with AWS Signature Version 4")
        credential, signed, given = match.groups()
        amz_date = headers.get("x-amz-date", "")
        _check_time(amz_date, now)
        payload, drop = headers.get("x-amz-content-sha256", hashlib.sha256(b"").hexdigest()), ""
    access_key, _, scope = credential.partition("/")
    if not hmac.compare_digest(access_key, keys.access_key):
        raise AuthFailure("InvalidAccessKeyId", "the access key is not one of this site cache's keys")
    if scope.count("/") != 3 or not scope.endswith("/s3/aws4_request") or not amz_date.startswith(scope[:8]):
        raise AuthFailure("AuthorizationHeaderMalformed", f"the credential scope {scope!r} is invalid")
    expected = signature(
        method=method,
        raw_path=raw_path,
        raw_query=raw_query,
        headers=headers,
        signed_headers=signed.split(";"),
        payload_hash=payload,
        amz_date=amz_date,
        scope=scope,
        secret=keys.secret_key,
        drop_query=drop,
    )
    if not hmac.compare_digest(expected, given):
        raise AuthFailure("SignatureDoesNotMatch", "the signature does not match this site cache's secret key")


def sign(
    method: str,
    host: str,
    raw_path: str,
    raw_query: str,
    *,
    keys: Keys,
    region: str,
    payload_hash: str = UNSIGNED,
    extra: Mapping[str, str] | None = None,
    now: dt.datetime | None = None,
) -> dict[str, str]:
    """Headers that sign a request to the origin (``extra`` headers are signed too)."""
    now = now or dt.datetime.now(dt.UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    headers = {k.lower(): v for k, v in (extra or {}).items()}
    headers.update({"host": host, "x-amz-date": amz_date, "x-amz-content-sha256": payload_hash})
    names = sorted(headers)
    value = signature(
        method=method,
        raw_path=raw_path,
        raw_query=raw_query,
        headers=headers,
        signed_headers=names,
        payload_hash=payload_hash,
        amz_date=amz_date,
        scope=scope,
        secret=keys.secret_key,
    )
    headers["authorization"] = (
        f"{ALGORITHM} Credential={keys.access_key}/{scope}, SignedHeaders={';'.join(names)}, Signature={value}"
    )
    return headers
