"""The one-writer lease on the real RGW: refusal naming the owner, release, expiry, dead-holder takeover, races."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

import pytest

from infra import procs
from infra.stack import LocalStack
from pipelines.lake.lease import TableLease
from tierlake.config import Settings
from tierlake.errors import CommitConflict
from tiers.s3 import s3_client


def _lease(settings: Settings, name: str, owner: str, ttl_s: float = 30) -> TableLease:
    return TableLease(s3_client(settings.s3), settings.s3.lake_bucket, name, ttl_s=ttl_s, owner=owner)


def test_second_writer_is_refused_with_the_owner_named(settings: Settings) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    first = _lease(settings, name, "driver-a")
    first.acquire()
    with pytest.raises(CommitConflict, match=r"owned by writer driver-a \(pid \d+ on .*\).*Fix: stop that writer"):
        _lease(settings, name, "driver-b").acquire()
    first.release()
    second = _lease(settings, name, "driver-b")
    assert second.acquire().owner == "driver-b"
    second.release()


def test_expired_lease_is_taken_over_and_the_old_holder_learns_it_lost(settings: Settings) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    old = _lease(settings, name, "slow-driver", ttl_s=3)
    old.acquire()
    time.sleep(3.2)
    new = _lease(settings, name, "new-driver", ttl_s=3)
    new.acquire()
    with pytest.raises(CommitConflict, match="taken over by another writer"):
        old.renew()
    assert old.lost.is_set()
    new.release()


def test_a_holder_paused_past_several_renewals_of_the_next_one_learns_it_lost(settings: Settings) -> None:
    """The new holder's renewals delete old generations; the paused one's next create then succeeds (its generation
    was deleted), and only the listing after it shows the lease moved on."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    paused = _lease(settings, name, "paused-driver", ttl_s=3)
    paused.acquire()  # generation 1
    time.sleep(3.2)
    new = _lease(settings, name, "new-driver", ttl_s=3)
    new.acquire()  # generation 2
    for _ in range(3):
        new.renew()  # 3, 4, 5: generations 1 and 2 are deleted
    with pytest.raises(CommitConflict, match="taken over by another writer"):
        paused.renew()  # recreates generation 2
    assert paused.lost.is_set()
    assert not paused.may_commit()
    holder = new.current()
    assert holder is not None
    assert holder.owner == "new-driver"
    new.renew()
    assert new.may_commit()
    new.release()


def test_holder_killed_on_this_host_is_replaced_at_once(settings: Settings) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    code = (
        "import sys, time\n"
        "from tierlake.config import load_settings\n"
        "from tiers.s3 import s3_client\n"
        "from pipelines.lake.lease import TableLease\n"
        "s = load_settings('ci')\n"
        f"TableLease(s3_client(s.s3), s.s3.lake_bucket, {name!r}, owner='doomed').acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CommitConflict, match="owned by writer doomed"):
            _lease(settings, name, "restarted").acquire()
        holder.kill()
        holder.wait()
        taken = _lease(settings, name, "restarted")
        assert taken.acquire().owner == "restarted"
        taken.release()
    finally:
        holder.kill()
        holder.wait()


def test_racing_writers_exactly_one_wins(settings: Settings) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    winners: list[str] = []
    losers: list[str] = []
    barrier = threading.Barrier(6)

    def contend(i: int) -> None:
        lease = _lease(settings, name, f"driver-{i}")
        barrier.wait()
        try:
            lease.acquire()
            winners.append(lease.owner)
        except CommitConflict:
            losers.append(lease.owner)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert len(losers) == 5


def test_an_object_store_outage_fences_the_holder_and_the_lease_survives_it(
    stack: LocalStack, settings: Settings
) -> None:
    """RGW killed (kill -9) under a renewing holder: the renewing thread keeps trying, the holder fences itself
    before its lease could expire (no commit passes ``check``), and once RGW is back the same lease is confirmed
    again: not lost, no second holder, commits resume."""
    lease = _lease(settings, f"test-{uuid.uuid4().hex[:8]}", "blip", ttl_s=6)
    lease.acquire()
    lease.start_renewing()
    assert lease.may_commit()
    rgw = next(d for d in stack.ceph.daemons() if d.name == "ceph-client.rgw.gw")
    try:
        procs.kill9(rgw)
        assert lease.fenced.wait(20), "fenced before the 6 s lease could run out unconfirmed"
        assert not lease.may_commit()
        with pytest.raises(CommitConflict, match=r"could not be confirmed within 4 s .*commits wait"):
            lease.check()
        assert lease.renewing(), "the renewing thread survives the outage"
    finally:
        stack.up()  # RGW back
    deadline = time.monotonic() + 60
    while not lease.may_commit():
        assert time.monotonic() < deadline, lease.last_error
        time.sleep(0.5)
    assert not lease.lost.is_set()
    assert not lease.fenced.is_set()
    assert lease.renewing()
    holder = lease.current()
    assert holder is not None
    assert holder.owner == "blip"
    lease.release()
