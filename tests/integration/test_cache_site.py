"""Site mode against Ceph RGW: `tierlake cache serve` as a real process; boto3, delta-rs and Spark's s3a read
through it with the site's own keys and get what RGW holds; writes land at the origin; bad keys are refused."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

from tests.integration.site_server import Site, running_site
from tierlake.config import Settings
from tiers.s3 import delta_storage_options, s3_client

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

BUCKET = "tierlake-lake"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_site(settings, tmp_path_factory.mktemp("site")) as running:
        yield running


def _metric(site: Site, name: str) -> float:
    with urllib.request.urlopen(f"{site.endpoint}/_tierlake/metrics", timeout=5) as answer:  # noqa: S310
        text = answer.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_boto3_reads_objects_and_ranges_through_the_site(settings: Settings, site: Site) -> None:
    origin, via_site = s3_client(settings.s3), site.client()
    key = f"tests/site/{uuid.uuid4()}/obj.bin"
    body = os.urandom(3 * 1024 * 1024 + 123)
    origin.put_object(Bucket=BUCKET, Key=key, Body=body)
    head = via_site.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == len(body)
    assert head["ETag"] == origin.head_object(Bucket=BUCKET, Key=key)["ETag"]
    gets_before = _metric(site, "tierlake_cache_backend_gets_total")
    assert via_site.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
    assert via_site.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
    ranged = via_site.get_object(Bucket=BUCKET, Key=key, Range="bytes=1000-2999")
    assert ranged["Body"].read() == body[1000:3000]
    assert ranged["ContentRange"] == f"bytes 1000-2999/{len(body)}"
    assert via_site.get_object(Bucket=BUCKET, Key=key, Range="bytes=-10")["Body"].read() == body[-10:]
    assert _metric(site, "tierlake_cache_backend_gets_total") - gets_before == 1  # one fill served all four
    buffer = io.BytesIO()
    via_site.download_fileobj(BUCKET, key, buffer)
    assert buffer.getvalue() == body
    with pytest.raises(ClientError, match=r"404|Not Found"):
        via_site.head_object(Bucket=BUCKET, Key=key + ".missing")


def test_listings_pass_through_to_the_origin(settings: Settings, site: Site) -> None:
    origin, via_site = s3_client(settings.s3), site.client()
    prefix = f"tests/site/{uuid.uuid4()}/"
    for name in ("a", "b/c", "b/d"):
        origin.put_object(Bucket=BUCKET, Key=prefix + name, Body=name.encode())
    for kwargs in ({}, {"Delimiter": "/"}):
        mine = via_site.list_objects_v2(Bucket=BUCKET, Prefix=prefix, **kwargs)  # type: ignore[arg-type]
        theirs = origin.list_objects_v2(Bucket=BUCKET, Prefix=prefix, **kwargs)  # type: ignore[arg-type]
        assert [o["Key"] for o in mine.get("Contents", [])] == [o["Key"] for o in theirs.get("Contents", [])]
        assert mine.get("CommonPrefixes") == theirs.get("CommonPrefixes")


def test_writes_are_refused_and_origin_writes_are_never_served_stale(settings: Settings, site: Site) -> None:
    origin, via_site = s3_client(settings.s3), site.client()
    key = f"tests/site/{uuid.uuid4()}/written.txt"
    origin.put_object(Bucket=BUCKET, Key=key, Body=b"first")
    with pytest.raises(ClientError, match="NotImplemented"):
        via_site.put_object(Bucket=BUCKET, Key=key, Body=b"second!")
    with pytest.raises(ClientError, match="NotImplemented"):
        via_site.copy_object(Bucket=BUCKET, Key=key + ".copy", CopySource=f"{BUCKET}/{key}")
    with pytest.raises(ClientError, match="NotImplemented"):
        via_site.delete_object(Bucket=BUCKET, Key=key)
    with pytest.raises(ClientError, match="NotImplemented"):
        via_site.create_multipart_upload(Bucket=BUCKET, Key=key + ".mp")
    assert via_site.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"first"
    origin.put_object(Bucket=BUCKET, Key=key, Body=b"third, behind the site's back")
    assert via_site.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"third, behind the site's back"
    with pytest.raises(ClientError, match=r"404|Not Found"):
        origin.head_object(Bucket=BUCKET, Key=key + ".copy")


def test_wrong_keys_are_refused(site: Site) -> None:
    with pytest.raises(ClientError) as caught:
        site.client(secret="not-the-secret").list_objects_v2(Bucket=BUCKET, Prefix="tests/")
    assert caught.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as caught:
        site.client(access="AKIANOTOURS", secret="x").get_object(Bucket=BUCKET, Key="tests/x")
    assert caught.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    request = urllib.request.Request(f"{site.endpoint}/{BUCKET}/tests/x")  # noqa: S310 - no signature at all
    with pytest.raises(urllib.error.HTTPError, match="403"):
        urllib.request.urlopen(request, timeout=5)  # noqa: S310


def test_a_presigned_url_of_the_site_works(settings: Settings, site: Site) -> None:
    key = f"tests/site/{uuid.uuid4()}/presigned.txt"
    s3_client(settings.s3).put_object(Bucket=BUCKET, Key=key, Body=b"presigned body")
    url = site.client().generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=60)
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310
        assert answer.read() == b"presigned body"


@pytest.fixture(scope="module")
def delta_table(spark: SparkSession) -> str:
    table = f"s3a://{BUCKET}/tests/site/{uuid.uuid4()}/events"
    frame = spark.range(0, 5000).selectExpr("id", "id % 7 AS station", "cast(id * 1.5 AS double) AS kwh")
    frame.repartition(3).write.format("delta").save(table)
    spark.range(5000, 5200).selectExpr("id", "id % 7 AS station", "cast(id * 1.5 AS double) AS kwh").write.format(
        "delta"
    ).mode("append").save(table)
    return table


def _rows(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted((r["id"], r["station"], r["kwh"]) for r in records)


def test_boto3_and_delta_rs_read_a_delta_table_through_the_site(
    settings: Settings, site: Site, spark: SparkSession, delta_table: str
) -> None:
    from deltalake import DeltaTable  # noqa: PLC0415

    direct = _rows([r.asDict() for r in spark.read.format("delta").load(delta_table).collect()])
    assert len(direct) == 5200
    uri = "s3://" + delta_table.split("://", 1)[1]
    options = delta_storage_options(settings.s3) | {
        "AWS_ENDPOINT_URL": site.endpoint,
        "AWS_ACCESS_KEY_ID": site.access_key,
        "AWS_SECRET_ACCESS_KEY": site.secret_key,
    }
    through_delta_rs = DeltaTable(uri, storage_options=options)
    assert _rows(through_delta_rs.to_pyarrow_table().to_pylist()) == direct
    via_site, records = site.client(), []
    for file_uri in through_delta_rs.file_uris():
        key = file_uri.split(f"{BUCKET}/", 1)[1]
        body = via_site.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        records.extend(pq.read_table(io.BytesIO(body)).to_pylist())
    assert _rows(records) == direct


def test_spark_s3a_reads_a_delta_table_through_the_site(
    settings: Settings, site: Site, spark: SparkSession, delta_table: str
) -> None:
    direct = _rows([r.asDict() for r in spark.read.format("delta").load(delta_table).collect()])
    env = dict(os.environ)
    env.update(
        {
            "TIERLAKE_CEPH__MANAGED": "false",
            "TIERLAKE_S3__ENDPOINT": site.endpoint,
            "TIERLAKE_S3__ACCESS_KEY": site.access_key,
            "TIERLAKE_S3__SECRET_KEY": site.secret_key,
        }
    )
    gets_before = _metric(site, "tierlake_cache_backend_gets_total")
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.cache_workers", delta_table],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    line = next(line for line in out.splitlines() if line.startswith("ROWS "))
    assert _rows(json.loads(line[5:])) == direct
    assert _metric(site, "tierlake_cache_hits_total") > 0
    assert _metric(site, "tierlake_cache_backend_gets_total") >= gets_before
