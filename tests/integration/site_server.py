"""`tierlake cache serve` as a real process for the integration tests: on ``cache.site_port`` of the session's
settings (so parallel stacks on other ports do not collide), with a cache folder and keys of its own."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config

from tierlake.config import Settings
from tierlake.config.s3 import S3Settings, Secret
from tiers.cache.site import load_or_create_keys

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Site:
    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    folder: Path

    def client(self, *, secret: str | None = None, access: str | None = None) -> S3Client:
        client: S3Client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=access or self.access_key,
            aws_secret_access_key=secret or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4", retries={"max_attempts": 1}),
        )
        return client

    def s3_settings(self, origin: S3Settings) -> S3Settings:
        """The origin's settings with the site as endpoint and the site's keys (for S3Store, s3a, delta-rs)."""
        return replace(
            origin, endpoint=self.endpoint, access_key=Secret(self.access_key), secret_key=Secret(self.secret_key)
        )


@contextmanager
def running_site(settings: Settings, folder: Path, *, block_bytes: int = 1024 * 1024) -> Iterator[Site]:
    env = dict(os.environ)
    env.update(
        {
            "TIERLAKE_CACHE__DIR": str(folder / "cache"),
            "TIERLAKE_CACHE__SITE_CREDENTIALS_FILE": str(folder / "site.env"),
            "TIERLAKE_CACHE__BLOCK_BYTES": str(block_bytes),
        }
    )
    port = settings.cache.site_port
    log = (folder / "serve.log").open("wb")
    process = subprocess.Popen(
        [str(ROOT / ".venv/bin/tierlake"), "cache", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint}/_tierlake/health", timeout=2) as answer:  # noqa: S310
                if answer.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the site server did not start on port {port}: {(folder / 'serve.log').read_text()}")
        time.sleep(0.2)
    keys = load_or_create_keys(folder / "site.env")
    try:
        yield Site(endpoint, keys.access_key, keys.secret_key, process, folder)
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
