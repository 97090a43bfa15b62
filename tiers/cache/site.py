"""Site mode: the cache served to other nodes as an S3 endpoint (aiohttp), with its own access keys (SigV4).

A read-only subset of S3 (tiers.cache.s3api says which, and why): ``GET`` and ``HEAD`` of an object go through the
cache (``Range`` honoured: a ranged GET fills only the blocks it touches; conditional headers and the origin's
Content-Type, Content-Encoding, Cache-Control and ``x-amz-meta-*`` answered as RGW does; presigned URLs too).
Listings, HeadBucket and GetBucketLocation are passed to the origin, re-signed with the origin's keys. Every other
operation answers ``501 NotImplemented``: writes go to the origin directly. ``/_tierlake/metrics`` (Prometheus)
and ``/_tierlake/health`` need no key. Point boto3 (``endpoint_url``), the AWS CLI, s5cmd or s3a
(``fs.s3a.endpoint``, path-style) at ``http://<host>:<port>``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import secrets
from collections.abc import Awaitable, Callable
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import quote, urlsplit

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from tierlake.config import S3Settings
from tierlake.errors import CacheFull, NotFound, StorageError
from tiers.cache import sigv4
from tiers.cache.core import EdgeCache
from tiers.cache.index import HIT_FLUSH_S
from tiers.cache.metrics import prometheus_text
from tiers.cache.s3api import META_HEADERS, PRESIGN_PREFIX, Operation, error_body, operation, parse_range, precondition
from tiers.store import CHUNK, ObjectChanged, ObjectInfo

logger = logging.getLogger(__name__)
_T = TypeVar("_T")
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


def _error(request: web.Request, status: int, code: str, message: str) -> web.Response:
    body = None if request.method == "HEAD" else error_body(code, message, request.path)
    return web.Response(status=status, body=body, content_type="application/xml")


def _refuse(request: web.Request) -> web.Response:
    return _error(
        request,
        501,
        "NotImplemented",
        f"this site cache serves reads only (GET/HEAD of objects, listings); {request.method} {request.path_qs} "
        "is not one. Fix: send writes, copies, deletes, multipart, tagging and ACL calls to the origin endpoint",
    )


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
        return _error(request, 403, exc.code, str(exc))
    return await handler(request)


def _object_headers(info: ObjectInfo, meta: dict[str, str]) -> dict[str, str]:
    headers = {"ETag": f'"{info.etag}"', "Accept-Ranges": "bytes", "Content-Type": "binary/octet-stream"}
    if info.last_modified:
        headers["Last-Modified"] = email.utils.formatdate(info.last_modified, usegmt=True)
    for name, value in meta.items():
        headers[name.title() if not name.startswith("x-amz-meta-") else name] = value
    return headers


async def _object(request: web.Request) -> web.StreamResponse:
    """GetObject / HeadObject through the cache. A version the origin replaced behind an immutable key's back
    (If-Match fails at the origin) costs one refetch: the stale head and entries are dropped and the read retried."""
    cache, bucket, key = request.app[CACHE_KEY], request.match_info["bucket"], request.match_info["key"]
    if operation(request.method, has_key=True, query=request.query) is Operation.REFUSED:
        return _refuse(request)
    for attempt in range(2):
        try:
            return await _serve_object(request, cache, bucket, key)
        except ObjectChanged:
            logger.warning("s3://%s/%s changed at the origin (attempt %d): refetching", bucket, key, attempt + 1)
            await _run(cache.forget, bucket, key)
        except CacheFull as exc:
            logger.warning("cache full, passing %s/%s through: %s", bucket, key, exc)
            return await _forward(request)
        except StorageError as exc:  # the origin is down or restarting: S3 clients retry a 503
            logger.warning("s3://%s/%s: %s", bucket, key, exc)
            return _error(request, 503, "ServiceUnavailable", f"the origin did not answer: {exc}; retry")
    return _error(request, 503, "SlowDown", "the object changed twice while it was read; retry")


async def _serve_object(  # noqa: PLR0911 - one return per S3 answer
    request: web.Request, cache: EdgeCache, bucket: str, key: str
) -> web.StreamResponse:
    try:
        info = await _run(cache.info, bucket, key)
    except NotFound:
        if await _bucket_missing(request, bucket):
            return _error(request, 404, "NoSuchBucket", f"the bucket {bucket} does not exist")
        return _error(request, 404, "NoSuchKey", f"{bucket}/{key} does not exist")
    headers = _object_headers(info, await _meta(request, info))
    if (status := precondition(request.headers, etag=info.etag, modified=info.last_modified)) == 412:
        return _error(request, 412, "PreconditionFailed", "a precondition (If-Match, If-Unmodified-Since) failed")
    if status == 304:
        return web.Response(status=304, headers={k: v for k, v in headers.items() if k in ("ETag", "Last-Modified")})
    start, end, status = 0, info.size, 200
    if "Range" in request.headers:
        span = parse_range(request.headers["Range"], info.size)
        if span is None:
            return _error(request, 416, "InvalidRange", "the requested range is not satisfiable")
        (start, end), status = span, 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{info.size}"
    if request.method == "HEAD":
        headers["Content-Length"] = str(end - start)
        return web.Response(status=status, headers=headers)
    if status == 206:
        body = await _run(cache.read_range, bucket, key, start, end, info=info)
        return web.Response(status=206, body=body, headers=headers)
    if info.size > cache.options.block_bytes and await _run(cache.blocks_cached, info):
        return await _stream_blocks(request, cache, info, headers)  # no second, whole copy of what blocks hold
    return await _stream_whole(request, cache, info, headers)


def _open_whole(cache: EdgeCache, info: ObjectInfo) -> BinaryIO:
    with cache.open_path(info.bucket, info.key, info=info, verify=True) as path:
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


async def _stream_blocks(
    request: web.Request, cache: EdgeCache, info: ObjectInfo, headers: dict[str, str]
) -> web.StreamResponse:
    """A whole GET of an object cached as blocks, block by block (each checked whole against its CRC-32C).

    The first block is read before the answer starts, so a replaced object is found while a retry is possible.
    """
    step = cache.options.block_bytes
    chunk = await _run(cache.read_range, info.bucket, info.key, 0, step, info=info)
    response = web.StreamResponse(status=200, headers=headers)
    response.content_length = info.size
    await response.prepare(request)
    await response.write(chunk)
    for start in range(step, info.size, step):
        await response.write(await _run(cache.read_range, info.bucket, info.key, start, start + step, info=info))
    await response.write_eof()
    return response


def _origin_headers(
    request: web.Request, method: str, path: str, query: str, extra: dict[str, str]
) -> tuple[str, dict[str, str]]:
    """The URL and signed headers of a request to the origin, with the origin's keys."""
    origin = request.app[ORIGIN_KEY]
    access, secret = origin.require_credentials()
    headers = sigv4.sign(
        method,
        urlsplit(origin.endpoint).netloc,
        path,
        query,
        keys=sigv4.Keys(access, secret),
        region=origin.region,
        extra=extra,
    )
    return f"{origin.endpoint}{path}" + (f"?{query}" if query else ""), headers


async def _bucket_missing(request: web.Request, bucket: str) -> bool:
    url, headers = _origin_headers(request, "HEAD", "/" + quote(bucket), "", {})
    try:
        async with request.app[SESSION_KEY].head(url, headers=headers) as answer:
            return answer.status == 404
    except (ClientError, TimeoutError) as exc:  # the origin is restarting: say NoSuchKey, as before the check
        logger.warning("HEAD of bucket %s at the origin failed: %s", bucket, exc)
        return False


async def _meta(request: web.Request, info: ObjectInfo) -> dict[str, str]:
    """The origin's content headers of this version: remembered, else one HEAD (once per version and node)."""
    cache = request.app[CACHE_KEY]
    if (known := await _run(cache.index.meta, info.bucket, info.key, info.etag)) is not None:
        return known
    path = urlsplit(request.raw_path).path
    url, headers = _origin_headers(request, "HEAD", path, "", {})
    try:
        async with request.app[SESSION_KEY].head(url, headers=headers) as answer:
            if answer.status != 200 or answer.headers.get("ETag", "").strip('"') != info.etag:
                return {}  # another version now: the read finds out through If-Match and refetches
            meta = {
                name.lower(): value
                for name, value in answer.headers.items()
                if name.lower() in META_HEADERS or name.lower().startswith("x-amz-meta-")
            }
    except (ClientError, TimeoutError) as exc:  # a hit is still served while the origin restarts, without them
        logger.warning("HEAD of s3://%s/%s at the origin failed: %s", info.bucket, info.key, exc)
        return {}
    await _run(cache.index.remember_meta, info.bucket, info.key, info.etag, meta)
    return meta


async def _listing(request: web.Request) -> web.StreamResponse:
    if operation(request.method, has_key=False, query=request.query) is Operation.REFUSED:
        return _refuse(request)
    return await _forward(request)


async def _forward(request: web.Request) -> web.StreamResponse:
    """Pass a read (a listing, HeadBucket, GetBucketLocation) to the origin and stream its answer back."""
    raw = urlsplit(request.raw_path)
    query = "&".join(p for p in raw.query.split("&") if p and not p.lower().startswith(PRESIGN_PREFIX))
    extra = {name: request.headers[name] for name in ("Range", "If-Match", "If-None-Match") if name in request.headers}
    url, headers = _origin_headers(request, request.method, raw.path, query, extra)
    async with request.app[SESSION_KEY].request(request.method, url, headers=headers) as answer:
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


async def _flush_hits_when_idle(app: web.Application) -> Any:
    """Buffered hits reach the index within HIT_FLUSH_S even when no further request comes to write them."""

    async def flush() -> None:
        while True:
            await asyncio.sleep(HIT_FLUSH_S / 2)
            await _run(app[CACHE_KEY].index.flush_hits)

    task = asyncio.create_task(flush())
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    await _run(app[CACHE_KEY].index.flush_hits)


def build_app(cache: EdgeCache, origin: S3Settings, keys: sigv4.Keys) -> web.Application:
    app = web.Application(middlewares=[_authenticate], client_max_size=0)
    app[CACHE_KEY], app[ORIGIN_KEY], app[KEYS_KEY] = cache, origin, keys
    app.cleanup_ctx.append(_session_context)
    app.cleanup_ctx.append(_flush_hits_when_idle)
    app.router.add_get("/_tierlake/metrics", _metrics)
    app.router.add_get("/_tierlake/health", _health)
    app.router.add_route("*", "/{bucket}/{key:.+}", _object)
    app.router.add_route("*", "/{bucket}", _listing)
    app.router.add_route("*", "/{bucket}/", _listing)
    app.router.add_route("*", "/", _listing)
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
