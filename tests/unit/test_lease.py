"""The writer lease against an in-memory object store that honours ``If-None-Match: *``: stray keys, errors the
renewing thread must survive, a create whose answer was lost, and the rule of a fenced holder."""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any, cast

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from pipelines.lake.lease import LeaseRecord, TableLease, holds, lease_generation, same_holder
from tierlake import catalog
from tierlake.errors import CommitConflict

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BUCKET = "lake"
NAME = "ingest-ev"
PREFIX = catalog.lease_prefix(NAME)


def _client_error(code: str, status: int, operation: str) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, operation)


class FakeS3:
    """The four calls a lease makes. ``answer_lost``: that many PUTs store the object and then fail as if the answer
    never came (a read timeout); ``retried_inside``: that many PUTs store it and then answer 412, as botocore's own
    retry of the PUT would. ``list_error``: raised (once) by the next listing."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.answer_lost = 0
        self.retried_inside = 0
        self.list_error: Exception | None = None
        self.puts = 0

    def put_object(self, *, Bucket: str, Key: str, Body: bytes, IfNoneMatch: str = "") -> dict[str, Any]:
        self.puts += 1
        if IfNoneMatch == "*" and Key in self.objects:
            raise _client_error("PreconditionFailed", 412, "PutObject")
        self.objects[Key] = Body
        if self.answer_lost:
            self.answer_lost -= 1
            raise ReadTimeoutError(endpoint_url=f"http://rgw/{Bucket}/{Key}")
        if self.retried_inside:
            self.retried_inside -= 1
            raise _client_error("PreconditionFailed", 412, "PutObject")
        return {}

    def list_objects_v2(self, *, Bucket: str, Prefix: str) -> dict[str, Any]:
        if self.list_error is not None:
            error, self.list_error = self.list_error, None
            raise error
        return {"Contents": [{"Key": key} for key in sorted(self.objects) if key.startswith(Prefix)]}

    def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        if Key not in self.objects:
            raise _client_error("NoSuchKey", 404, "GetObject")
        return {"Body": io.BytesIO(self.objects[Key])}

    def delete_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:
        self.objects.pop(Key, None)
        return {}


def _held(lease: TableLease) -> int:
    """The generation ``lease`` holds (0: none)."""
    return lease.held.generation if lease.held is not None else 0


def _lease(store: FakeS3, *, owner: str = "driver-a", ttl_s: float = 30.0) -> TableLease:
    return TableLease(cast("S3Client", store), BUCKET, NAME, ttl_s=ttl_s, owner=owner)


def _other_holder(store: FakeS3, generation: int, *, released: bool = False) -> None:
    """Another driver (another host) creates ``generation``."""
    record = LeaseRecord(
        name=NAME, generation=generation, owner="driver-b", host="elsewhere", pid=4242, expires_at=time.time() + 30
    )
    store.objects[f"{PREFIX}{generation:012d}.json"] = json.dumps(asdict(replace(record, released=released))).encode()


@pytest.mark.parametrize(
    ("key", "generation"),
    [
        (f"{PREFIX}000000000042.json", 42),
        (f"{PREFIX}notes.txt", None),
        (f"{PREFIX}backup.json", None),
        (f"{PREFIX}000000000001.json.bak", None),
        (f"{PREFIX}old/000000000007.json", None),
        (f"{PREFIX}\u00b2.json", None),  # a digit to str.isdigit, not to int()
        (f"{PREFIX}.json", None),
    ],
)
def test_lease_generation_reads_only_generation_keys(key: str, generation: int | None) -> None:
    assert lease_generation(PREFIX, key) == generation


def test_stray_keys_under_the_lease_prefix_are_ignored_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeS3()
    store.objects[f"{PREFIX}notes.txt"] = b"an operator's note"
    store.objects[f"{PREFIX}zzz.json"] = b"{}"  # sorts after every generation
    lease = _lease(store)
    with caplog.at_level(logging.WARNING, logger="pipelines.lake.lease"):
        assert lease.acquire().generation == 1
        for _ in range(3):
            assert lease._renew_once()
    assert _held(lease) == 4
    assert not lease.lost.is_set()
    ignored = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert sorted(ignored) == [
        f"lease {NAME}: ignoring {PREFIX}notes.txt, not a <generation>.json lease object",
        f"lease {NAME}: ignoring {PREFIX}zzz.json, not a <generation>.json lease object",
    ]


def test_an_unexpected_error_is_one_more_retry_with_its_cause_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeS3()
    lease = _lease(store)
    lease.acquire()
    try:
        int("x")
    except ValueError as exc:
        error = RuntimeError("listing the lease failed")
        error.__cause__ = exc
    store.list_error = error
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipelines.lake.lease"):
        assert not lease._renew_once()
    assert lease.last_error == (
        "RuntimeError: listing the lease failed (caused by ValueError: invalid literal for int() with base 10: 'x')"
    )
    [line] = [r.getMessage() for r in caplog.records if r.name == "pipelines.lake.lease"]
    assert line == f"lease {NAME}: renewal failed, retrying: {lease.last_error}"
    assert lease.may_commit()  # still within the TTL: not fenced yet
    assert lease._renew_once()
    assert not lease.lost.is_set()


def test_an_unexpected_error_past_the_margin_fences_and_the_next_renewal_resumes() -> None:
    store = FakeS3()
    lease = _lease(store)
    lease.acquire()
    lease.valid_until = time.monotonic()  # the last confirmation is a TTL old
    store.list_error = ValueError("a bug")
    assert not lease._renew_once()
    assert lease.fenced.is_set()
    with pytest.raises(CommitConflict, match=r"could not be confirmed within 20 s \(ValueError: a bug\)"):
        lease.check()
    assert lease._renew_once()
    assert not lease.fenced.is_set()
    lease.check()


def test_the_renewing_thread_survives_any_error_and_confirms_again() -> None:
    store = FakeS3()
    lease = _lease(store, ttl_s=3.0)  # renewed every second; retried every half second
    lease.acquire()
    store.list_error = ValueError("invalid literal for int() with base 10: 'notes'")
    lease.start_renewing()
    try:
        deadline = time.monotonic() + 10
        while _held(lease) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lease.renewing()
        assert _held(lease) >= 3  # the failed round was retried, then renewed on
        assert not lease.lost.is_set()
    finally:
        lease.release()
    assert not lease.renewing()


def test_a_create_whose_answer_was_lost_is_renewed_not_lost_on_its_retrys_412() -> None:
    store = FakeS3()
    lease = _lease(store)
    lease.acquire()
    store.answer_lost = 1  # generation 2 lands; its answer does not come back
    assert not lease._renew_once()
    assert f"{PREFIX}000000000002.json" in store.objects
    assert lease._renew_once()  # the retry of generation 2 gets 412: it is ours
    assert _held(lease) == 2
    assert not lease.lost.is_set()
    lease.check()
    assert lease._renew_once()
    assert _held(lease) == 3


def test_a_412_from_a_retry_inside_one_call_is_ours_too() -> None:
    store = FakeS3()
    lease = _lease(store)
    store.retried_inside = 1  # acquire: the PUT lands, botocore's retry of it answers 412
    assert lease.acquire().generation == 1
    store.retried_inside = 1
    lease.renew()
    assert _held(lease) == 2
    assert not lease.lost.is_set()


def test_a_412_for_another_writers_generation_loses_the_lease() -> None:
    store = FakeS3()
    lease = _lease(store)
    lease.acquire()
    _other_holder(store, 2)
    with pytest.raises(CommitConflict, match="taken over by another writer"):
        lease.renew()
    assert lease.lost.is_set()
    assert not lease.may_commit()


def test_a_fenced_holder_takes_its_lease_again_when_nobody_else_did() -> None:
    """An outage longer than the TTL: the lease could have expired, but no one created the next generation."""
    store = FakeS3()
    lease = _lease(store)
    lease.acquire()
    lease.valid_until = time.monotonic() - lease.ttl_s  # an outage of twice the TTL
    store.list_error = ReadTimeoutError(endpoint_url="http://rgw")
    assert not lease._renew_once()
    assert lease.fenced.is_set()
    assert not lease.may_commit()
    assert lease._renew_once()  # the store answers: generation 2 was free
    assert lease.may_commit()
    assert not lease.fenced.is_set()
    assert not lease.lost.is_set()


@pytest.mark.parametrize("released", [False, True])
def test_a_fenced_holder_stops_for_good_once_another_writer_took_the_lease(released: bool) -> None:
    """Even a lease the other writer released since: that writer moved the entity's tables and checkpoint on."""
    store = FakeS3()
    lease = _lease(store)
    lease.acquire()
    lease.valid_until = time.monotonic() - lease.ttl_s
    _other_holder(store, 2)
    _other_holder(store, 3, released=released)
    with pytest.raises(CommitConflict, match="taken over"):
        lease._renew_once()
    assert lease.lost.is_set()


def test_holds_is_the_rule_of_a_contested_generation() -> None:
    mine = LeaseRecord(name=NAME, generation=5, owner="driver-a", host="h", pid=1, expires_at=100.0)
    earlier_try = replace(mine, expires_at=90.0)  # the try whose answer was lost stamped its own expiry
    theirs = replace(mine, owner="driver-b", pid=2)
    assert same_holder(earlier_try, mine)
    assert not same_holder(theirs, mine)
    assert not same_holder(replace(mine, released=True), mine)
    assert holds(mine, stored=mine, newest=5)
    assert holds(mine, stored=earlier_try, newest=5)
    assert not holds(mine, stored=theirs, newest=5)
    assert not holds(mine, stored=None, newest=5)  # gone: deleted by a writer that moved on
    assert not holds(mine, stored=mine, newest=6)  # created after another writer moved on
