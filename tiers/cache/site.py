"""Site mode: the cache served to other nodes as an S3 endpoint (aiohttp), with its own access keys (SigV4).

Reads go through the cache: ``HEAD`` and ``GET`` of an object (``Range`` honoured: a ranged GET fills only the
blocks it touches). Everything else is passed through to the origin, re-signed with the origin's keys: bucket
listings (ListObjectsV2 and the rest), and every write (PUT, POST, DELETE), so a write never lands in the cache
and the next HEAD sees the new ETag. ``/_tierlake/metrics`` (Prometheus) and ``/_tierlake/health`` need no key.
Point boto3 (``endpoint_url``) or s3a (``fs.s3a.endpoint``, path-style) at ``http://<host>:<port>``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

from aiohttp import ClientSession, ClientTimeout, web

from tierlake.config import S3Settings
from tierlake.errors import CacheFull, NotFound, StorageError
from tiers.cache import sigv4
from tiers.cache.core import EdgeCache
from tiers.cache.metrics import prometheus_text
from tiers.store import CHUNK, ObjectChanged, ObjectInfo

logger = logging.getLogger(__name__)
_T = TypeVar("_T")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_FORWARDED = ("content-type", "content-md5", "content-length", "cache-control", "content-disposition")
CACHE_KEY = web.AppKey("cache", EdgeCache)
ORIGIN_KEY = web.AppKey("origin", S3Settings)
KEYS_KEY = web.AppKey("keys", sigv4.Keys)
SESSION_KEY = web.AppKey("session", ClientSession)


def load_or_create_keys(path: Path) -> sigv4.Keys:
    """The site's keys from ``access_key=`` / ``secret_key=`` lines; created (mode 0600) when absent."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        access, secret = "TLC" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
        path.write_text(f"access_key={access}\nsecret_key={secret}\n", encoding="utf-8")
        path.chmod(0o600)
        logger.info("created site cache keys in %s", path)
    pairs = dict(line.split("=", 1) for line in path.read_text(encoding="utf-8").splitlines() if "=" in line)
    access, secret = pairs.get("access_key", "").strip(), pairs.get("secret_key", "").strip()
    if not access or not secret:
        raise StorageError(f"{path} lacks access_key= or secret_key=. Fix: delete it; `cache serve` makes new keys")
    return sigv4.Keys(access, secret)


def _error(status: int, code: str, message: str, *, head: bool = False) -> web.Response:
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return web.Response(status=status, body=None if head else body.encode(), content_type="application/xml")


async def _run(call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    return await asyncio.get_running_loop().run_in_executor(None, partial(call, *args, **kwargs))


@web.middleware
async def _authenticate(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path.startswith("/_tierlake/"):
        return await handler(request)
    raw = urlsplit(request.raw_path)
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        sigv4.verify(request.method, raw.path, raw.query, headers, request.app[KEYS_KEY])
    except sigv4.AuthFailure as exc:
        logger.info("refused %s %s: %s", request.method, request.path, exc.code)
        return _error(403, exc.code, str(exc), head=request.method == "HEAD")
    return await handler(request)


def _object_headers(info: ObjectInfo) -> dict[str, str]:
    headers = {
        "ETag": f'"{info.etag}"',
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }
    if info.last_modified:
        headers["Last-Modified"] = email.utils.formatdate(info.last_modified, usegmt=True)
    return headers


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``a-`` / ``-n`` as a half-open range; None when unsatisfiable."""
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last or int(last) == 0:
            return None
        return max(size - int(last), 0), size
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    return (start, end) if start < size and start < end else None


async def _object(request: web.Request) -> web.StreamResponse:  # noqa: PLR0911 - one return per S3 answer
    cache, bucket, key = request.app[CACHE_KEY], request.match_info["bucket"], request.match_info["key"]
    head = request.method == "HEAD"
    if request.query:  # ?acl, ?tagging, ?uploadId=...: not the read path, ask the origin
        return await _forward(request)
    try:
        info = await _run(cache.info, bucket, key)
    except NotFound:
        return _error(404, "NoSuchKey", f"{bucket}/{key} does not exist", head=head)
    headers = _object_headers(info)
    if (wanted := request.headers.get("If-Match")) and wanted.strip('"') != info.etag:
        return _error(412, "PreconditionFailed", "If-Match does not match the current ETag", head=head)
    span: tuple[int, int] | None = (0, info.size)
    if "Range" in request.headers and info.size:
        span = _parse_range(request.headers["Range"], info.size)
        if span is None:
            headers["Content-Range"] = f"bytes */{info.size}"
            return _error(416, "InvalidRange", "the requested range is not satisfiable", head=head)
        headers["Content-Range"] = f"bytes {span[0]}-{span[1] - 1}/{info.size}"
    status = 206 if "Content-Range" in headers else 200
    start, end = span or (0, info.size)
    if head:
        headers["Content-Length"] = str(end - start)
        return web.Response(status=status, headers=headers)
    try:
        if status == 206:
            body = await _run(cache.read_range, bucket, key, start, end, info=info)
            return web.Response(status=206, body=body, headers=headers)
        return await _stream_whole(request, cache, info, headers)
    except ObjectChanged:
        return _error(503, "SlowDown", "the object changed while it was read; retry", head=head)
    except CacheFull as exc:
        logger.warning("cache full, passing %s/%s through: %s", bucket, key, exc)
        return await _forward(request)


def _open_whole(cache: EdgeCache, info: ObjectInfo) -> BinaryIO:
    with cache.open_path(info.bucket, info.key, info=info) as path:
        return path.open("rb")  # once open, an eviction cannot take the bytes away from this reader


async def _stream_whole(
    request: web.Request, cache: EdgeCache, info: ObjectInfo, headers: dict[str, str]
) -> web.StreamResponse:
    handle = await _run(_open_whole, cache, info)
    try:
        response = web.StreamResponse(status=200, headers=headers)
        response.content_length = info.size
        await response.prepare(request)
        while chunk := await _run(handle.read, 4 * CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        handle.close()


async def _forward(request: web.Request) -> web.StreamResponse:
    """Pass a request to the origin, re-signed with the origin's keys, and stream its answer back."""
    origin, cache = request.app[ORIGIN_KEY], request.app[CACHE_KEY]
    declared = request.headers.get("x-amz-content-sha256", sigv4.UNSIGNED)
    if declared.startswith("STREAMING-"):
        return _error(
            501,
            "NotImplemented",
            "chunk-signed uploads cannot be re-signed for the origin: send UNSIGNED-PAYLOAD or a plain body hash "
            "(s3a: fs.s3a.signing-algorithm=AWS4UnsignedPayloadSignerType), or write to the origin directly",
        )
    raw = urlsplit(request.raw_path)
    target = urlsplit(origin.endpoint)
    extra = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED or k.lower().startswith("x-amz-meta-")}
    for name in ("Range", "If-Match", "If-None-Match"):
        if name in request.headers:
            extra[name] = request.headers[name]
    access, secret = origin.require_credentials()
    headers = sigv4.sign(
        request.method,
        target.netloc,
        raw.path,
        raw.query,
        keys=sigv4.Keys(access, secret),
        region=origin.region,
        payload_hash=declared,
        extra=extra,
    )
    url = f"{origin.endpoint}{raw.path}" + (f"?{raw.query}" if raw.query else "")
    body = request.content if request.can_read_body else None
    session = request.app[SESSION_KEY]
    async with session.request(
        request.method, url, headers=headers, data=body, skip_auto_headers=["Content-Type"]
    ) as answer:
        response = web.StreamResponse(status=answer.status)
        for name in ("Content-Type", "Content-Length", "ETag", "Last-Modified", "Content-Range", "Accept-Ranges"):
            if name in answer.headers:
                response.headers[name] = answer.headers[name]
        for name, value in answer.headers.items():
            if name.lower().startswith("x-amz-"):
                response.headers[name] = value
        await response.prepare(request)
        async for chunk in answer.content.iter_chunked(CHUNK):
            await response.write(chunk)
        await response.write_eof()
    if request.method in ("PUT", "POST", "DELETE") and request.match_info.get("key"):
        await _run(cache.index.forget_head, request.match_info["bucket"], request.match_info["key"])
    return response


async def _metrics(request: web.Request) -> web.Response:
    text = await _run(prometheus_text, request.app[CACHE_KEY])
    return web.Response(body=text, content_type="text/plain", charset="utf-8")


async def _health(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _session_context(app: web.Application) -> Any:
    app[SESSION_KEY] = ClientSession(timeout=ClientTimeout(total=None, sock_connect=5, sock_read=60))
    yield
    await app[SESSION_KEY].close()


def build_app(cache: EdgeCache, origin: S3Settings, keys: sigv4.Keys) -> web.Application:
    app = web.Application(middlewares=[_authenticate], client_max_size=0)
    app[CACHE_KEY], app[ORIGIN_KEY], app[KEYS_KEY] = cache, origin, keys
    app.cleanup_ctx.append(_session_context)
    app.router.add_get("/_tierlake/metrics", _metrics)
    app.router.add_get("/_tierlake/health", _health)
    app.router.add_route("HEAD", "/{bucket}/{key:.+}", _object)
    app.router.add_route("GET", "/{bucket}/{key:.+}", _object)
    app.router.add_route("*", "/{bucket}/{key:.+}", _forward)
    app.router.add_route("*", "/{bucket}", _forward)
    app.router.add_route("*", "/{bucket}/", _forward)
    app.router.add_route("*", "/", _forward)
    return app


def serve(cache: EdgeCache, origin: S3Settings, keys: sigv4.Keys, *, host: str, port: int) -> None:
    """Run the site server until interrupted."""
    logger.info("site cache on http://%s:%d in front of %s (cache %s)", host, port, origin.endpoint, cache.root)
    try:
        web.run_app(build_app(cache, origin, keys), host=host, port=port, print=None, access_log=None)
    except OSError as exc:
        raise StorageError(
            f"the site cache cannot listen on {host}:{port}: {exc.strerror or exc}. "
            "Fix: choose another --port (cache.site_port) or stop what uses it"
        ) from exc
