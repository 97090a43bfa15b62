"""The site server over a local-directory cache, with a small fake origin for HEADs (content headers, buckets):
a read-only subset that refuses the rest with 501, conditional reads, the origin's content headers, RGW's range
answers, presigned GETs through the cache, a whole GET of a block-cached object, hits flushed when idle."""

from __future__ import annotations

import asyncio
import email.utils
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any, ClassVar

import boto3
import pytest
from aiohttp import ClientResponse, ClientSession, web
from aiohttp.test_utils import TestClient, TestServer
from botocore.config import Config

from tierlake.config.cache import CacheOptions
from tierlake.config.s3 import S3Settings, Secret
from tierlake.errors import StorageError
from tiers.cache import sigv4
from tiers.cache.core import WHOLE, EdgeCache
from tiers.cache.site import build_app
from tiers.store import LocalStore, ObjectInfo

BUCKET = "lake"
KEYS = sigv4.Keys("TLCSITEKEY", "site-secret")
BLOCK = 4096
META = {"Content-Type": "text/csv", "Content-Encoding": "gzip", "Cache-Control": "max-age=60", "x-amz-meta-owner": "ev"}


def _fake_origin(store: LocalStore) -> web.Application:
    async def head_object(request: web.Request) -> web.Response:
        info = store.info(request.match_info["bucket"], request.match_info["key"])
        meta = META if info.key.endswith(".gz") else {}
        return web.Response(headers={"ETag": f'"{info.etag}"', **meta})

    async def head_bucket(request: web.Request) -> web.Response:
        return web.Response(status=200 if (store.root / request.match_info["bucket"]).is_dir() else 404)

    app = web.Application()
    app.router.add_route("HEAD", "/{bucket}/{key:.+}", head_object)
    app.router.add_route("HEAD", "/{bucket}", head_bucket)
    return app


Call = Callable[..., Awaitable[ClientResponse]]


class _DownStore(LocalStore):
    """The origin restarting: a HEAD of a key in ``unreachable`` fails as a dead endpoint does."""

    unreachable: ClassVar[set[str]] = set()

    def info(self, bucket: str, key: str) -> ObjectInfo:
        if key in self.unreachable:
            raise StorageError(f"HEAD s3://{bucket}/{key} failed: Could not connect to the endpoint URL")
        return super().info(bucket, key)


def _run_site(
    tmp_path: Path, test: Callable[[Call, EdgeCache, LocalStore, str], Awaitable[None]], *, origin_up: bool = True
) -> None:
    (tmp_path / "origin" / BUCKET).mkdir(parents=True)
    store = _DownStore(tmp_path / "origin")
    cache = EdgeCache(store, CacheOptions(directory=tmp_path / "cache", max_bytes=1 << 24, block_bytes=BLOCK))

    async def main() -> None:
        async with TestServer(_fake_origin(store)) as origin_server:
            origin = S3Settings(
                endpoint=str(origin_server.make_url("")).rstrip("/") if origin_up else "http://127.0.0.1:9",
                region="us-east-1",
                lake_bucket=BUCKET,
                buckets=(BUCKET,),
                credentials_file=tmp_path / "s3.env",
                access_key=Secret("origin"),
                secret_key=Secret("origin-secret"),
            )
            async with TestClient(TestServer(build_app(cache, origin, KEYS))) as client:
                host = f"{client.host}:{client.port}"

                async def call(method: str, path: str, query: str = "", **headers: str) -> ClientResponse:
                    extra = {k.replace("_", "-"): v for k, v in headers.items()}
                    signed = sigv4.sign(method, host, path, query, keys=KEYS, region="us-east-1", extra=extra)
                    url = path + (f"?{query}" if query else "")
                    return await client.request(method, url, headers=signed, skip_auto_headers=["Content-Type"])

                await test(call, cache, store, str(client.make_url("")).rstrip("/"))

    asyncio.run(main())


def test_writes_copies_and_subresources_are_refused_with_501(tmp_path: Path) -> None:
    async def test(call: Call, _cache: EdgeCache, store: LocalStore, _url: str) -> None:
        store.pipe_file(BUCKET, "a.bin", b"keep me")
        refused: list[tuple[str, str, str, dict[str, str]]] = [
            ("PUT", "/lake/c.bin", "", {"x_amz_copy_source": "/lake/a.bin"}),
            ("PUT", "/lake/c.bin", "", {}),
            ("DELETE", "/lake/a.bin", "", {}),
            ("POST", "/lake/c.bin", "uploads=", {}),
            ("GET", "/lake/a.bin", "tagging=", {}),
            ("PUT", "/lake/a.bin", "acl=", {}),
            ("GET", "/lake", "versioning=", {}),
            ("DELETE", "/lake", "", {}),
        ]
        for method, path, query, headers in refused:
            answer = await call(method, path, query, **headers)
            assert (method, path, answer.status) == (method, path, 501)
            assert "<Code>NotImplemented</Code>" in await answer.text()
        assert store.cat_file(BUCKET, "a.bin") == b"keep me"
        assert not (store.root / BUCKET / "c.bin").exists()

    _run_site(tmp_path, test)


def test_conditional_reads_answer_304_or_412_like_rgw(tmp_path: Path) -> None:
    async def test(call: Call, _cache: EdgeCache, store: LocalStore, _url: str) -> None:
        info = store.pipe_file(BUCKET, "t/x.parquet", b"x" * 100)
        assert (await call("GET", "/lake/t/x.parquet")).status == 200  # cached now
        later = email.utils.formatdate(info.last_modified + 3600, usegmt=True)
        earlier = email.utils.formatdate(info.last_modified - 3600, usegmt=True)
        assert (await call("GET", "/lake/t/x.parquet", If_None_Match=f'"{info.etag}"')).status == 304
        assert (await call("HEAD", "/lake/t/x.parquet", If_None_Match=f'"{info.etag}"')).status == 304
        assert (await call("GET", "/lake/t/x.parquet", If_Modified_Since=later)).status == 304
        assert (await call("GET", "/lake/t/x.parquet", If_Modified_Since=earlier)).status == 200
        assert (await call("GET", "/lake/t/x.parquet", If_None_Match='"other"', If_Modified_Since=later)).status == 200
        assert (await call("GET", "/lake/t/x.parquet", If_Match='"other"')).status == 412
        assert (await call("GET", "/lake/t/x.parquet", If_Unmodified_Since=earlier)).status == 412

    _run_site(tmp_path, test)


def test_the_origins_content_headers_are_kept(tmp_path: Path) -> None:
    async def test(call: Call, _cache: EdgeCache, store: LocalStore, _url: str) -> None:
        store.pipe_file(BUCKET, "t/x.csv.gz", b"gzipped")
        for method in ("GET", "HEAD", "GET"):  # a miss, then hits
            answer = await call(method, "/lake/t/x.csv.gz")
            assert {name: answer.headers.get(name) for name in META} == META

    _run_site(tmp_path, test)


def test_ranges_and_missing_buckets_answer_as_rgw(tmp_path: Path) -> None:
    async def test(call: Call, _cache: EdgeCache, store: LocalStore, _url: str) -> None:
        store.pipe_file(BUCKET, "t/x.bin", bytes(range(100)))
        store.pipe_file(BUCKET, "t/empty.bin", b"")
        several = await call("GET", "/lake/t/x.bin", Range="bytes=0-1,5-6")
        assert (several.status, await several.read()) == (206, bytes([0, 1]))
        assert (await call("GET", "/lake/t/empty.bin", Range="bytes=0-")).status == 416
        assert (await call("GET", "/lake/t/empty.bin")).status == 200
        missing = await call("GET", "/nosuchbucket/t/x.bin")
        assert (missing.status, "<Code>NoSuchBucket</Code>" in await missing.text()) == (404, True)
        missing = await call("GET", "/lake/t/nosuchkey")
        assert (missing.status, "<Code>NoSuchKey</Code>" in await missing.text()) == (404, True)

    _run_site(tmp_path, test)


def test_a_presigned_get_is_served_through_the_cache(tmp_path: Path) -> None:
    async def test(_call: Call, cache: EdgeCache, store: LocalStore, url: str) -> None:
        store.pipe_file(BUCKET, "t/p.bin", b"presigned")
        client: Any = boto3.client(
            "s3",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id=KEYS.access_key,
            aws_secret_access_key=KEYS.secret_key,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )
        presigned = client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "t/p.bin"})
        bad = presigned.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        async with ClientSession() as session:
            for _ in range(2):
                async with session.get(presigned) as answer:
                    assert (answer.status, await answer.read()) == (200, b"presigned")
            async with session.get(bad) as answer:
                assert answer.status == 403
        assert cache.stats().counters["hits"] == 1

    _run_site(tmp_path, test)


def test_a_whole_get_of_a_block_cached_object_stores_no_second_copy(tmp_path: Path) -> None:
    async def test(call: Call, cache: EdgeCache, store: LocalStore, _url: str) -> None:
        body = os.urandom(3 * BLOCK + 10)
        store.pipe_file(BUCKET, "t/big.parquet", body)
        assert (await (await call("GET", "/lake/t/big.parquet", Range="bytes=0-9")).read()) == body[:10]
        assert await (await call("GET", "/lake/t/big.parquet")).read() == body
        blocks = sorted(row.block for row in cache.index.entries())
        assert blocks == [0, 1, 2, 3]
        assert WHOLE not in blocks

    _run_site(tmp_path, test)


def test_an_overwritten_immutable_key_is_refetched_once(tmp_path: Path) -> None:
    async def test(call: Call, _cache: EdgeCache, store: LocalStore, _url: str) -> None:
        store.pipe_file(BUCKET, "t/o.parquet", b"a" * 3 * BLOCK)
        assert (await call("GET", "/lake/t/o.parquet", Range="bytes=0-9")).status == 206
        store.pipe_file(BUCKET, "t/o.parquet", b"b" * 4 * BLOCK)
        ranged = await call("GET", "/lake/t/o.parquet", Range=f"bytes={2 * BLOCK}-{2 * BLOCK + 9}")
        assert (ranged.status, await ranged.read()) == (206, b"b" * 10)
        whole = await call("GET", "/lake/t/o.parquet")
        assert (whole.status, await whole.read()) == (200, b"b" * 4 * BLOCK)

    _run_site(tmp_path, test)


def _stored_hits(cache: EdgeCache) -> int:
    with closing(sqlite3.connect(cache.root / "index.sqlite")) as db:
        return int(db.execute("SELECT value FROM counters WHERE name = 'hits'").fetchone()[0])


def test_an_idle_site_writes_its_buffered_hits(tmp_path: Path) -> None:
    async def test(call: Call, cache: EdgeCache, store: LocalStore, _url: str) -> None:
        store.pipe_file(BUCKET, "t/h.parquet", b"h" * 10)
        for _ in range(4):  # a miss, a first hit (written at once), two buffered hits
            assert (await call("GET", "/lake/t/h.parquet")).status == 200
        deadline = time.monotonic() + 30  # a bound on waiting for the event, not a timing assertion
        while _stored_hits(cache) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert _stored_hits(cache) == 3

    _run_site(tmp_path, test)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [("bytes=0-1,5-6", 10, (0, 2)), ("bytes=-3", 10, (7, 10)), ("bytes=8-", 10, (8, 10)), ("bytes=0-", 0, None)],
)
def test_parse_range(header: str, size: int, expected: tuple[int, int] | None) -> None:
    from tiers.cache.s3api import parse_range  # noqa: PLC0415

    assert parse_range(header, size) == expected


def test_an_origin_that_is_down_answers_503_and_hits_are_still_served(tmp_path: Path) -> None:
    async def test(call: Call, cache: EdgeCache, store: LocalStore, _url: str) -> None:
        store.pipe_file(BUCKET, "t/up.parquet", b"cached")
        store.pipe_file(BUCKET, "down/x.bin", b"unreachable")
        _DownStore.unreachable.add("down/x.bin")
        cache.cat(BUCKET, "t/up.parquet")
        hit = await call("GET", "/lake/t/up.parquet")  # the origin's HEAD for content headers fails: served anyway
        assert (hit.status, await hit.read()) == (200, b"cached")
        down = await call("GET", "/lake/down/x.bin")
        assert (down.status, "<Code>ServiceUnavailable</Code>" in await down.text()) == (503, True)
        missing = await call("GET", "/lake/t/nosuchkey")
        assert missing.status == 404

    _run_site(tmp_path, test, origin_up=False)
