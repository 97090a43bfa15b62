"""Reads through tape: what the loader does when files of the pinned version were archived and purged.

``Recall(context=..., mode=...)`` (or :meth:`Recall.from_context`, which takes ``archive.recall`` and
``archive.recall_to`` from conf/) is passed to :func:`loaders.delta_dataset` / :func:`loaders.token_dataset`:

- before planning, :meth:`Recall.prepare` asks the archive catalog which files of the version are on tape only and
  builds one recall plan for all of them (tiers/archive/recall.py: one mount per cartridge, files in tape order);
- ``never``: NotFound naming each missing file and the cartridges that hold it, and the estimate of a recall;
- ``ask``: ``confirm(plan, estimate)`` decides (a CLI prompts the user); without ``confirm``, or declined, as never;
- ``auto``: the files are recalled (progress bar), to the lake under their keys or only into the edge cache
  (``to``), checked against their SHA-256, then read.

The file source is wrapped (:class:`RecallingSource`) so that a file found missing later (after a cached plan, or
purged while the epoch runs) is recalled on its own by the same rule, and a file recalled into the cache is read
from there. Recalls are audited with who asked (user, host, process) and why (``reason``).
"""

from __future__ import annotations

import os
import posixpath
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
    from tiers.archive.recall import Estimate, RecallPlan, RecallReport

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

    def apply(self, plan: RecallPlan, *, what: str) -> RecallReport:
        """Recall ``plan`` as the mode says, or raise NotFound naming each file, its cartridges and the estimate."""
        from tiers.archive.catalog import actor  # noqa: PLC0415
        from tiers.archive.recall import recall  # noqa: PLC0415

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
        return recall(
            self.context,
            self._catalog(),
            plan,
            to=self.to,
            asked_by=f"{actor()} pid {os.getpid()} ({self.requester})",
            reason=self.reason or f"read of {what}",
            progress=self.progress,
        )

    def wrap(self, source: FileSource) -> RecallingSource:
        return RecallingSource(source, self)


class RecallingSource:
    """A file source that recalls, by its :class:`Recall`'s rule, a file the wrapped source finds missing, and
    serves files recalled into the edge cache from there. Pickling drops ``confirm`` (a worker process never asks:
    under ``ask`` it raises NotFound) and the cache handle."""

    def __init__(self, inner: FileSource, recall: Recall) -> None:
        self.inner = inner
        self.recall = recall
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
            if (cached := self._cached(uri)) is not None:
                return cached
            plan = self.recall.plan([uri])
            if not plan.cartridges and not plan.unarchived:
                raise  # not on tape: missing for another reason (vacuumed)
            self.recall.apply(plan, what=uri)
        cached = self._cached(uri)
        return cached if cached is not None else self.inner.open(uri)


def _folder_of(keys: set[str]) -> str:
    """The deepest folder holding every key (the table's, for a snapshot's files): the catalog scan's prefix."""
    folders = [key.rsplit("/", 1)[0] if "/" in key else "" for key in keys]
    return posixpath.commonpath(folders) if folders and all(folders) else ""


def with_recall(snapshot: Snapshot, source: FileSource, recall: Recall | None) -> FileSource:
    """The loaders' hook: ``source`` itself when no recall is asked for; else the version's files on tape are
    recalled (or refused) now, once for all of them, and ``source`` is wrapped for files found missing later."""
    if recall is None:
        return source
    recall.prepare(snapshot)
    return recall.wrap(source)
