"""The object-store conformance suite: every ObjectStore implementation passes the same tests.

Run on the local-directory store, on Ceph RGW (S3Store) from the session's real stack, and on the site cache
server in front of that RGW (reads through the site; the site is read-only, so writes go to RGW).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.site_server import Site, running_site
from tierlake.config import Settings
from tierlake.errors import NotFound
from tiers.store import LocalStore, ObjectChanged, ObjectInfo, ObjectStore, S3Store

BUCKET = "tierlake-lake"


class SiteReads(S3Store):
    """Reads (info, open, cat_file, ls) through the site server; writes and deletes at the origin."""

    def __init__(self, site: Site, origin: S3Store, settings: Settings) -> None:
        super().__init__(site.s3_settings(settings.s3))
        self.origin = origin

    def pipe_file(self, bucket: str, key: str, data: bytes) -> ObjectInfo:
        return self.origin.pipe_file(bucket, key, data)

    def put_file(self, bucket: str, key: str, path: Path) -> ObjectInfo:
        return self.origin.put_file(bucket, key, path)

    def rm(self, bucket: str, key: str) -> None:
        self.origin.rm(bucket, key)


@pytest.fixture(scope="module")
def site(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_site(settings, tmp_path_factory.mktemp("conformance-site")) as running:
        yield running


@pytest.fixture(params=["file", "s3", "site"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "file":
        (tmp_path / BUCKET).mkdir()
        yield LocalStore(tmp_path)
        return
    settings: Settings = request.getfixturevalue("settings")
    if request.param == "s3":
        yield S3Store(settings.s3)
    else:
        yield SiteReads(request.getfixturevalue("site"), S3Store(settings.s3), settings)


@pytest.fixture
def prefix() -> str:
    return f"tests/conformance/{uuid.uuid4()}/"


def test_protocol_is_implemented(store: ObjectStore) -> None:
    assert isinstance(store, ObjectStore)


def test_put_info_and_read_back(store: ObjectStore, prefix: str) -> None:
    body = os.urandom(300_000)
    put = store.pipe_file(BUCKET, prefix + "a.bin", body)
    info = store.info(BUCKET, prefix + "a.bin")
    assert (info.size, info.etag) == (len(body), put.etag)
    assert store.cat_file(BUCKET, prefix + "a.bin") == body


def test_ranged_reads_are_half_open(store: ObjectStore, prefix: str) -> None:
    body = bytes(range(256)) * 40
    store.pipe_file(BUCKET, prefix + "r.bin", body)
    assert store.cat_file(BUCKET, prefix + "r.bin", start=10, end=20) == body[10:20]
    assert store.cat_file(BUCKET, prefix + "r.bin", start=len(body) - 5) == body[-5:]
    assert store.cat_file(BUCKET, prefix + "r.bin", start=7, end=7) == b""
    with pytest.raises(ValueError, match="invalid"):
        store.cat_file(BUCKET, prefix + "r.bin", start=9, end=3)


def test_streaming_open_reads_in_chunks(store: ObjectStore, prefix: str) -> None:
    body = os.urandom(2_500_000)
    store.pipe_file(BUCKET, prefix + "s.bin", body)
    stream = store.open(BUCKET, prefix + "s.bin", start=1000, end=2_000_000)
    chunks = []
    try:
        while chunk := stream.read(65536):
            chunks.append(chunk)
    finally:
        stream.close()
    assert b"".join(chunks) == body[1000:2_000_000]


def test_a_rewrite_changes_the_etag_and_if_match_refuses_the_old_one(store: ObjectStore, prefix: str) -> None:
    first = store.pipe_file(BUCKET, prefix + "v.bin", b"version one")
    second = store.pipe_file(BUCKET, prefix + "v.bin", b"version two!")
    assert first.etag != second.etag
    assert store.cat_file(BUCKET, prefix + "v.bin", etag=second.etag) == b"version two!"
    with pytest.raises(ObjectChanged, match="replaced"):
        store.cat_file(BUCKET, prefix + "v.bin", etag=first.etag)


def test_put_file_and_ls_with_prefix(store: ObjectStore, prefix: str, tmp_path: Path) -> None:
    source = tmp_path / "upload.bin"
    source.write_bytes(os.urandom(5000))
    store.put_file(BUCKET, prefix + "dir/one.bin", source)
    store.pipe_file(BUCKET, prefix + "dir/two.bin", b"2")
    store.pipe_file(BUCKET, prefix + "other.bin", b"3")
    listed = {i.key: i.size for i in store.ls(BUCKET, prefix + "dir/")}
    assert listed == {prefix + "dir/one.bin": 5000, prefix + "dir/two.bin": 1}


def test_rm_then_missing_is_not_found(store: ObjectStore, prefix: str) -> None:
    store.pipe_file(BUCKET, prefix + "gone.bin", b"x")
    store.rm(BUCKET, prefix + "gone.bin")
    with pytest.raises(NotFound, match="no such object"):
        store.info(BUCKET, prefix + "gone.bin")
    with pytest.raises(NotFound, match="no such object"):
        store.cat_file(BUCKET, prefix + "gone.bin")
    assert store.ls(BUCKET, prefix + "gone") == []


def test_empty_object(store: ObjectStore, prefix: str) -> None:
    store.pipe_file(BUCKET, prefix + "empty", b"")
    assert store.info(BUCKET, prefix + "empty").size == 0
    assert store.cat_file(BUCKET, prefix + "empty") == b""


def test_open_info_names_the_version_it_streams(store: ObjectStore, prefix: str) -> None:
    body = os.urandom(1_200_000)
    put = store.pipe_file(BUCKET, prefix + "g.bin", body)
    info, stream = store.open_info(BUCKET, prefix + "g.bin")
    try:
        assert stream.read() == body
    finally:
        stream.close()
    assert (info.bucket, info.key, info.size, info.etag) == (BUCKET, prefix + "g.bin", len(body), put.etag)
    assert info.etag == store.info(BUCKET, prefix + "g.bin").etag
    with pytest.raises(NotFound, match="no such object"):
        store.open_info(BUCKET, prefix + "missing.bin")
