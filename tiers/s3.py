"""S3 clients for Ceph RGW (or any S3 endpoint), built from settings: path-style, bounded retries and timeouts.

Bounded timeouts matter: a wrong endpoint or a stopped RGW must fail in seconds with a clear error, not hang.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tierlake.config import S3Settings
from tierlake.errors import ConfigError, StorageError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def s3_client(
    s3: S3Settings,
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
    connect_timeout_s: float = 5,
    read_timeout_s: float = 60,
    attempts: int = 3,
    sign_payload: bool = True,
) -> S3Client:
    """A boto3 S3 client for ``s3.endpoint``. Explicit keys override the configured ones (tests use that).

    ``sign_payload=False``: request bodies are sent as ``UNSIGNED-PAYLOAD`` with no extra checksum, so botocore
    does not SHA-256 every byte again (it does on plain HTTP otherwise); for callers that verified the bytes
    themselves (a recall from tape checks each file's SHA-256 before completing its upload).
    """
    configured_access, configured_secret = (
        (access_key, secret_key) if access_key and secret_key else s3.require_credentials()
    )
    s3_options: Any = {"addressing_style": "path"} | ({} if sign_payload else {"payload_signing_enabled": False})
    config = Config(
        s3=s3_options,
        request_checksum_calculation="when_supported" if sign_payload else "when_required",
        signature_version="s3v4",
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        retries={"max_attempts": attempts, "mode": "standard"},
    )
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name=s3.region,
        aws_access_key_id=configured_access,
        aws_secret_access_key=configured_secret,
        config=config,
    )
    return client


_REFUSED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken"}


def check_credentials(s3: S3Settings) -> None:
    """Refuse at once, with the fix, when ``s3.endpoint`` refuses the configured keys.

    One listing of at most one key of the lake bucket, with a 2 s budget and no retries. Only a refusal of the keys
    raises: an endpoint that does not answer, a missing bucket or absent keys are left to the command, which says so
    in its own terms.
    """
    if not s3.has_credentials():
        return
    access_key = s3.require_credentials()[0]
    client = s3_client(s3, connect_timeout_s=2, read_timeout_s=2, attempts=1)
    try:
        client.list_objects_v2(Bucket=s3.lake_bucket, MaxKeys=1)  # a GET: the error body names the reason
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = exc.response.get("Error", {}).get("Code", "?")
        if code in _REFUSED or status == 403:
            raise ConfigError(
                f"the S3 keys were refused by {s3.endpoint} ({code} on bucket "
                f"{s3.lake_bucket!r}, access key {access_key[:4]}...). Fix: set TIERLAKE_S3__ACCESS_KEY and "
                f"TIERLAKE_S3__SECRET_KEY, or correct {s3.credentials_file}, to keys that endpoint knows"
            ) from exc
    except BotoCoreError:
        return  # unreachable or slow: not a verdict on the keys


def ensure_buckets(client: S3Client, buckets: tuple[str, ...]) -> list[str]:
    """Create the buckets that do not exist yet; returns those created."""
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", []) if "Name" in b}
    created = []
    for bucket in buckets:
        if bucket in existing:
            continue
        try:
            client.create_bucket(Bucket=bucket)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise StorageError(f"creating bucket {bucket!r} failed with {code}: {exc}") from exc
        created.append(bucket)
    return created


def delta_storage_options(s3: S3Settings) -> dict[str, str]:
    """Options for delta-rs (``deltalake``) to read and write tables on this endpoint."""
    access_key, secret_key = s3.require_credentials()
    return {
        "AWS_ENDPOINT_URL": s3.endpoint,
        "AWS_REGION": s3.region,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_ALLOW_HTTP": "true" if s3.endpoint.startswith("http://") else "false",
        "AWS_S3_ADDRESSING_STYLE": "path",
        "AWS_FORCE_PATH_STYLE": "true",
        # RGW 16.2 honours If-None-Match (measured, reference/ceph-single-node.md): delta-rs commits safely.
        "conditional_put": "etag",
    }
