"""Where checkpoints live: a folder (the node's SSD, the edge NVMe) or Ceph RGW, behind one small protocol.

Every tier keeps one step of one run in one place (``<root>/<run>/<step>/`` or ``<prefix>/<run>/<step>/``) and
follows the same commit protocol: shards first, the manifest last and exclusively. A folder commits the manifest
with a hard link (fails if the name exists); RGW with ``If-None-Match: *`` (fails with 412 if the key exists), so
two writers cannot both publish one step. Removal goes the other way: manifest first, so a half-removed step is
an uncommitted one, never a damaged committed one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from tierlake.errors import CommitConflict, NotFound, StorageError
from training.manifest import (
    MANIFEST_NAME,
    CheckpointCorrupt,
    Manifest,
    ShardEntry,
    check_shard,
    checksum_stream,
    copy_counting,
    verify_folder,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)
_RUN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
FaultHook = Callable[[str], None]
Progress = Callable[[int], object]
CRC_METADATA = "crc32c"  # object metadata of a rank's file uploaded before the manifest (x-amz-meta-crc32c)


def check_run(run: str) -> str:
    """A run name is one path segment: letters, digits, ``.``, ``_``, ``-``."""
    if not _RUN.match(run):
        raise StorageError(
            f"run = {run!r} is not a valid run name. Fix: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return run


def step_name(step: int) -> str:
    """Zero-padded so that names sort as steps do."""
    if step < 0:
        raise StorageError(f"step = {step} is invalid. Fix: use 0 or more")
    return f"{step:012d}"


class CheckpointTier(Protocol):
    """One tier of checkpoints. ``name`` is what logs and restore reports say (local, edge, rgw)."""

    name: str

    def where(self, run: str, step: int) -> str: ...

    def steps(self, run: str) -> list[int]:
        """Committed steps of ``run`` (those with a manifest), ascending."""
        ...

    def uncommitted(self, run: str) -> list[int]:
        """Steps with files but no manifest: unfinished writes (or removals)."""
        ...

    def runs(self) -> list[str]: ...

    def manifest(self, run: str, step: int) -> Manifest: ...

    def put_step(
        self, source: Path, manifest: Manifest, *, fault: FaultHook | None = None, progress: Progress | None = None
    ) -> None:
        """Copy a committed step folder here, checking each file against ``manifest``; commit it last.
        ``progress`` is called with the bytes of each file copied (a progress bar's ``update``)."""
        ...

    @contextlib.contextmanager
    def local_copy(self, run: str, step: int, *, verify: bool = True) -> Iterator[tuple[Path, Manifest]]:
        """A verified local folder of the step (this tier's own folder, or a scratch download).

        ``verify=False``: a folder tier skips reading every file back first, for a caller that checks each file
        against the manifest itself as it reads it (``put_step`` does); a download is always checked."""
        ...

    def verify(self, run: str, step: int) -> Manifest: ...

    def remove(self, run: str, step: int) -> None: ...


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_manifest(folder: Path, manifest: Manifest, *, fault: FaultHook | None = None) -> None:
    """Publish ``manifest`` in ``folder`` exclusively: temp file, fsync, hard link to the final name."""
    final = folder / MANIFEST_NAME
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".manifest-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(manifest.to_json())
            stream.flush()
            os.fsync(stream.fileno())
        if fault is not None:
            fault("manifest")
        try:
            os.link(tmp, final)
        except FileExistsError as exc:
            raise CommitConflict(
                f"{final} exists: step {manifest.step} of run {manifest.run!r} is already committed there. "
                "Fix: two trainers share one run name; give each its own run"
            ) from exc
        _fsync_dir(folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class FolderTier:
    """Checkpoints in a local folder: the node's SSD (``local``) or the edge NVMe folder (``edge``)."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root

    def __repr__(self) -> str:
        return f"FolderTier({self.name!r}, {str(self.root)!r})"

    def step_dir(self, run: str, step: int) -> Path:
        return self.root / check_run(run) / step_name(step)

    def where(self, run: str, step: int) -> str:
        return str(self.step_dir(run, step))

    def _step_dirs(self, run: str) -> list[tuple[int, Path]]:
        folder = self.root / check_run(run)
        if not folder.is_dir():
            return []
        return sorted((int(p.name), p) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())

    def steps(self, run: str) -> list[int]:
        return [step for step, path in self._step_dirs(run) if (path / MANIFEST_NAME).is_file()]

    def uncommitted(self, run: str) -> list[int]:
        return [step for step, path in self._step_dirs(run) if not (path / MANIFEST_NAME).is_file()]

    def runs(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def manifest(self, run: str, step: int) -> Manifest:
        path = self.step_dir(run, step) / MANIFEST_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"{path}: no manifest, so step {step} is not committed on tier {self.name}") from exc
        return Manifest.from_json(raw, str(path))

    def put_step(
        self, source: Path, manifest: Manifest, *, fault: FaultHook | None = None, progress: Progress | None = None
    ) -> None:
        target = self.step_dir(manifest.run, manifest.step)
        target.mkdir(parents=True, exist_ok=True)
        for entry in manifest.shards:
            dest = target / entry.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".tmp")
            with (source / entry.name).open("rb") as reader, tmp.open("wb") as writer:
                size, crc = copy_counting(reader.read, writer.write)
                writer.flush()
                os.fsync(writer.fileno())
            check_shard(entry, size, crc, str(source))
            os.replace(tmp, dest)
            if progress is not None:
                progress(size)
        _fsync_dir(target)
        if fault is not None:
            fault("promotion")
        commit_manifest(target, manifest, fault=fault)

    @contextlib.contextmanager
    def local_copy(self, run: str, step: int, *, verify: bool = True) -> Iterator[tuple[Path, Manifest]]:
        yield self.step_dir(run, step), self.verify(run, step) if verify else self.manifest(run, step)

    def verify(self, run: str, step: int) -> Manifest:
        manifest = self.manifest(run, step)
        verify_folder(self.step_dir(run, step), manifest)
        return manifest

    def remove(self, run: str, step: int) -> None:
        folder = self.step_dir(run, step)
        with contextlib.suppress(FileNotFoundError):
            (folder / MANIFEST_NAME).unlink()
        shutil.rmtree(folder, ignore_errors=True)


class RgwTier:
    """Checkpoints in the lake bucket on Ceph RGW: ``<prefix>/<run>/<step>/<file>``, the manifest last."""

    name: str

    def __init__(self, client: S3Client, bucket: str, prefix: str = "training/checkpoints", name: str = "rgw") -> None:
        self.name = name
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def __repr__(self) -> str:
        return f"RgwTier({self.name!r}, s3://{self.bucket}/{self.prefix})"

    def step_prefix(self, run: str, step: int) -> str:
        return f"{self.prefix}/{check_run(run)}/{step_name(step)}/"

    def where(self, run: str, step: int) -> str:
        return f"s3://{self.bucket}/{self.step_prefix(run, step)}"

    def _keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []) if "Key" in obj)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"listing s3://{self.bucket}/{prefix} failed: {exc}") from exc
        return keys

    def _step_keys(self, run: str) -> dict[int, set[str]]:
        base = f"{self.prefix}/{check_run(run)}/"
        found: dict[int, set[str]] = {}
        for key in self._keys(base):
            step_part, _, rest = key[len(base) :].partition("/")
            if step_part.isdigit() and rest:
                found.setdefault(int(step_part), set()).add(rest)
        return found

    def steps(self, run: str) -> list[int]:
        return sorted(step for step, names in self._step_keys(run).items() if MANIFEST_NAME in names)

    def uncommitted(self, run: str) -> list[int]:
        return sorted(step for step, names in self._step_keys(run).items() if MANIFEST_NAME not in names)

    def runs(self) -> list[str]:
        runs = {key[len(self.prefix) + 1 :].split("/", 1)[0] for key in self._keys(self.prefix + "/")}
        return sorted(run for run in runs if run)

    def manifest(self, run: str, step: int) -> Manifest:
        key = self.step_prefix(run, step) + MANIFEST_NAME
        try:
            raw = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise NotFound(f"s3://{self.bucket}/{key}: no manifest, step {step} is not committed") from exc
            raise StorageError(f"reading s3://{self.bucket}/{key} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"reading s3://{self.bucket}/{key} failed: {exc}") from exc
        return Manifest.from_json(raw, f"s3://{self.bucket}/{key}")

    def put_step(
        self,
        source: Path,
        manifest: Manifest,
        *,
        fault: FaultHook | None = None,
        progress: Progress | None = None,
        uploaded: Collection[str] = (),
    ) -> None:
        """Upload the step's files from ``source``, then publish the manifest. ``uploaded``: files already there
        (other ranks', :meth:`put_files`), not in ``source``."""
        base = self.step_prefix(manifest.run, manifest.step)
        try:
            for entry in manifest.shards:
                if entry.name in uploaded:
                    continue
                with (source / entry.name).open("rb") as stream:
                    size, crc = checksum_stream(stream)
                    check_shard(entry, size, crc, str(source))  # never promote a damaged copy
                self.client.upload_file(str(source / entry.name), self.bucket, base + entry.name)
                if progress is not None:
                    progress(size)
            if fault is not None:
                fault("promotion")
            self._publish(base + MANIFEST_NAME, manifest, fault)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(
                f"promoting step {manifest.step} of run {manifest.run!r} to {self.where(manifest.run, manifest.step)} "
                f"failed: {exc}. Fix: check RGW (tierlake stack status); the next promotion tries again"
            ) from exc

    def put_files(self, run: str, step: int, source: Path, names: Collection[str]) -> list[ShardEntry]:
        """Upload one rank's files of a step not committed yet, each with its CRC-32C as object metadata, so the
        coordinating rank can list them in the manifest (:meth:`shard_entries`) without reading them."""
        base = self.step_prefix(run, step)
        entries = []
        try:
            for name in sorted(names):
                with (source / name).open("rb") as stream:
                    size, crc = checksum_stream(stream)
                extra = {"Metadata": {CRC_METADATA: str(crc)}}
                self.client.upload_file(str(source / name), self.bucket, base + name, ExtraArgs=extra)
                entries.append(ShardEntry(name=name, size=size, crc32c=crc))
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(
                f"uploading a rank's files of step {step} of run {run!r} to {self.where(run, step)} failed: {exc}. "
                "Fix: check RGW (tierlake stack status); the step stays uncommitted"
            ) from exc
        return entries

    def shard_entries(self, run: str, step: int, names: Collection[str]) -> list[ShardEntry]:
        """The manifest entries of files other ranks uploaded with :meth:`put_files` (size and CRC-32C from each
        object's metadata)."""
        base = self.step_prefix(run, step)
        entries = []
        for name in sorted(names):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=base + name)
            except (BotoCoreError, ClientError) as exc:
                raise StorageError(
                    f"{self.where(run, step)}{name}: another rank's file is not there ({exc}). Fix: check that "
                    "every rank writes the same tier; the step stays uncommitted"
                ) from exc
            crc = head.get("Metadata", {}).get(CRC_METADATA)
            if crc is None or not crc.isdigit():
                raise StorageError(
                    f"{self.where(run, step)}{name}: no {CRC_METADATA} metadata ({crc!r}), so it was not uploaded by "
                    "a rank's TierWriter. Fix: save with training.storage.TierWriter on every rank"
                )
            entries.append(ShardEntry(name=name, size=int(head["ContentLength"]), crc32c=int(crc)))
        return entries

    def _publish(self, key: str, manifest: Manifest, fault: FaultHook | None) -> None:
        if fault is not None:
            fault("manifest")
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=manifest.to_json(), IfNoneMatch="*")
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (409, 412) or exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
                raise CommitConflict(
                    f"s3://{self.bucket}/{key} exists: step {manifest.step} of run {manifest.run!r} is already "
                    "published. Fix: two trainers share one run name; give each its own run"
                ) from exc
            raise

    @contextlib.contextmanager
    def local_copy(self, run: str, step: int, *, verify: bool = True) -> Iterator[tuple[Path, Manifest]]:
        del verify  # the download checks every shard against the manifest either way
        manifest = self.manifest(run, step)
        scratch = Path(tempfile.mkdtemp(prefix=f"tierlake-restore-{run}-"))
        try:
            self._download(manifest, scratch)
            yield scratch, manifest
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _download(self, manifest: Manifest, folder: Path | None) -> None:
        """Stream every shard, checking it against ``manifest``; keep it in ``folder`` (None: only check)."""
        base = self.step_prefix(manifest.run, manifest.step)
        where = self.where(manifest.run, manifest.step).rstrip("/")
        for entry in manifest.shards:
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=base + entry.name)["Body"]
            except ClientError as exc:
                raise CheckpointCorrupt(f"{where}/{entry.name}: cannot be read ({exc}). Fix: use another tier") from exc
            if folder is None:
                size, crc = copy_counting(body.read, None)
            else:
                path = folder / entry.name
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("wb") as writer:
                    size, crc = copy_counting(body.read, writer.write)
            check_shard(entry, size, crc, where)

    def verify(self, run: str, step: int) -> Manifest:
        manifest = self.manifest(run, step)
        try:
            self._download(manifest, None)
        except BotoCoreError as exc:
            raise StorageError(f"{self.where(run, step)}: reading failed: {exc}") from exc
        return manifest

    def remove(self, run: str, step: int) -> None:
        base = self.step_prefix(run, step)
        keys = self._keys(base)
        ordered = sorted(keys, key=lambda key: not key.endswith(MANIFEST_NAME))  # the manifest goes first
        try:
            for key in ordered:
                self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"removing {self.where(run, step)} failed: {exc}") from exc
