"""The stack as users drive it: status with pid/port/health, idempotent up, down leaves nothing, data survives."""

from __future__ import annotations

import json
import uuid

from infra import procs
from infra.stack import LocalStack
from tiers.s3 import s3_client


def test_status_reports_every_service_healthy(stack: LocalStack) -> None:
    status = stack.status()
    assert status["healthy"], json.dumps(status, indent=2)
    names = {s["service"] for s in status["services"]}
    assert {
        "kafka-1",
        "kafka-2",
        "kafka-3",
        "ceph-mon.a",
        "ceph-mgr.x",
        "ceph-client.rgw.gw",
        "spark",
    } <= names
    assert {"ceph-osd.0", "ceph-osd.1", "ceph-osd.2"} <= names
    for service in status["services"]:
        if service["service"] != "spark":
            assert isinstance(service["pid"], int), service
    ports = {s["service"]: s["port"] for s in status["services"]}
    assert ports["kafka-2"] == stack.settings.kafka.broker_port + stack.settings.kafka.port_stride
    assert ports["ceph-client.rgw.gw"] == stack.settings.ceph.rgw_port


def test_rgw_data_pool_is_erasure_coded_2_plus_1(stack: LocalStack) -> None:
    profile = json.loads(stack.ceph.cli("osd", "erasure-code-profile", "get", "tierlake-ec", "-f", "json"))
    assert (profile["k"], profile["m"]) == ("2", "1")
    pool = json.loads(
        stack.ceph.cli("osd", "pool", "get", "default.rgw.buckets.data", "erasure_code_profile", "-f", "json")
    )
    assert pool["erasure_code_profile"] == "tierlake-ec"


def test_second_up_is_idempotent(stack: LocalStack) -> None:
    before = {s["service"]: s["pid"] for s in stack.status()["services"]}
    stack.up()
    after = {s["service"]: s["pid"] for s in stack.status()["services"]}
    assert before == after, "a second up starts nothing new"


def test_down_stops_every_process_and_up_restores_the_data(stack: LocalStack) -> None:
    client = s3_client(stack.settings.s3)
    key = f"tests/survives-restart/{uuid.uuid4()}"
    client.put_object(Bucket="tierlake-lake", Key=key, Body=b"still here")
    daemons = [*(n.daemon for n in stack.kafka.nodes), *stack.ceph.daemons()]
    pids = {d.name: d.running_pid() for d in daemons}
    assert all(pids.values()), pids

    stopped = stack.down()
    assert sorted(stopped) == sorted(pids)
    for daemon in daemons:
        assert not procs.is_ours(pids[daemon.name] or -1, daemon.marker), f"{daemon.name} still running"
    assert not stack.status()["healthy"]

    stack.up()
    assert stack.status()["healthy"]
    body = s3_client(stack.settings.s3).get_object(Bucket="tierlake-lake", Key=key)["Body"].read()
    assert body == b"still here"
    assert stack.kafka.brokers() == [1, 2, 3]


LAST = "test_no_secret_in_any_file_of_the_run_folder"  # tests/conftest.py runs it after every other test
_GREP_LIMIT = 64 * 2**20  # OSD block files and Kafka segments are larger; the folder's mode guards them


def test_no_secret_in_any_file_of_the_run_folder(stack: LocalStack) -> None:
    """After everything else ran (stack set-up, ingestion, Spark, the cache, the archive), the S3 secret key is in
    its private key file and nowhere else under the run folder, and the folder is its owner's alone."""
    run_dir = stack.settings.run_dir
    secret = stack.settings.s3.require_credentials()[1].encode()
    key_file = stack.settings.s3.credentials_file
    assert run_dir.stat().st_mode & 0o077 == 0, oct(run_dir.stat().st_mode)
    leaks, grepped = [], 0
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file() and not p.is_symlink()):
        if path.stat().st_size > _GREP_LIMIT:
            continue
        grepped += 1
        if secret in path.read_bytes() and path != key_file:
            leaks.append(f"{path} (mode {oct(path.stat().st_mode & 0o777)})")
    assert grepped > 20, "the run folder holds the services' logs and state"
    assert not leaks, leaks
    assert key_file.stat().st_mode & 0o077 == 0
