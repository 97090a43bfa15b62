"""Outside S3 clients against the site server and against RGW side by side: the AWS CLI and s5cmd (installed by
infra/bootstrap.sh into the user cache) read byte-identical objects and listings; writes through the site are
refused without losing anything (``aws s3 mv``); status codes and content headers match RGW's."""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.site_server import Site, running_site
from tierlake.config import Settings
from tiers.cache import sigv4
from tiers.s3 import s3_client

BUCKET = "tierlake-lake"


def _clients_bin() -> Path:
    cache = os.environ.get("TIERLAKE_CACHE") or str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")))
    folder = Path(cache) / ("" if "TIERLAKE_CACHE" in os.environ else "tierlake") / "s3-clients" / "bin"
    for tool in ("aws", "s5cmd"):
        if not (folder / tool).is_file():
            pytest.fail(f"{tool} is missing from {folder}. Fix: run infra/bootstrap.sh (step 4 installs aws and s5cmd)")
    return folder


@pytest.fixture(scope="module")
def site(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_site(settings, tmp_path_factory.mktemp("clients-site")) as running:
        yield running


@pytest.fixture(scope="module")
def objects(settings: Settings) -> dict[str, bytes]:
    prefix = f"tests/clients/{uuid.uuid4()}/"
    bodies = {"small.bin": os.urandom(1000), "big.parquet": os.urandom(20 * 1024 * 1024 + 7), "empty.bin": b""}
    origin = s3_client(settings.s3)
    for name, body in bodies.items():
        origin.put_object(Bucket=BUCKET, Key=prefix + name, Body=body)
    return {prefix + name: body for name, body in bodies.items()}


def _endpoints(settings: Settings, site: Site) -> dict[str, tuple[str, str, str]]:
    access, secret = settings.s3.require_credentials()
    return {"rgw": (settings.s3.endpoint, access, secret), "site": (site.endpoint, site.access_key, site.secret_key)}


def _tool(
    tmp_path: Path, endpoint: tuple[str, str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    url, access, secret = endpoint
    config = tmp_path / "aws.config"
    config.write_text("[default]\ns3 =\n  addressing_style = path\n", encoding="utf-8")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(config),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    tool, rest = args[0], args[1:]
    command = [str(_clients_bin() / tool), "--endpoint-url", url, *rest]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done


def test_aws_cli_and_s5cmd_read_what_rgw_holds(
    settings: Settings, site: Site, objects: dict[str, bytes], tmp_path: Path
) -> None:
    for where, endpoint in _endpoints(settings, site).items():
        for key, body in objects.items():
            for tool in ("aws", "s5cmd"):
                target = tmp_path / f"{where}-{tool}-{key.rsplit('/', 1)[1]}"
                if tool == "aws":
                    _tool(tmp_path, endpoint, "aws", "s3", "cp", f"s3://{BUCKET}/{key}", str(target))
                else:
                    _tool(tmp_path, endpoint, "s5cmd", "cp", f"s3://{BUCKET}/{key}", str(target))
                assert (where, tool, key, target.read_bytes() == body) == (where, tool, key, True)
    prefix = next(iter(objects)).rsplit("/", 1)[0] + "/"
    listings = {
        (tool, where): sorted(
            line.split()[-1]
            for line in _tool(tmp_path, endpoint, *command, f"s3://{BUCKET}/{prefix}").stdout.splitlines()
        )
        for where, endpoint in _endpoints(settings, site).items()
        for tool, command in (("aws", ("aws", "s3", "ls")), ("s5cmd", ("s5cmd", "ls")))
    }
    assert listings[("aws", "site")] == listings[("aws", "rgw")] != []
    assert listings[("s5cmd", "site")] == listings[("s5cmd", "rgw")] != []


def test_writes_through_the_site_are_refused_and_lose_nothing(
    settings: Settings, site: Site, objects: dict[str, bytes], tmp_path: Path
) -> None:
    endpoint = _endpoints(settings, site)["site"]
    key = next(k for k in objects if k.endswith("small.bin"))
    moved = _tool(
        tmp_path, endpoint, "aws", "s3", "mv", f"s3://{BUCKET}/{key}", f"s3://{BUCKET}/{key}.moved", check=False
    )
    assert moved.returncode != 0
    assert "NotImplemented" in moved.stderr
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"never lands")
    copied = _tool(tmp_path, endpoint, "s5cmd", "cp", str(upload), f"s3://{BUCKET}/{key}", check=False)
    assert copied.returncode != 0
    s5_moved = _tool(tmp_path, endpoint, "s5cmd", "mv", f"s3://{BUCKET}/{key}", f"s3://{BUCKET}/{key}.m", check=False)
    assert s5_moved.returncode != 0
    origin = s3_client(settings.s3)
    assert origin.get_object(Bucket=BUCKET, Key=key)["Body"].read() == objects[key]
    for gone in (key + ".moved", key + ".m"):
        assert origin.list_objects_v2(Bucket=BUCKET, Prefix=gone).get("KeyCount") == 0


def _raw(endpoint: tuple[str, str, str], path: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    url, access, secret = endpoint
    signed = sigv4.sign(
        "GET", url.split("://", 1)[1], path, "", keys=sigv4.Keys(access, secret), region="us-east-1", extra=headers
    )
    request = urllib.request.Request(url + path, headers=signed)  # noqa: S310 - loopback only
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, b"", dict(exc.headers)


def test_status_codes_and_headers_match_rgw(settings: Settings, site: Site, objects: dict[str, bytes]) -> None:
    small = next(k for k in objects if k.endswith("small.bin"))
    empty = next(k for k in objects if k.endswith("empty.bin"))
    origin = s3_client(settings.s3)
    typed = small + ".csv.gz"
    origin.put_object(
        Bucket=BUCKET,
        Key=typed,
        Body=b"gz",
        ContentType="text/csv",
        ContentEncoding="gzip",
        CacheControl="max-age=60",
        Metadata={"owner": "ev"},
    )
    etag = origin.head_object(Bucket=BUCKET, Key=small)["ETag"]
    far = "Sun, 06 Dec 2099 00:00:00 GMT"
    cases = [
        (f"/{BUCKET}/{small}", {}),
        (f"/{BUCKET}/{small}", {"Range": "bytes=0-1,5-6"}),
        (f"/{BUCKET}/{small}", {"Range": "bytes=2000-"}),
        (f"/{BUCKET}/{small}", {"If-None-Match": etag}),
        (f"/{BUCKET}/{small}", {"If-Modified-Since": far}),
        (f"/{BUCKET}/{small}", {"If-Match": '"nope"'}),
        (f"/{BUCKET}/{empty}", {"Range": "bytes=0-"}),
        (f"/{BUCKET}/{empty}", {}),
        (f"/{BUCKET}/{small}.missing", {}),
        (f"/nosuchbucket-{uuid.uuid4().hex[:8]}/{small}", {}),
    ]
    rgw, via_site = _endpoints(settings, site)["rgw"], _endpoints(settings, site)["site"]
    for path, headers in cases:
        theirs, mine = _raw(rgw, path, headers), _raw(via_site, path, headers)
        assert (path, headers, mine[0], mine[1]) == (path, headers, theirs[0], theirs[1])
    names = ("Content-Type", "Content-Encoding", "Cache-Control", "x-amz-meta-owner")
    for _ in range(2):  # the miss, then the hit
        theirs, mine = _raw(rgw, f"/{BUCKET}/{typed}", {}), _raw(via_site, f"/{BUCKET}/{typed}", {})
        assert {n: mine[2].get(n) for n in names} == {n: theirs[2].get(n) for n in names}
