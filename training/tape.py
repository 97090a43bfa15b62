"""Checkpoints on tape: the cold tier (tiers/archive) as the farthest checkpoint tier, behind the same protocol.

A step goes to tape through the archiver's own write path (:func:`tiers.archive.archiver.write_members`): its
files, each checked against the manifest's size and CRC-32C and hashed (SHA-256) on the way, the manifest as the
last member of the last aggregate, one cartridge at each site written at once and read back, then the catalog
rows of both copies in one Delta commit. So a step is on tape when, and only when, the catalog holds its
manifest's rows: a tape copy is never half a checkpoint, and a killed archive leaves nothing listed.

A restore reads it back through the recall path (:func:`tiers.archive.recall.recall`, into a scratch folder:
:class:`tiers.archive.recall_io.FolderTarget`): one mount per cartridge, tape order, each file's SHA-256 checked
before it appears; a bad copy is planned again from the other site's cartridge; then every file is checked
against the manifest (sizes, CRC-32C) as on every other tier. Both recall events go to the audit log.

The catalog's rows of a step: ``table`` ``<prefix>/<run>``, ``path`` ``<step>/<file>``, ``key`` the step's RGW key,
``partition`` ``step=<step>``, ``version_min`` = ``version_max`` = the step.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tierlake.errors import CommitConflict, NotFound, StorageError, TapeError
from tiers.archive.aggregate import Member
from tiers.archive.archiver import file_id, write_members
from tiers.archive.catalog import Catalog
from tiers.archive.context import ArchiveContext
from tiers.archive.recall import FolderTarget, catalog_rows_under, plan_recall, recall
from training.manifest import MANIFEST_NAME, CheckpointCorrupt, Manifest, check_shard, copy_counting, verify_folder
from training.tiers import FaultHook, Progress, check_run, step_name

logger = logging.getLogger(__name__)
TAPE_TIER = "tape"


def _hashes(path: Path) -> tuple[int, int, str]:
    """(size, CRC-32C, SHA-256) of a file in one read: the manifest's checksum and the archive's."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        size, crc = copy_counting(stream.read, digest.update)
    return size, crc, digest.hexdigest()


class TapeTier:
    """Checkpoints of ``s3://<bucket>/<prefix>/`` archived to tape (two copies, two sites) and listed in the
    archive catalog. Written by ``tierlake checkpoint archive`` and ``promote --to tape``; never by the
    checkpointer's background promotions (a mount takes minutes on a real library)."""

    name = TAPE_TIER

    def __init__(
        self,
        context: ArchiveContext,
        catalog: Catalog,
        *,
        bucket: str,
        prefix: str = "training/checkpoints",
        retention_days: int = 0,
        progress: bool = False,
    ) -> None:
        if retention_days < 0:
            raise StorageError(f"retention_days = {retention_days} is negative. Fix: use 0 or more days")
        self.context = context
        self.catalog = catalog
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.retention_days = retention_days
        self.progress = progress

    def __repr__(self) -> str:
        return f"TapeTier({self.catalog.catalog_uri!r}, s3://{self.bucket}/{self.prefix})"

    def table(self, run: str) -> str:
        """The catalog's ``table`` of a run's checkpoints."""
        return f"{self.prefix}/{check_run(run)}"

    def step_prefix(self, run: str, step: int) -> str:
        return f"{self.table(run)}/{step_name(step)}/"

    def _rows(self, prefix: str) -> list[dict[str, Any]]:
        """The catalog rows (every copy) under ``prefix``; none when there is no catalog yet (nothing archived)."""
        try:
            if not self.catalog.exists():
                return []
            return catalog_rows_under(self.catalog, self.bucket, prefix)
        except StorageError:
            raise
        except Exception as exc:  # delta-rs raises its own exception types for I/O
            raise StorageError(f"reading the archive catalog {self.catalog.catalog_uri} failed: {exc}") from exc

    def _by_step(self, run: str) -> dict[int, list[dict[str, Any]]]:
        base = self.table(run) + "/"
        found: dict[int, list[dict[str, Any]]] = {}
        for row in self._rows(base):
            step_part, _, rest = str(row["key"])[len(base) :].partition("/")
            if step_part.isdigit() and rest:
                found.setdefault(int(step_part), []).append(row)
        return found

    def where(self, run: str, step: int) -> str:
        cartridges = self.cartridges(run, step)
        return f"tape:s3://{self.bucket}/{self.step_prefix(run, step)} (cartridges {', '.join(cartridges) or 'none'})"

    def cartridges(self, run: str, step: int) -> list[str]:
        """The cartridges that hold a copy of the step (both sites)."""
        return sorted({str(r["cartridge"]) for r in self._rows(self.step_prefix(run, step))})

    def steps(self, run: str) -> list[int]:
        manifest = MANIFEST_NAME
        return sorted(s for s, rows in self._by_step(run).items() if any(r["key"].endswith(manifest) for r in rows))

    def uncommitted(self, run: str) -> list[int]:
        """Always empty in practice: a step's rows are appended in one catalog commit, the manifest's among them."""
        manifest = MANIFEST_NAME
        return sorted(s for s, rows in self._by_step(run).items() if not any(r["key"].endswith(manifest) for r in rows))

    def runs(self) -> list[str]:
        base = self.prefix + "/"
        return sorted({str(r["key"])[len(base) :].split("/", 1)[0] for r in self._rows(base)} - {""})

    def manifest(self, run: str, step: int) -> Manifest:
        scratch = Path(tempfile.mkdtemp(prefix=f"tierlake-tape-manifest-{run}-"))
        try:
            self._recall(run, step, [MANIFEST_NAME], scratch)
            path = scratch / MANIFEST_NAME
            return Manifest.from_json(path.read_bytes(), f"{self.where(run, step)}{MANIFEST_NAME}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _recall(self, run: str, step: int, names: Sequence[str] | None, folder: Path) -> None:
        """Recall the step's files ``names`` (None: all of them) into ``folder``, each checked by its SHA-256;
        a bad copy is read again from the other site's cartridge."""
        base = self.step_prefix(run, step)
        rows = self._rows(base)
        keys = sorted({str(r["key"]) for r in rows}) if names is None else [base + name for name in names]
        if MANIFEST_NAME not in {k[len(base) :] for k in (str(r["key"]) for r in rows)}:
            raise NotFound(f"step {step} of run {run!r} is not on tape (no manifest in the archive catalog)")
        plan = plan_recall(rows, [(self.bucket, key) for key in keys])
        if plan.unarchived:
            raise CheckpointCorrupt(
                f"{self.where(run, step)}: {len(plan.unarchived)} file(s) not in the archive catalog: "
                f"{list(plan.unarchived)[:3]}. Fix: use another tier"
            )
        try:
            report = recall(
                self.context,
                self.catalog,
                plan,
                target=FolderTarget(folder, base),
                asked_by="tierlake checkpoint restore",
                reason=f"checkpoint {run}@{step}",
                progress=self.progress,
            )
        except TapeError as exc:
            raise CheckpointCorrupt(f"{self.where(run, step)}: {exc}. Fix: use another tier") from exc
        for fallback in report.fallbacks:
            logger.warning("checkpoint %s@%d from tape: %s", run, step, fallback, extra={"tier": self.name})

    @contextlib.contextmanager
    def local_copy(self, run: str, step: int, *, verify: bool = True) -> Iterator[tuple[Path, Manifest]]:
        del verify  # the recall checks each file's SHA-256 and the manifest's checks follow either way
        scratch = Path(tempfile.mkdtemp(prefix=f"tierlake-tape-restore-{run}-"))
        try:
            self._recall(run, step, None, scratch)
            where = self.where(run, step)
            manifest = Manifest.from_json((scratch / MANIFEST_NAME).read_bytes(), f"{where}{MANIFEST_NAME}")
            verify_folder(scratch, manifest)
            yield scratch, manifest
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def verify(self, run: str, step: int) -> Manifest:
        with self.local_copy(run, step) as (_, manifest):
            return manifest

    def remove(self, run: str, step: int) -> None:
        raise StorageError(
            f"step {step} of run {run!r} on tape is not removed by checkpoint commands: tape copies stay until "
            "their retention ends (tierlake archive retention). Fix: gc local, edge or rgw copies only"
        )

    def put_step(
        self, source: Path, manifest: Manifest, *, fault: FaultHook | None = None, progress: Progress | None = None
    ) -> None:
        """Archive a committed step: its files from ``source`` (each checked against ``manifest``), the manifest
        last; both sites written and verified before the catalog lists any of it."""
        run, step = manifest.run, manifest.step
        if step in self.steps(run):
            raise CommitConflict(f"step {step} of run {run!r} is already on tape ({self.where(run, step)})")
        run_id = f"ckpt-{uuid.uuid4().hex[:12]}"
        staging = self.context.archive.staging_dir / run_id
        staging.mkdir(parents=True, exist_ok=True)
        try:
            members = []
            for entry in manifest.shards:
                size, crc, sha256 = _hashes(source / entry.name)
                check_shard(entry, size, crc, str(source))  # never archive a damaged copy
                members.append(self._member(run, step, source / entry.name, entry.name, size=size, sha256=sha256))
                if progress is not None:
                    progress(size)
            committed = staging / MANIFEST_NAME
            committed.write_bytes(manifest.to_json())
            size, _, sha256 = _hashes(committed)
            members.append(self._member(run, step, committed, MANIFEST_NAME, size=size, sha256=sha256))  # last
            if fault is not None:
                fault("promotion")
            try:
                cartridges, _ = write_members(
                    self.context.archive, self.catalog, members, run_id, progress=self.progress
                )
            except TapeError as exc:
                raise StorageError(
                    f"archiving step {step} of run {run!r} to tape failed: {exc}. Fix: check the library "
                    "(tierlake archive verify); nothing was added to the catalog, so the next archive tries again"
                ) from exc
            self.catalog.record(
                "archive",
                table=self.table(run),
                target=step_name(step),
                files=len(members),
                bytes=sum(m.size for m in members),
                cartridges=cartridges,
                version=step,
            )
            logger.info(
                "checkpoint %s@%d archived to tape: %s",
                run,
                step,
                cartridges,
                extra={"tier": self.name, "cartridge": ",".join(cartridges.values())},
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _member(self, run: str, step: int, path: Path, name: str, *, size: int, sha256: str) -> Member:
        now = datetime.now(UTC)
        table, relative = self.table(run), f"{step_name(step)}/{name}"
        fields = {
            "file_id": file_id(table, relative),
            "table": table,
            "path": relative,
            "bucket": self.bucket,
            "key": f"{table}/{relative}",
            "partition": f"step={step_name(step)}",
            "partition_values": f'{{"step": "{step_name(step)}"}}',
            "version_min": step,
            "version_max": step,
            "sha256": sha256,
            "row_count": 0,
            "key_column": "",
            "key_min": "",
            "key_max": "",
            "archived_at": now.isoformat(),
            "retention_until": (now + timedelta(days=self.retention_days)).isoformat(),
            "hold_reason": "",
        }
        return Member(source=path, size=size, fields=fields)
