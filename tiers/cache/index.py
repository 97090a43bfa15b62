"""The cache's shared index: one SQLite database (WAL) in the cache directory, used by every process on the node.

It holds each entry's identity (bucket, key, ETag, size, block), its state, its checksum and its place in the
eviction policy (queue, frequency, order), the ghost keys, object pins, HEAD results (for ``revalidate_s``) and
the counters that ``tierlake cache stats`` and Prometheus read. Entry states: ``FILLING`` (space reserved, a
filler holds the entry's lock) → ``READY`` (published, checksum recorded) → deleted (evicted or found corrupt).
A ``FILLING`` row whose lock nobody holds was left by a dead filler and is dropped.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from multiprocessing.util import Finalize
from pathlib import Path

from tierlake.errors import CacheFull, StorageError
from tiers.cache.policy import Node, Queue
from tiers.store import ObjectInfo

logger = logging.getLogger(__name__)

COUNTERS = (
    "hits",
    "misses",
    "coalesced",
    "bytes_hit",
    "bytes_filled",
    "backend_gets",
    "backend_heads",
    "evictions",
    "bytes_evicted",
    "corrupt",
    "stale_fills_recovered",
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id TEXT PRIMARY KEY, bucket TEXT NOT NULL, key TEXT NOT NULL, etag TEXT NOT NULL, size INTEGER NOT NULL,
    block INTEGER NOT NULL, nbytes INTEGER NOT NULL, state TEXT NOT NULL, checksum TEXT NOT NULL DEFAULT '',
    queue TEXT NOT NULL, freq INTEGER NOT NULL DEFAULT 0, seq INTEGER NOT NULL, filled_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS entries_object ON entries (bucket, key);
CREATE TABLE IF NOT EXISTS ghosts (id TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pins (bucket TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (bucket, key));
CREATE TABLE IF NOT EXISTS heads (
    bucket TEXT NOT NULL, key TEXT NOT NULL, etag TEXT NOT NULL, size INTEGER NOT NULL, modified REAL NOT NULL,
    checked REAL NOT NULL, PRIMARY KEY (bucket, key));
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (
    bucket TEXT NOT NULL, key TEXT NOT NULL, etag TEXT NOT NULL, headers TEXT NOT NULL,
    PRIMARY KEY (bucket, key, etag));
"""


class EntryState(enum.Enum):
    FILLING = "FILLING"
    READY = "READY"


@dataclass(frozen=True, kw_only=True)
class Entry:
    id: str
    bucket: str
    key: str
    etag: str
    size: int
    block: int
    nbytes: int
    state: EntryState
    checksum: str
    queue: Queue
    freq: int
    seq: int

    @property
    def info(self) -> ObjectInfo:
        return ObjectInfo(bucket=self.bucket, key=self.key, size=self.size, etag=self.etag)


_COLUMNS = "id, bucket, key, etag, size, block, nbytes, state, checksum, queue, freq, seq"


def _entry(row: tuple[object, ...]) -> Entry:
    id_, bucket, key, etag, size, block, nbytes, state, checksum, queue, freq, seq = row
    return Entry(
        id=str(id_),
        bucket=str(bucket),
        key=str(key),
        etag=str(etag),
        size=int(size),  # type: ignore[call-overload]
        block=int(block),  # type: ignore[call-overload]
        nbytes=int(nbytes),  # type: ignore[call-overload]
        state=EntryState(state),
        checksum=str(checksum),
        queue=Queue(queue),
        freq=int(freq),  # type: ignore[call-overload]
        seq=int(seq),  # type: ignore[call-overload]
    )


HIT_FLUSH_S = 1.0  # buffered hits reach the database at least this often...
HIT_FLUSH_COUNT = 256  # ...or after this many


class _HitBuffer:
    """Hits of one process, counted in memory and written in one transaction (see :meth:`Index.hit`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.counters: dict[str, int] = {}
        self.freq: dict[str, int] = {}
        self.count = 0
        self.flushed = 0.0  # the first hit of a process is written at once

    def add(self, entry_id: str, nbytes: int, *, coalesced: bool, bump: bool) -> bool:
        """Count one hit; True when the buffer is due to be written."""
        with self.lock:
            for name, value in (("hits", 1), ("bytes_hit", nbytes), ("coalesced", int(coalesced))):
                self.counters[name] = self.counters.get(name, 0) + value
            if bump:
                self.freq[entry_id] = self.freq.get(entry_id, 0) + 1
            self.count += 1
            return self.count >= HIT_FLUSH_COUNT or time.monotonic() - self.flushed >= HIT_FLUSH_S

    def take(self) -> tuple[dict[str, int], dict[str, int]]:
        with self.lock:
            taken = self.counters, self.freq
            self.counters, self.freq, self.count, self.flushed = {}, {}, 0, time.monotonic()
            return taken


def _write_hits(db: sqlite3.Connection, counters: dict[str, int], freq: dict[str, int]) -> None:
    db.executemany("UPDATE entries SET freq = MIN(freq + ?, 3) WHERE id = ?", [(n, i) for i, n in freq.items()])
    Index._add(db, **counters)


def _flush_at_exit(hits: _HitBuffer) -> None:
    """Run when the Index is collected or its process exits (multiprocessing children included)."""
    if hits.pid != os.getpid():
        return  # a forked child's copy of its parent's buffer: the parent writes those hits
    counters, freq = hits.take()
    if (not counters and not freq) or not hits.path.exists():  # nothing to write, or the cache was deleted
        return
    try:
        with closing(sqlite3.connect(hits.path, timeout=30.0, isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")
            _write_hits(db, counters, freq)
            db.execute("COMMIT")
    except sqlite3.Error as exc:  # at exit there is nobody left to tell but the log
        logger.warning("cache index %s: %d hits not recorded at exit: %s", hits.path, counters.get("hits", 0), exc)


def last_access(index_file: Path, bucket: str, keys: list[str]) -> float | None:
    """The latest time any of ``keys`` was read through the cache (its HEAD or its fill), None if never.

    Opens the index read-only, without an :class:`Index` (no schema, no hit buffer): the archive policy asks this
    of a node's cache to judge whether files are cold, and must not change the cache it looks at.
    """
    if not index_file.exists():
        return None
    with closing(sqlite3.connect(f"file:{index_file}?mode=ro", uri=True)) as connection:
        latest: float | None = None
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for sql in (
                f"SELECT max(checked) FROM heads WHERE bucket = ? AND key IN ({marks})",  # noqa: S608
                f"SELECT max(filled_at) FROM entries WHERE bucket = ? AND key IN ({marks})",  # noqa: S608
            ):
                (value,) = connection.execute(sql, [bucket, *chunk]).fetchone()
                if value is not None:
                    latest = max(latest or 0.0, float(value))
        return latest


_LOCK_WAIT_S = 30.0


def _switch_to_wal(db: sqlite3.Connection, path: Path) -> None:
    """Put the database in WAL mode, waiting for other processes that are opening it at the same moment.

    SQLite does not call its busy handler for the lock that the first switch to WAL takes, so two processes
    opening a fresh index together can get "database is locked" at once instead of waiting ``timeout``
    (seen in CI: two recalls into one cache). Retried here, with backoff, for as long as a locked write waits.
    """
    deadline = time.monotonic() + _LOCK_WAIT_S
    pause = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise StorageError(
                    f"the cache index {path} stayed locked for {_LOCK_WAIT_S:.0f} s while opening it: {exc}. "
                    "Fix: look for a process holding it (fuser on the file) and stop it"
                ) from exc
            time.sleep(pause)
            pause = min(pause * 2, 0.2)


class Index:
    """One connection per thread and process (SQLite connections must not cross a fork or a thread).

    Hits are buffered per process: a hit only reads the index, and the counters and S3-FIFO frequencies it
    changes are written in one transaction at most every ``HIT_FLUSH_S`` seconds or ``HIT_FLUSH_COUNT`` hits,
    before counters are read or an eviction runs, and when the process exits. So readers on many processes do not
    queue for SQLite's write lock on every hit. A process killed with -9 loses at most that many hits' counts.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._connection().executescript(_SCHEMA)
        with self.transaction() as db:
            db.executemany("INSERT OR IGNORE INTO counters VALUES (?, 0)", [(name,) for name in COUNTERS])
        self._new_hit_buffer()

    def _new_hit_buffer(self) -> None:
        self._hits = _HitBuffer(self.path)
        Finalize(self, _flush_at_exit, args=(self._hits,), exitpriority=10)

    def __getstate__(self) -> dict[str, object]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.path = Path(str(state["path"]))
        self._local = threading.local()
        self._new_hit_buffer()

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=_LOCK_WAIT_S, isolation_level=None)
            _switch_to_wal(db, self.path)
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db, self._local.pid = db, os.getpid()
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if "full" in str(exc):
                raise CacheFull(
                    f"the cache index {self.path} cannot grow: its file system is full. "
                    "Fix: free space there or lower cache.max_bytes / cache.disk_fraction"
                ) from exc
            raise StorageError(f"the cache index {self.path} failed: {exc}") from exc

    # -- entries ------------------------------------------------------------------------------------------

    def get(self, entry_id: str) -> Entry | None:
        sql = f"SELECT {_COLUMNS} FROM entries WHERE id = ?"  # noqa: S608 - constant columns
        row = self._connection().execute(sql, (entry_id,)).fetchone()
        return None if row is None else _entry(row)

    def entries(self, *, state: EntryState | None = None) -> list[Entry]:
        sql = f"SELECT {_COLUMNS} FROM entries"  # noqa: S608 - constant columns
        args: tuple[str, ...] = ()
        if state is not None:
            sql, args = sql + " WHERE state = ?", (state.value,)
        return [_entry(row) for row in self._connection().execute(sql + " ORDER BY seq", args)]

    def object_entries(self, bucket: str, key: str) -> list[Entry]:
        sql = f"SELECT {_COLUMNS} FROM entries WHERE bucket = ? AND key = ?"  # noqa: S608 - constant columns
        return [_entry(row) for row in self._connection().execute(sql, (bucket, key))]

    def has_blocks(self, bucket: str, key: str, etag: str, size: int) -> bool:
        row = (
            self._connection()
            .execute(
                "SELECT 1 FROM entries WHERE bucket = ? AND key = ? AND etag = ? AND size = ? AND block >= 0 LIMIT 1",
                (bucket, key, etag, size),
            )
            .fetchone()
        )
        return row is not None

    def delete_filling(self, entry_ids: list[str]) -> int:
        """Delete these rows only while they are still FILLING (one statement each: a publish cannot slip in)."""
        with self.transaction() as db:
            return sum(
                db.execute("DELETE FROM entries WHERE id = ? AND state = ?", (i, EntryState.FILLING.value)).rowcount
                for i in entry_ids
            )

    def reserve(self, db: sqlite3.Connection, info: ObjectInfo, *, entry_id: str, block: int, nbytes: int) -> None:
        """Insert the FILLING row (inside the caller's transaction). A ghost hit enters the main queue."""
        ghost = db.execute("DELETE FROM ghosts WHERE id = ? RETURNING id", (entry_id,)).fetchone()
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM entries").fetchone()[0]
        db.execute(
            "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, '', ?, 0, ?, ?)",
            (
                entry_id,
                info.bucket,
                info.key,
                info.etag,
                info.size,
                block,
                nbytes,
                EntryState.FILLING.value,
                (Queue.MAIN if ghost else Queue.SMALL).value,
                seq,
                time.time(),
            ),
        )

    def publish(self, entry_id: str, checksum: str, nbytes: int) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE entries SET state = ?, checksum = ?, filled_at = ? WHERE id = ?",
                (EntryState.READY.value, checksum, time.time(), entry_id),
            )
            self._add(db, misses=1, bytes_filled=nbytes)

    def publish_group(self, published: list[tuple[str, str, int]], versions: list[ObjectInfo]) -> None:
        """Mark a group of fills READY ((entry id, checksum, bytes) each) and remember their ``versions`` as the
        origin's current ones, in one transaction (tiers/cache/group.py)."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "UPDATE entries SET state = ?, checksum = ?, filled_at = ? WHERE id = ?",
                [(EntryState.READY.value, checksum, now, entry) for entry, checksum, _ in published],
            )
            db.executemany(
                "INSERT OR REPLACE INTO heads VALUES (?, ?, ?, ?, ?, ?)",
                [(i.bucket, i.key, i.etag, i.size, i.last_modified, now) for i in versions],
            )
            self._add(db, misses=len(published), bytes_filled=sum(n for _, _, n in published))

    def delete(self, entry_ids: list[str], *, ghost: bool = False) -> None:
        with self.transaction() as db:
            self.delete_in(db, entry_ids, ghost=ghost)

    def delete_in(self, db: sqlite3.Connection, entry_ids: list[str], *, ghost: bool = False) -> None:
        db.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in entry_ids])
        if ghost and entry_ids:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM ghosts").fetchone()[0]
            db.executemany(
                "INSERT OR REPLACE INTO ghosts VALUES (?, ?)", [(i, seq + n + 1) for n, i in enumerate(entry_ids)]
            )
            keep = max(db.execute("SELECT COUNT(*) FROM entries").fetchone()[0], 64)
            db.execute(
                "DELETE FROM ghosts WHERE seq <= (SELECT MAX(seq) FROM ghosts) - ?",
                (keep,),
            )

    def hit(self, entry_id: str, nbytes: int, *, coalesced: bool = False, freq: int = 0) -> None:
        """Count a hit; raise the entry's frequency unless the caller saw it at S3-FIFO's cap (3) already."""
        if self._hits.pid != os.getpid():  # a forked child: its own buffer (the parent's copy stays the parent's)
            self._new_hit_buffer()
        if self._hits.add(entry_id, nbytes, coalesced=coalesced, bump=freq < 3):
            self.flush_hits()

    def flush_hits(self) -> None:
        """Write this process's buffered hits now."""
        if self._hits.pid != os.getpid():
            return
        counters, freq = self._hits.take()
        if counters or freq:
            with self.transaction() as db:
                _write_hits(db, counters, freq)

    def used_bytes(self, db: sqlite3.Connection) -> tuple[int, int]:
        """(bytes of READY entries, bytes reserved by FILLING ones)."""
        rows = dict(db.execute("SELECT state, COALESCE(SUM(nbytes), 0) FROM entries GROUP BY state").fetchall())
        return int(rows.get(EntryState.READY.value, 0)), int(rows.get(EntryState.FILLING.value, 0))

    def policy_nodes(self, db: sqlite3.Connection) -> tuple[list[Node], list[str]]:
        rows = db.execute(
            "SELECT id, nbytes, queue, freq FROM entries WHERE state = ? ORDER BY seq", (EntryState.READY.value,)
        ).fetchall()
        nodes = [Node(key=r[0], size=r[1], queue=Queue(r[2]), freq=r[3]) for r in rows]
        ghosts = [r[0] for r in db.execute("SELECT id FROM ghosts ORDER BY seq")]
        return nodes, ghosts

    def save_policy(self, db: sqlite3.Connection, nodes: list[Node]) -> None:
        """Persist queue order and frequencies after an eviction round (new seq numbers after every READY one)."""
        base = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM entries").fetchone()[0]
        db.executemany(
            "UPDATE entries SET queue = ?, freq = ?, seq = ? WHERE id = ?",
            [(n.queue.value, n.freq, base + i, n.key) for i, n in enumerate(nodes)],
        )

    # -- pins, heads, counters -------------------------------------------------------------------------

    def pin(self, bucket: str, key: str, *, pinned: bool = True) -> None:
        with self.transaction() as db:
            if pinned:
                db.execute("INSERT OR IGNORE INTO pins VALUES (?, ?)", (bucket, key))
            else:
                db.execute("DELETE FROM pins WHERE bucket = ? AND key = ?", (bucket, key))

    def pinned_ids(self, db: sqlite3.Connection) -> set[str]:
        rows = db.execute("SELECT e.id FROM entries e JOIN pins p ON e.bucket = p.bucket AND e.key = p.key")
        return {r[0] for r in rows}

    def head(self, bucket: str, key: str, max_age_s: float) -> ObjectInfo | None:
        row = (
            self._connection()
            .execute("SELECT etag, size, modified, checked FROM heads WHERE bucket = ? AND key = ?", (bucket, key))
            .fetchone()
        )
        if row is None or time.time() - row[3] > max_age_s:
            return None
        return ObjectInfo(bucket=bucket, key=key, etag=row[0], size=row[1], last_modified=row[2])

    def head_and_entry(self, bucket: str, key: str, max_age_s: float) -> tuple[ObjectInfo, Entry | None] | None:
        """The remembered version (if younger than ``max_age_s``) and its whole-object entry, in one query."""
        columns = ", ".join(f"e.{c}" for c in _COLUMNS.split(", "))
        row = (
            self._connection()
            .execute(
                f"SELECT h.etag, h.size, h.modified, h.checked, {columns} FROM heads h "  # noqa: S608 - constants
                "LEFT JOIN entries e ON e.bucket = h.bucket AND e.key = h.key AND e.etag = h.etag "
                "AND e.size = h.size AND e.block = -1 WHERE h.bucket = ? AND h.key = ?",
                (bucket, key),
            )
            .fetchone()
        )
        if row is None or time.time() - row[3] > max_age_s:
            return None
        info = ObjectInfo(bucket=bucket, key=key, etag=row[0], size=row[1], last_modified=row[2])
        return info, (None if row[4] is None else _entry(row[4:]))

    def remember_head(self, info: ObjectInfo, *, from_get: bool = False) -> None:
        """Record the origin's current version (from a HEAD, or from a GET's response headers)."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO heads VALUES (?, ?, ?, ?, ?, ?)",
                (info.bucket, info.key, info.etag, info.size, info.last_modified, time.time()),
            )
            self._add(db, backend_heads=0 if from_get else 1)

    def forget_head(self, bucket: str, key: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM heads WHERE bucket = ? AND key = ?", (bucket, key))

    def forget_heads(self, prefix: str | None) -> int:
        """Forget the HEAD rows of every object whose ``bucket/key`` starts with ``prefix`` (None: all of them)."""
        with self.transaction() as db:
            rows = db.execute("SELECT bucket, key FROM heads").fetchall()
            gone = [(b, k) for b, k in rows if prefix is None or f"{b}/{k}".startswith(prefix)]
            db.executemany("DELETE FROM heads WHERE bucket = ? AND key = ?", gone)
        return len(gone)

    def meta(self, bucket: str, key: str, etag: str) -> dict[str, str] | None:
        """The origin's content headers of this version (Content-Type, x-amz-meta-* ...), as the site recorded them."""
        row = (
            self._connection()
            .execute("SELECT headers FROM meta WHERE bucket = ? AND key = ? AND etag = ?", (bucket, key, etag))
            .fetchone()
        )
        return None if row is None else {str(k): str(v) for k, v in json.loads(row[0]).items()}

    def remember_meta(self, bucket: str, key: str, etag: str, headers: dict[str, str]) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM meta WHERE bucket = ? AND key = ?", (bucket, key))  # one version's worth
            db.execute("INSERT INTO meta VALUES (?, ?, ?, ?)", (bucket, key, etag, json.dumps(headers)))

    def add(self, **deltas: int) -> None:
        with self.transaction() as db:
            self._add(db, **deltas)

    @staticmethod
    def _add(db: sqlite3.Connection, **deltas: int) -> None:
        changed = [(name, value) for name, value in deltas.items() if value]
        if len(changed) == 1:
            db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (changed[0][1], changed[0][0]))
        elif changed:  # one statement for all of them (a hit counts two or three)
            cases = " ".join("WHEN ? THEN ?" for _ in changed)
            names = ", ".join("?" for _ in changed)
            db.execute(
                f"UPDATE counters SET value = value + CASE name {cases} END WHERE name IN ({names})",  # noqa: S608
                [item for pair in changed for item in pair] + [name for name, _ in changed],
            )

    def counters(self) -> dict[str, int]:
        self.flush_hits()
        return {str(k): int(v) for k, v in self._connection().execute("SELECT name, value FROM counters")}
