"""Settings of the object store (S3 on Ceph RGW) and its keys, which come only from the environment or a secret file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tierlake.config.values import Values, bucket_name, url
from tierlake.errors import ConfigError


@dataclass(frozen=True)
class Secret:
    """A credential that never shows itself in repr, str or logs."""

    value: str = field(repr=False)

    def __str__(self) -> str:
        return "****" if self.value else ""

    def __repr__(self) -> str:
        return "Secret('****')"


@dataclass(frozen=True, kw_only=True)
class S3Settings:
    endpoint: str
    region: str
    lake_bucket: str
    buckets: tuple[str, ...]
    credentials_file: Path
    access_key: Secret
    secret_key: Secret

    def has_credentials(self) -> bool:
        return bool(self.access_key.value and self.secret_key.value)

    def require_credentials(self) -> tuple[str, str]:
        if not self.has_credentials():
            raise ConfigError(
                "no S3 credentials: set TIERLAKE_S3__ACCESS_KEY and TIERLAKE_S3__SECRET_KEY, or run "
                f"`tierlake stack up`, which creates {self.credentials_file} for the local Ceph"
            )
        return self.access_key.value, self.secret_key.value


def build_s3(values: Values, root: Path) -> S3Settings:
    buckets = values.get("s3.buckets", list, fix="a list of bucket names")
    for bucket in buckets:
        if (why := bucket_name(str(bucket))) is not None:
            raise values.fail("s3.buckets", bucket, why, "rename the bucket")
    lake_bucket = values.get("s3.lake_bucket", str, check=bucket_name, fix="one of s3.buckets")
    if lake_bucket not in buckets:
        raise values.fail("s3.lake_bucket", lake_bucket, f"not in s3.buckets {buckets}", "add it to s3.buckets")
    credentials_file = root / values.get("s3.credentials_file", str, fix="a path, e.g. .run/secrets/s3.env")
    access_key = values.get("s3.access_key", str, default="", fix="set TIERLAKE_S3__ACCESS_KEY")
    secret_key = values.get("s3.secret_key", str, default="", fix="set TIERLAKE_S3__SECRET_KEY")
    if bool(access_key) != bool(secret_key):
        given, missing = ("s3.access_key", "s3.secret_key") if access_key else ("s3.secret_key", "s3.access_key")
        raise ConfigError(
            f"{given} is set ({values.source(given)}) but {missing} is not. "
            "Fix: set both TIERLAKE_S3__ACCESS_KEY and TIERLAKE_S3__SECRET_KEY, or neither to use the secret file"
        )
    if not access_key:
        access_key, secret_key = read_credentials_file(credentials_file)
    return S3Settings(
        endpoint=values.get("s3.endpoint", str, check=url, fix="e.g. http://127.0.0.1:7480").rstrip("/"),
        region=values.get(
            "s3.region",
            str,
            fix="any non-empty region name, e.g. us-east-1",
            check=lambda r: None if r else "SigV4 signing needs a region",
        ),
        lake_bucket=lake_bucket,
        buckets=tuple(str(b) for b in buckets),
        credentials_file=credentials_file,
        access_key=Secret(access_key),
        secret_key=Secret(secret_key),
    )


def read_credentials_file(path: Path) -> tuple[str, str]:
    """``access_key=...`` / ``secret_key=...`` lines; ("", "") when the file does not exist yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "", ""
    pairs = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return pairs.get("access_key", "").strip(), pairs.get("secret_key", "").strip()
