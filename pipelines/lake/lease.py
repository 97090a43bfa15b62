"""One writing driver per table: a lease in the object store, taken with an atomic create-if-absent.

Delta on S3 without DynamoDB loses commits when two drivers write one table, so a driver must hold the lease of
its tables before it starts a query. The lease is a series of objects ``_leases/<name>/<generation>.json``; the
highest generation is the current holder. Taking or renewing the lease means creating the next generation with
``If-None-Match: *`` (RGW 16.2 honours it; ``If-Match`` on PUT it does not), so of two contenders exactly one wins.
Old generations are deleted, so a holder paused long enough could recreate one; every create is therefore followed
by a listing, and a higher generation than the one just created means the lease belongs to someone else.

A lease expires ``ttl_s`` after its last renewal. A contender takes an expired lease; a driver restarted on the
same host takes over at once from a holder whose pid is gone (kill -9 leaves no one to release it). A holder that
finds its renewal beaten has lost the lease and must stop writing.

An object-store blip does not end the lease: renewal is retried with backoff. While a renewal is unconfirmed the
holder counts its lease as valid until ``ttl_s`` after the start of its last confirmed renewal; a third of the TTL
before that it *fences* itself (:meth:`TableLease.may_commit` turns false, :meth:`TableLease.check` raises), so its
commits stop with margin for clock drift and scheduling. When the store answers again the next renewal either
extends the same lease (nobody took it: writing resumes) or finds it taken (``lost``: the holder must stop for
good). The renewing thread never dies on an error; it ends only on ``release`` or a lost lease, saying why.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from tierlake import catalog
from tierlake.errors import CommitConflict, ConfigError
from tierlake.host import alive

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class LeaseRecord:
    name: str
    generation: int
    owner: str
    host: str
    pid: int
    expires_at: float
    released: bool = False

    def expired(self, now: float) -> bool:
        return self.released or now >= self.expires_at

    def dead_on_this_host(self, host: str) -> bool:
        return self.host == host and not alive(self.pid)


class TableLease:
    """The writer lease of one set of tables (e.g. an entity's silver, quarantine and dropped)."""

    def __init__(self, client: S3Client, bucket: str, name: str, *, ttl_s: float = 30.0, owner: str = "") -> None:
        if ttl_s < 3:
            raise ConfigError(f"lease ttl_s={ttl_s} is too short for a lease renewed every ttl_s/3. Fix: use >= 3")
        self.client, self.bucket, self.name, self.ttl_s = client, bucket, name, ttl_s
        self.host = socket.gethostname()
        self.owner = owner or f"{self.host}:{os.getpid()}"
        self.held: LeaseRecord | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lost = threading.Event()
        self.fenced = threading.Event()  # set while the lease could not be confirmed in time
        self.valid_until = 0.0  # monotonic: ttl_s after the start of the last confirmed create
        self.last_error = ""
        # Told, after each confirmed create, how many seconds commits stay allowed (0: none): the storage layer's
        # own fence (the Spark log store's, ``pipelines.ingest.driver``) follows the lease without a second clock.
        self.on_confirmed: Callable[[float], None] | None = None

    def _key(self, generation: int) -> str:
        return f"{catalog.lease_prefix(self.name)}{generation:012d}.json"

    def _newest(self) -> int:
        """The highest generation in the store."""
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=catalog.lease_prefix(self.name))
        keys = [o["Key"] for o in listed.get("Contents", []) if "Key" in o]
        return max((int(k.rsplit("/", 1)[1].removesuffix(".json")) for k in keys), default=0)

    def current(self) -> LeaseRecord | None:
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=catalog.lease_prefix(self.name))
        keys = sorted(o["Key"] for o in listed.get("Contents", []) if "Key" in o)
        if not keys:
            return None
        body = self.client.get_object(Bucket=self.bucket, Key=keys[-1])["Body"].read()
        return LeaseRecord(**json.loads(body))

    def _create(self, generation: int, *, released: bool = False) -> LeaseRecord | None:
        started = time.monotonic()  # the lease counts from before the request: a slow answer shortens it
        record = LeaseRecord(
            name=self.name,
            generation=generation,
            owner=self.owner,
            host=self.host,
            pid=os.getpid(),
            expires_at=time.time() + self.ttl_s,
            released=released,
        )
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(generation), IfNoneMatch="*", Body=json.dumps(asdict(record)).encode()
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                return None  # someone else created this generation first
            raise
        if self._newest() > generation:
            # Another writer moved on while we were away (a pause past the TTL) and deleted old generations, so our
            # create of one it had deleted succeeded: it is not ours to hold.
            return None
        self.valid_until = started + self.ttl_s
        self._tell(0.0 if released else self.valid_until - self.margin_s - time.monotonic())
        if generation > 2:  # keep the last generations for the record; delete older ones
            self.client.delete_object(Bucket=self.bucket, Key=self._key(generation - 3))
        return record

    def _tell(self, commit_for_s: float) -> None:
        if self.on_confirmed is not None:
            try:
                self.on_confirmed(max(0.0, commit_for_s))
            except Exception:  # the fence is a second guard; the lease's own check still runs before each commit
                logger.exception("lease %s: could not pass its deadline to the storage fence", self.name)

    def acquire(self) -> LeaseRecord:
        """Take the lease or raise :class:`CommitConflict` naming the holder and when it expires."""
        holder = self.current()
        now = time.time()
        if holder is not None and not holder.expired(now) and not holder.dead_on_this_host(self.host):
            raise CommitConflict(
                f"tables {self.name!r} are owned by writer {holder.owner} (pid {holder.pid} on {holder.host}) "
                f"until {time.strftime('%H:%M:%S', time.localtime(holder.expires_at))}; a second writer would lose "
                "Delta commits on S3. Fix: stop that writer, or wait for its lease to expire"
            )
        record = self._create(holder.generation + 1 if holder else 1)
        if record is None:
            raise CommitConflict(f"another writer took the lease of {self.name!r} at the same moment; retry later")
        self.held = record
        logger.info("lease %s taken, generation %d", self.name, record.generation, extra={"lease": self.name})
        return record

    def renew(self) -> None:
        """Extend the lease; if another writer got there first, the lease is lost (``lost`` is set)."""
        if self.held is None:
            raise CommitConflict(f"lease {self.name!r} is not held")
        record = self._create(self.held.generation + 1)
        if record is None:
            self.lost.set()
            self._tell(0.0)
            raise CommitConflict(f"lease {self.name!r} was taken over by another writer; stop writing")
        self.held = record

    @property
    def margin_s(self) -> float:
        """How long before the lease could expire its holder stops committing."""
        return self.ttl_s / 3

    def may_commit(self) -> bool:
        """Whether the holder may commit now: held, not lost, and confirmed with margin to spare."""
        return self.held is not None and not self.lost.is_set() and time.monotonic() < self.valid_until - self.margin_s

    def check(self) -> None:
        """Raise :class:`CommitConflict` unless :meth:`may_commit`: the last check before a commit."""
        if self.may_commit():
            return
        if self.lost.is_set():
            raise CommitConflict(
                f"lease {self.name!r} was taken over by another writer; this driver commits nothing more"
            )
        raise CommitConflict(
            f"lease {self.name!r} could not be confirmed within {self.ttl_s - self.margin_s:.0f} s "
            f"({self.last_error or 'no renewal yet'}); commits wait until the object store answers again"
        )

    def _renew_once(self) -> bool:
        """One renewal attempt; False when the store could not be reached (retry), raises when the lease is lost."""
        try:
            self.renew()
        except (BotoCoreError, ClientError) as exc:  # a blip: retried; CommitConflict (taken over) propagates
            self.last_error = f"{type(exc).__name__}: {exc}"
            if not self.fenced.is_set() and time.monotonic() >= self.valid_until - self.margin_s:
                self.fenced.set()
                logger.error("lease %s unconfirmed, commits stop: %s", self.name, self.last_error)
            else:
                logger.warning("lease %s: renewal failed, retrying: %s", self.name, self.last_error)
            return False
        if self.fenced.is_set():
            logger.warning("lease %s confirmed again, commits resume", self.name)
        self.fenced.clear()
        self.last_error = ""
        return True

    def start_renewing(self) -> None:
        def loop() -> None:
            wait_s = self.ttl_s / 3
            while not self._stop.wait(wait_s):
                try:
                    ok = self._renew_once()
                except CommitConflict as exc:
                    logger.error("lease %s lost, this driver must stop writing: %s", self.name, exc)
                    self.lost.set()
                    return
                wait_s = self.ttl_s / 3 if ok else min(1.0, self.ttl_s / 6)

        self._renewer = threading.Thread(target=loop, name=f"lease-{self.name}", daemon=True)
        self._renewer.start()

    def renewing(self) -> bool:
        """Whether the renewing thread is alive (it ends only on release or a lost lease)."""
        return self._renewer is not None and self._renewer.is_alive()

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=self.ttl_s)
        if self.held is not None and not self.lost.is_set():
            try:
                self._create(self.held.generation + 1, released=True)
            except (BotoCoreError, ClientError) as exc:  # the lease then ends by its TTL
                logger.warning("lease %s: release failed (%s); it expires in %.0f s", self.name, exc, self.ttl_s)
        self._tell(0.0)
        self.held = None

    def __enter__(self) -> TableLease:
        self.acquire()
        self.start_renewing()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
