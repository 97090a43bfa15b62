"""SigV4 verification of the site server against what botocore signs (offline: no request is sent)."""

from __future__ import annotations

import datetime as dt

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tiers.cache import sigv4

KEYS = sigv4.Keys("TLCACCESS", "site-secret")


def _signed(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> AWSRequest:
    request = AWSRequest(method=method, url=url, headers=headers or {})
    S3SigV4Auth(Credentials(KEYS.access_key, KEYS.secret_key), "s3", "us-east-1").add_auth(request)
    return request


def _verify(request: AWSRequest, keys: sigv4.Keys = KEYS) -> None:
    url, method = str(request.url), str(request.method)
    path, _, query = url.split("://", 1)[1].partition("/")[2].partition("?")
    headers = {k.lower(): str(v) for k, v in request.headers.items()}
    headers.setdefault("host", url.split("/")[2])
    sigv4.verify(method, "/" + path, query, headers, keys)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:7600/tierlake-lake/bronze/ev/part-0000.parquet",
        "http://127.0.0.1:7600/tierlake-lake/silver/date%3D2026-01-01/a%20b.parquet",
        "http://127.0.0.1:7600/tierlake-lake?list-type=2&prefix=bronze%2F&delimiter=%2F&max-keys=1000",
    ],
)
def test_botocore_signatures_verify(url: str) -> None:
    _verify(_signed(url, headers={"Range": "bytes=0-99"}))


def test_a_wrong_secret_or_key_or_a_tampered_request_is_refused() -> None:
    url = "http://127.0.0.1:7600/tierlake-lake/a.parquet"
    with pytest.raises(sigv4.AuthFailure, match="signature does not match"):
        _verify(_signed(url), sigv4.Keys(KEYS.access_key, "other-secret"))
    with pytest.raises(sigv4.AuthFailure, match="access key"):
        _verify(_signed(url), sigv4.Keys("SOMEONEELSE", KEYS.secret_key))
    tampered = _signed(url)
    tampered.url = url.replace("a.parquet", "b.parquet")
    with pytest.raises(sigv4.AuthFailure) as caught:
        _verify(tampered)
    assert caught.value.code == "SignatureDoesNotMatch"


def test_an_unsigned_or_old_request_is_refused() -> None:
    with pytest.raises(sigv4.AuthFailure, match="not signed"):
        sigv4.verify("GET", "/b/k", "", {"host": "h"}, KEYS)
    request = _signed("http://127.0.0.1:7600/b/k")
    headers = {k.lower(): v for k, v in request.headers.items()} | {"host": "127.0.0.1:7600"}
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    with pytest.raises(sigv4.AuthFailure, match="15 minutes"):
        sigv4.verify("GET", "/b/k", "", headers, KEYS, now=later)


def test_presigned_urls_verify() -> None:
    request = AWSRequest(method="GET", url="http://127.0.0.1:7600/tierlake-lake/x%3Dy/k.bin")
    S3SigV4QueryAuth(Credentials(KEYS.access_key, KEYS.secret_key), "s3", "us-east-1", expires=60).add_auth(request)
    _verify(request)


def test_what_sign_produces_verify_accepts() -> None:
    headers = sigv4.sign("GET", "rgw:7480", "/b/key with space", "list-type=2", keys=KEYS, region="eu-1")
    sigv4.verify("GET", "/b/key%20with%20space", "list-type=2", headers, KEYS)
