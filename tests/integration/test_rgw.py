"""Ceph RGW through boto3: round trips small and multipart, list, delete, and a wrong secret is a fast 403."""

from __future__ import annotations

import hashlib
import io
import os
import uuid

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from tierlake.config import Settings
from tiers.s3 import s3_client

BUCKET = "tierlake-lake"


def test_small_object_round_trip_list_and_delete(settings: Settings) -> None:
    client = s3_client(settings.s3)
    prefix = f"tests/rgw/{uuid.uuid4()}/"
    bodies = {f"{prefix}obj-{i}": os.urandom(1000 + i) for i in range(5)}
    for key, body in bodies.items():
        client.put_object(Bucket=BUCKET, Key=key, Body=body)
    for key, body in bodies.items():
        assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted(bodies)
    client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in bodies]})
    assert client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["KeyCount"] == 0


def test_multipart_round_trip_keeps_every_byte(settings: Settings) -> None:
    client = s3_client(settings.s3)
    key = f"tests/rgw/{uuid.uuid4()}/multipart.bin"
    body = os.urandom(21 * 1024 * 1024)  # 3 parts of 8 MiB with the config below
    config = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024)
    client.upload_fileobj(io.BytesIO(body), BUCKET, key, Config=config)
    head = client.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == len(body)
    assert head["ETag"].strip('"').endswith("-3"), "a multipart object's ETag ends with its part count"
    out = io.BytesIO()
    client.download_fileobj(BUCKET, key, out, Config=config)
    assert hashlib.sha256(out.getvalue()).digest() == hashlib.sha256(body).digest()
    client.delete_object(Bucket=BUCKET, Key=key)
    with pytest.raises(ClientError, match=r"404|Not Found"):
        client.head_object(Bucket=BUCKET, Key=key)


def test_wrong_secret_is_a_fast_403(settings: Settings) -> None:
    access_key, _ = settings.s3.require_credentials()
    client = s3_client(settings.s3, access_key=access_key, secret_key="not-the-secret")
    with pytest.raises(ClientError) as caught:
        client.list_objects_v2(Bucket=BUCKET)
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error["Error"]["Code"] == "SignatureDoesNotMatch"


def test_unknown_access_key_is_403(settings: Settings) -> None:
    client = s3_client(settings.s3, access_key="NOSUCHKEY0000000000", secret_key="whatever")
    with pytest.raises(ClientError) as caught:
        client.list_buckets()
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert caught.value.response["Error"]["Code"] == "InvalidAccessKeyId"


def test_configured_buckets_exist(settings: Settings) -> None:
    names = {b["Name"] for b in s3_client(settings.s3).list_buckets()["Buckets"]}
    assert set(settings.s3.buckets) <= names
