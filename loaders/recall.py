"""Reads through tape: what the loader does when files of the pinned version were archived and purged.

``Recall(context=..., mode=...)`` (or :meth:`Recall.from_context`, which takes ``archive.recall`` and
``archive.recall_to`` from conf/) is passed to :func:`loaders.delta_dataset` / :func:`loaders.token_dataset`:

- before planning, :meth:`Recall.prepare` asks the archive catalog which files of the version are on tape only and
  builds one recall plan for all of them (tiers/archive/recall.py: one mount per cartridge, files in tape order);
- ``never``: NotFound naming each missing file and the cartridges that hold it, and the estimate of a recall;
- ``ask``: ``confirm(plan, estimate)`` decides (a CLI prompts the user); without ``confirm``, or declined, as never;
- ``auto``: the files are recalled (progress bar), to the lake under their keys or only into the edge cache
  (``to``), checked against their SHA-256, then read.

A read does not wait for the whole recall (:func:`with_recall`): the refusal (``never``, ``ask`` declined) comes
at once, then the recall runs in a background thread (:class:`PendingRecall`), in tape order, and each file can be
opened as soon as it is verified and published; an open of a file still on its way waits for that file only.

The file source is wrapped (:class:`RecallingSource`) so that a file found missing later (after a cached plan, or
purged while the epoch runs) is recalled on its own by the same rule, and a file recalled into the cache is read
from there. Recalls are audited with who asked (user, host, process) and why (``reason``).
"""

from __future__ import annotations

import logging
import os
import posixpath
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from loaders.table import FileSource, Snapshot
from tierlake.config.archive import RECALL_MODES, RECALL_TARGETS
from tierlake.errors import ConfigError, NotFound

if TYPE_CHECKING:
    from tiers.archive.catalog import Catalog
    from tiers.archive.context import ArchiveContext
    from tiers.archive.recall import Estimate, RecallFile, RecallPlan, RecallReport

logger = logging.getLogger(__name__)
Confirm = Callable[["RecallPlan", "Estimate"], bool]


@dataclass(frozen=True, kw_only=True)
class Recall:
    """How a read treats files of its version that are on tape only. ``reason`` goes to the audit log. ``context``
    is the archive's part of the settings (the entry point builds it), not the whole ``Settings``."""

    context: ArchiveContext
    mode: str = "never"
    to: str = "lake"
    reason: str = ""
    confirm: Confirm | None = None
    progress: bool = True
    requester: str = "loader"  # what asked, in the audit log beside the user, host and process

    def __post_init__(self) -> None:
        if self.mode not in RECALL_MODES:
            raise ConfigError(f"recall mode = {self.mode!r} is invalid. Fix: use one of {', '.join(RECALL_MODES)}")
        if self.to not in RECALL_TARGETS:
            raise ConfigError(
                f"recall_to = {self.to!r} is invalid. Fix: use lake (back under the original keys) or cache "
                "(only this node's edge cache)"
            )

    @classmethod
    def from_context(
        cls,
        context: ArchiveContext,
        *,
        mode: str | None = None,
        to: str | None = None,
        reason: str = "",
        confirm: Confirm | None = None,
        progress: bool = True,
    ) -> Recall:
        """``mode`` and ``to`` default to conf/'s ``archive.recall`` and ``archive.recall_to``."""
        return cls(
            context=context,
            mode=mode or context.archive.recall,
            to=to or context.archive.recall_to,
            reason=reason,
            confirm=confirm,
            progress=progress,
        )

    def _catalog(self) -> Catalog:
        from tiers.archive.catalog import Catalog  # noqa: PLC0415 - the archive only when a read needs it

        archive = self.context.archive
        return Catalog(archive.catalog_uri, archive.audit_uri, s3=self.context.s3)

    def plan(self, uris: list[str]) -> RecallPlan:
        """The recall plan of those of ``uris`` (s3:// data files) that are purged and not back yet."""
        from tiers.archive.recall import RecallPlan, plan_for_objects  # noqa: PLC0415

        by_bucket: dict[str, set[str]] = defaultdict(set)
        for uri in uris:
            parsed = urlparse(uri)
            if parsed.scheme in ("s3", "s3a"):
                key = parsed.path.lstrip("/")
                by_bucket[parsed.netloc] |= {key, unquote(key)}
        catalog = self._catalog()
        plans = [
            plan_for_objects(self.context, catalog, b, _folder_of(keys), keys, to=self.to)
            for b, keys in by_bucket.items()
        ]
        if len(plans) == 1:
            return plans[0]
        return RecallPlan(
            cartridges=tuple(c for p in plans for c in p.cartridges),
            unarchived=tuple(u for p in plans for u in p.unarchived),
            holders={k: v for p in plans for k, v in p.holders.items()},
            rows=tuple(r for p in plans for r in p.rows),
        )

    def prepare(self, snapshot: Snapshot) -> RecallReport | None:
        """Before planning ``snapshot``: its files on tape only are recalled (auto, or ask confirmed), else
        NotFound lists them. None when every file is in the lake (or already recalled)."""
        plan = self.plan([f.uri for f in snapshot.files])
        if not plan.cartridges and not plan.unarchived:
            return None
        return self.apply(plan, what=f"{snapshot.table_uri} at version {snapshot.version}")

    def apply(
        self, plan: RecallPlan, *, what: str, published: Callable[[RecallFile, str], None] | None = None
    ) -> RecallReport:
        """Recall ``plan`` as the mode says, or raise NotFound naming each file, its cartridges and the estimate.
        ``published(file, where)``: called as each file becomes readable."""
        from tiers.archive.recall import recall  # noqa: PLC0415

        self.check(plan, what=what)
        return recall(
            self.context,
            self._catalog(),
            plan,
            to=self.to,
            asked_by=self._asked_by(),
            reason=self.reason or f"read of {what}",
            progress=self.progress,
            published=published,
        )

    def _asked_by(self) -> str:
        from tiers.archive.catalog import actor  # noqa: PLC0415

        return f"{actor()} pid {os.getpid()} ({self.requester})"

    def check(self, plan: RecallPlan, *, what: str) -> None:
        """NotFound naming each file, its cartridges and the estimate, unless the mode allows recalling ``plan``."""
        estimate = plan.estimate(drive_mb_s=self.context.archive.drive_mb_s)
        confirmed = self.mode == "auto" or (
            self.mode == "ask" and self.confirm is not None and self.confirm(plan, estimate)
        )
        if not confirmed:
            lines = "\n  ".join(plan.describe())
            raise NotFound(
                f"{estimate.files} data file(s) of {what} are on tape only (archived and purged):\n  {lines}\n"
                f"A recall reads {estimate.bytes / 1e6:.1f} MB from {estimate.cartridges} cartridge(s) in "
                f"{estimate.mounts} mount(s), about {estimate.seconds:.0f} s. Fix: pass recall=Recall(..., "
                "mode='auto') (or archive.recall: auto in conf/), or run `tierlake archive restore --version`"
            )

    def start(self, snapshot: Snapshot) -> PendingRecall | None:
        """Like :meth:`prepare`, but the recall runs in a background thread: the refusal (never, ask declined) is
        raised here, then each file is readable as soon as it is published (:meth:`PendingRecall.wait`)."""
        plan = self.plan([f.uri for f in snapshot.files])
        if not plan.cartridges and not plan.unarchived:
            return None
        what = f"{snapshot.table_uri} at version {snapshot.version}"
        self.check(plan, what=what)
        if plan.unarchived:  # recall() names them; at once, not from the thread
            return PendingRecall.finished(self.apply(plan, what=what))
        return PendingRecall(self, plan, what=what)

    def wrap(self, source: FileSource, pending: PendingRecall | None = None) -> RecallingSource:
        return RecallingSource(source, self, pending)


class PendingRecall:
    """A recall running in a background thread, in tape order. :meth:`wait` returns as soon as one file is
    published (verified first: never a part of it), so a reader starts on the first file while the rest come."""

    def __init__(self, recall: Recall | None, plan: RecallPlan | None, *, what: str = "") -> None:
        self._files = {f.uri: threading.Event() for f in plan.files} if plan is not None else {}
        self._done = threading.Event()
        self.error: BaseException | None = None
        self.report: RecallReport | None = None
        if recall is not None and plan is not None:
            thread = threading.Thread(target=self._run, args=(recall, plan, what), name="recall", daemon=True)
            thread.start()
        else:
            self._done.set()

    @classmethod
    def finished(cls, report: RecallReport) -> PendingRecall:
        pending = cls(None, None)
        pending.report = report
        return pending

    def _run(self, recall: Recall, plan: RecallPlan, what: str) -> None:
        try:
            self.report = recall.apply(plan, what=what, published=self._published)
        except BaseException as exc:  # handed to the readers waiting for a file, raised there
            logger.warning("recall of %s failed: %s", what, exc)
            self.error = exc
        finally:
            self._done.set()
            for event in self._files.values():
                event.set()

    def _published(self, item: RecallFile, _where: str) -> None:
        if (event := self._files.get(item.uri)) is not None:
            event.set()

    def wait(self, uri: str) -> bool:
        """Block until ``uri`` is published or the recall ended; False when ``uri`` is not part of this recall.
        The last file waits for the whole recall, so whoever has read every file also finds the recall audited
        and the catalog updated (as before the recall streamed). Raises the recall's error when it ended without
        publishing ``uri``."""
        event = self._files.get(uri) or self._files.get(_unquoted(uri))
        if event is None:
            return False
        event.wait()
        if all(e.is_set() for e in self._files.values()):
            self._done.wait()  # the last file: the recall's audit event and catalog update come before it is read
        if self.error is not None and self._done.is_set() and not self._was_published(uri):
            raise self.error
        return True

    def _was_published(self, uri: str) -> bool:
        return self.report is not None and any(r["uri"] in (uri, _unquoted(uri)) for r in self.report.recalled)

    def join(self) -> RecallReport | None:
        """Wait for the whole recall; its report (None if it failed: ``error`` says why)."""
        self._done.wait()
        return self.report


def _unquoted(uri: str) -> str:
    parsed = urlparse(uri)
    return f"{parsed.scheme}://{parsed.netloc}/{unquote(parsed.path).lstrip('/')}"


class RecallingSource:
    """A file source that recalls, by its :class:`Recall`'s rule, a file the wrapped source finds missing, and
    serves files recalled into the edge cache from there. Pickling drops ``confirm`` (a worker process never asks:
    under ``ask`` it raises NotFound) and the cache handle."""

    def __init__(self, inner: FileSource, recall: Recall, pending: PendingRecall | None = None) -> None:
        self.inner = inner
        self.recall = recall
        self.pending = pending
        self._cache: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"inner": self.inner, "recall": replace(self.recall, confirm=None, progress=False)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["inner"], state["recall"])  # type: ignore[misc]

    def _cached(self, uri: str) -> str | None:
        if self.recall.to != "cache":
            return None
        if self._cache is None:
            from tiers.archive.recall import CacheTarget  # noqa: PLC0415

            self._cache = CacheTarget(self.recall.context.cache)
        parsed = urlparse(uri)
        path = self._cache.local_path(parsed.netloc, unquote(parsed.path).lstrip("/"))
        return None if path is None else str(path)

    def open(self, uri: str) -> Any:
        try:
            return self.inner.open(uri)
        except NotFound:
            if self.pending is not None and self.pending.wait(uri):  # on its way from tape: this file only
                return self._published(uri)
            if (cached := self._cached(uri)) is not None:
                return cached
            plan = self.recall.plan([uri])
            if plan.cartridges or plan.unarchived:
                self.recall.apply(plan, what=uri)
            # else another reader recalled it since the open above (the catalog or the cache says so), or it is
            # not on tape (vacuumed): then the source's own NotFound is raised
        return self._published(uri)

    def _published(self, uri: str) -> Any:
        cached = self._cached(uri)
        return cached if cached is not None else self.inner.open(uri)


def _folder_of(keys: set[str]) -> str:
    """The deepest folder holding every key (the table's, for a snapshot's files): the catalog scan's prefix."""
    folders = [key.rsplit("/", 1)[0] if "/" in key else "" for key in keys]
    return posixpath.commonpath(folders) if folders and all(folders) else ""


def with_recall(snapshot: Snapshot, source: FileSource, recall: Recall | None) -> FileSource:
    """The loaders' hook: ``source`` itself when no recall is asked for; else the version's files on tape are
    refused now, or recalled in the background, once for all of them, in tape order (each file readable as soon as
    it is published), and ``source`` is wrapped for those and for files found missing later."""
    if recall is None:
        return source
    return recall.wrap(source, recall.start(snapshot))
