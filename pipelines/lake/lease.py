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
creates the next generation (nobody took it, however long the outage: the holder takes its lease again and writing
resumes) or finds it created by another writer (``lost``: the holder must stop for good, even if that writer has
released it since; docs/decisions.md, "A fenced driver takes its lease again only if nobody else took it"). The
renewing thread never dies on an error; it ends only on ``release`` or a lost lease, saying why.

A create whose answer was lost (a timeout after the PUT landed) is retried by the lease's own loop, and the retry is
refused with 412: the generation is then read back, and one created by this holder (:func:`same_holder`) counts as
renewed, not lost. Lease calls go through :func:`lease_client`: one attempt each, timeouts well inside the TTL.
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
from tierlake.errors import CommitConflict, ConfigError, first_line
from tierlake.host import alive
from tiers.s3 import s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from tierlake.config import S3Settings


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


def same_holder(stored: LeaseRecord, mine: LeaseRecord) -> bool:
    """Whether ``stored`` (read back from the store) was created by the holder that tried to create ``mine``.

    The body can differ only in ``expires_at`` (each try stamps its own); everything that names the holder and the
    generation must match.
    """
    keys = ("name", "generation", "owner", "host", "pid", "released")
    return all(getattr(stored, key) == getattr(mine, key) for key in keys)


def holds(mine: LeaseRecord, *, stored: LeaseRecord | None, newest: int) -> bool:
    """Whether creating ``mine`` won the lease: its generation is this holder's (``stored``: what the store has under
    that key, None when it has nothing readable there) and no writer moved on to a newer one.

    The whole rule of a fenced holder: however long it could not confirm, it resumes when it creates the next
    generation (the lease was free: taking it again is safe, since only one writer can create a generation), and
    stops for good when another writer created this generation or a newer one.
    """
    return stored is not None and same_holder(stored, mine) and newest <= mine.generation


def lease_generation(prefix: str, key: str) -> int | None:
    """The generation ``key`` names under ``prefix`` (``<prefix>000000000042.json`` -> 42), None for any other key."""
    stem = key.removeprefix(prefix).removesuffix(".json")
    if not key.startswith(prefix) or not key.endswith(".json") or not (stem.isascii() and stem.isdigit()):
        return None
    return int(stem)


def lease_client(s3: S3Settings, *, ttl_s: float) -> S3Client:
    """An S3 client for lease calls: one attempt each and timeouts of a tenth of the TTL (1-5 s), so a blip costs one
    short call and the lease's own loop retries within the TTL (botocore's retries would repeat a conditional PUT
    whose answer was lost, and spend the TTL waiting)."""
    timeout_s = min(5.0, max(1.0, ttl_s / 10))
    return s3_client(s3, connect_timeout_s=timeout_s, read_timeout_s=timeout_s, attempts=1)


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
        self._tries: dict[int, float] = {}  # generation -> monotonic start of the first create of it not yet settled
        self._ignored: set[str] = set()  # keys under the lease prefix that name no generation (logged once)
        # Told, after each confirmed create, how many seconds commits stay allowed (0: none): the storage layer's
        # own fence (the Spark log store's, ``pipelines.ingest.driver``) follows the lease without a second clock.
        self.on_confirmed: Callable[[float], None] | None = None

    def _key(self, generation: int) -> str:
        return f"{catalog.lease_prefix(self.name)}{generation:012d}.json"

    def _generations(self) -> dict[int, str]:
        """generation -> key of the lease objects in the store; a key that names no generation is ignored."""
        prefix = catalog.lease_prefix(self.name)
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        found: dict[int, str] = {}
        for key in (o["Key"] for o in listed.get("Contents", []) if "Key" in o):
            generation = lease_generation(prefix, key)
            if generation is not None:
                found[generation] = key
            elif key not in self._ignored:
                self._ignored.add(key)
                logger.warning("lease %s: ignoring %s, not a <generation>.json lease object", self.name, key)
        return found

    def _newest(self) -> int:
        """The highest generation in the store."""
        return max(self._generations(), default=0)

    def current(self) -> LeaseRecord | None:
        generations = self._generations()
        if not generations:
            return None
        body = self.client.get_object(Bucket=self.bucket, Key=generations[max(generations)])["Body"].read()
        return LeaseRecord(**json.loads(body))

    def _stored(self, generation: int) -> LeaseRecord | None:
        """The record under ``generation``'s key; None when it is gone (deleted by a writer that moved on) or is not
        a lease record."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(generation))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        try:
            return LeaseRecord(**json.loads(body))
        except (ValueError, TypeError):
            return None

    def _put(self, record: LeaseRecord) -> bool:
        """Create ``record``'s generation; False when it exists already (412)."""
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(record.generation),
                IfNoneMatch="*",
                Body=json.dumps(asdict(record)).encode(),
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                return False
            raise
        return True

    def _create(self, generation: int, *, released: bool = False) -> LeaseRecord | None:
        """Create ``generation``; the record held, or None when another writer holds the lease (see :func:`holds`)."""
        started = time.monotonic()  # the lease counts from before the request: a slow answer shortens it
        first_try = self._tries.setdefault(generation, started)
        record = LeaseRecord(
            name=self.name,
            generation=generation,
            owner=self.owner,
            host=self.host,
            pid=os.getpid(),
            expires_at=time.time() + self.ttl_s,
            released=released,
        )
        stored: LeaseRecord | None = record
        if not self._put(record):
            # Taken: by another writer, or by an earlier try of ours whose answer was lost. That try started no
            # earlier than the first one of this generation, so the lease counts from there.
            stored, started = self._stored(generation), first_try
        # A newer generation: another writer moved on while we were away (a pause past the TTL) and deleted old
        # generations, so our create of one it had deleted succeeded; it is not ours to hold.
        won = holds(record, stored=stored, newest=self._newest())
        self._tries.pop(generation, None)
        if not won or stored is None:
            return None
        if stored is not record:
            logger.info("lease %s: generation %d was created by an earlier try of ours", self.name, generation)
        self.valid_until = started + self.ttl_s
        self._tell(0.0 if released else self.valid_until - self.margin_s - time.monotonic())
        if generation > 2:  # keep the last generations for the record; delete older ones
            self.client.delete_object(Bucket=self.bucket, Key=self._key(generation - 3))
        return stored

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
        """One renewal attempt; True when confirmed with time to spare, False to retry soon; raises
        :class:`CommitConflict` when the lease is lost. Any other error counts as unconfirmed: the TTL decides."""
        try:
            self.renew()
        except CommitConflict:
            raise
        except Exception as exc:  # a blip (BotoCoreError, ClientError) or anything else: retried, never fatal
            self._unconfirmed(exc)
            return False
        if self.fenced.is_set():
            logger.warning("lease %s confirmed again, commits resume", self.name)
        self.fenced.clear()
        self.last_error = ""
        return self.may_commit()  # confirmed by an old try of ours that already ran out: renew again soon

    def _unconfirmed(self, exc: Exception) -> None:
        """Say in one line why a renewal failed; fence (log once) when the lease can no longer be counted on."""
        self.last_error = _cause(exc)
        if not isinstance(exc, BotoCoreError | ClientError):
            logger.debug("lease %s: unexpected renewal error", self.name, exc_info=exc)  # the traceback: debug only
        if not self.fenced.is_set() and time.monotonic() >= self.valid_until - self.margin_s:
            self.fenced.set()
            logger.error("lease %s unconfirmed, commits stop: %s", self.name, self.last_error)
        else:
            logger.warning("lease %s: renewal failed, retrying: %s", self.name, self.last_error)

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
                except Exception as exc:  # the thread must not die: a failed bookkeeping step is one more retry
                    logger.error("lease %s: renewal round failed, retrying: %s", self.name, _cause(exc))
                    ok = False
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
            except Exception as exc:  # the lease then ends by its TTL
                logger.warning(
                    "lease %s: release failed (%s); it expires in %.0f s", self.name, _cause(exc), self.ttl_s
                )
        self._tell(0.0)
        self.held = None

    def __enter__(self) -> TableLease:
        self.acquire()
        self.start_renewing()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _cause(exc: BaseException) -> str:
    """One line: the error's type and first line, and its cause's when it has one."""
    line = f"{type(exc).__name__}: {first_line(exc)}"
    if exc.__cause__ is not None:
        line += f" (caused by {type(exc.__cause__).__name__}: {first_line(exc.__cause__)})"
    return line
