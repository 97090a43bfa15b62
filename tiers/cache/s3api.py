"""What the site server answers, as pure functions: which S3 operations it serves, ranges, conditional headers and
S3 error bodies, each behaving as Ceph RGW 16.2 does (checked side by side in tests/integration).

The site serves a read-only subset: GetObject and HeadObject (presigned too), ListObjects (V1 and V2),
ListBuckets, HeadBucket and GetBucketLocation. Every other operation (PUT, POST, DELETE, CopyObject, multipart,
tagging, ACL, versioning ...) is refused with ``501 NotImplemented``: a pass-through of writes has to re-sign
streamed, chunk-signed bodies and copy sources for the origin, and a wrong copy loses data (``aws s3 mv``), while a
refusal loses nothing and tells the client to write to the origin.
"""

from __future__ import annotations

import email.utils
import enum
import re
from collections.abc import Mapping
from xml.sax.saxutils import escape

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
PRESIGN_PREFIX = "x-amz-"  # X-Amz-Algorithm, -Credential, -Date, -Expires, -SignedHeaders, -Signature, -Security-Token
LIST_PARAMS = frozenset(
    {
        "list-type",
        "prefix",
        "delimiter",
        "max-keys",
        "continuation-token",
        "start-after",
        "marker",
        "encoding-type",
        "fetch-owner",
    }
)
# Headers of the origin's object that a read through the site returns as the origin would.
META_HEADERS = (
    "content-type",
    "content-encoding",
    "cache-control",
    "content-disposition",
    "content-language",
    "expires",
)


class Operation(enum.Enum):
    GET_OBJECT = "GetObject"
    HEAD_OBJECT = "HeadObject"
    LIST = "ListObjects"  # and ListObjectsV2, ListBuckets, HeadBucket, GetBucketLocation: passed to the origin
    REFUSED = "NotImplemented"


def operation(method: str, *, has_key: bool, query: Mapping[str, str]) -> Operation:
    """Which served operation a request is, or REFUSED. Presigned-URL parameters do not change the operation."""
    names = {name for name in query if not name.lower().startswith(PRESIGN_PREFIX)}
    if has_key:
        if names or method not in ("GET", "HEAD"):
            return Operation.REFUSED  # ?acl, ?tagging, ?uploadId, ?partNumber, ?versionId, PUT, POST, DELETE
        return Operation.GET_OBJECT if method == "GET" else Operation.HEAD_OBJECT
    if method == "HEAD" and not names:
        return Operation.LIST  # HeadBucket
    if method == "GET" and (names <= LIST_PARAMS or names == {"location"}):
        return Operation.LIST
    return Operation.REFUSED


def error_body(code: str, message: str, resource: str) -> bytes:
    """An S3 error document (the XML every S3 client parses for Code and Message)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
        f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message><Resource>{escape(resource)}</Resource>"
        "</Error>"
    ).encode()


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``a-`` / ``-n`` as a half-open range; None when unsatisfiable (416).

    Several ranges (``bytes=0-1,5-6``): RGW answers the first one with 206, and so does the site.
    """
    first_range = header.strip().split(",", 1)[0].strip()
    match = _RANGE.fullmatch(first_range)
    if match is None or size == 0:
        return None
    first, last = match.groups()
    if not first:
        if not last or int(last) == 0:
            return None
        return max(size - int(last), 0), size
    start = int(first)
    if last and int(last) < start:
        return None
    end = size if not last else min(int(last) + 1, size)
    return (start, end) if start < size else None


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/").strip('"') for tag in header.split(",")}


def precondition(headers: Mapping[str, str], *, etag: str, modified: float) -> int | None:
    """The status a conditional GET/HEAD answers instead of the object (412 or 304), or None to serve it.

    RFC 9110 order, as RGW: If-Match, then If-Unmodified-Since (only without If-Match), then If-None-Match, then
    If-Modified-Since (only without If-None-Match). Times compare at whole seconds (HTTP dates have no fraction).
    """
    seconds = int(modified)
    if (wanted := headers.get("If-Match")) is not None:
        if "*" not in _etags(wanted) and etag not in _etags(wanted):
            return 412
    elif (before := _http_seconds(headers.get("If-Unmodified-Since"))) is not None and seconds > before:
        return 412
    if (unwanted := headers.get("If-None-Match")) is not None:
        if "*" in _etags(unwanted) or etag in _etags(unwanted):
            return 304
    elif (since := _http_seconds(headers.get("If-Modified-Since"))) is not None and seconds <= since:
        return 304
    return None


def _http_seconds(header: str | None) -> float | None:
    """An HTTP date as a POSIX time; None when absent or not a date (then ignored, as RGW does)."""
    if header is None:
        return None
    try:
        return email.utils.parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError):
        return None
