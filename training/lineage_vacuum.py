"""VACUUM's lineage records, kept in the lake: which files a VACUUM deleted, from which table, at which version.

A VACUUM is the one maintenance operation whose lineage cannot be derived afterwards: Spark's VACUUM leaves no
commit on this stack's S3, and the files it deleted are gone. So ``tierlake table vacuum --execute`` writes, per
table it vacuumed, the OpenLineage event (``training.lineage_records.vacuum_event``, validated first) as one object
``<lake>/_lineage/vacuum/<table path>/<version>-<run id>.json``, created with ``If-None-Match: *`` (the same run id
is the same record). In the lake, not in a local file, so a sync on another host sees it. ``tierlake lineage sync``
adds the records it does not hold to the lineage table (one row per deleted file); ``tierlake lineage trace`` of a
table version says which of its files a VACUUM deleted.

Life of a record: WRITTEN (the object exists; ``trace`` reads it) -> SYNCED (rows in the lineage table). Records are
never deleted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from tierlake.errors import StorageError
from training.lineage_records import vacuum_event, validate_event

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)
VACUUM_PREFIX = "_lineage/vacuum"


def table_path(uri: str, bucket: str) -> str:
    """``s3://<bucket>/silver/ev`` -> ``silver/ev``; refuses a table outside the bucket."""
    prefix = f"s3://{bucket}/"
    plain = uri.replace("s3a://", "s3://", 1)
    if not plain.startswith(prefix):
        raise StorageError(
            f"VACUUM record of table {uri!r}: not a table of the lake bucket {bucket!r}. Fix: vacuum lake tables "
            "only (`tierlake table vacuum <path>`)"
        )
    return plain[len(prefix) :].strip("/")


class VacuumLog:
    """The VACUUM records under ``s3://<bucket>/_lineage/vacuum/`` (owns nothing but a boto3 client)."""

    def __init__(self, client: S3Client, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def key(self, event: dict[str, Any]) -> str:
        (table,) = event["inputs"]
        version = int(table["facets"]["version"]["datasetVersion"])
        return (
            f"{VACUUM_PREFIX}/{table_path(str(table['name']), self.bucket)}/{version:012d}-{event['run']['runId']}.json"
        )

    def record(self, *, uri: str, version: int, deleted: Collection[str], finished_unix: float) -> str:
        """Write the record of one executed VACUUM; its ``s3://`` URI. Written again, the same record is kept."""
        event = vacuum_event(uri=uri, version=version, deleted=deleted, at=datetime.fromtimestamp(finished_unix, UTC))
        validate_event(event)
        key = self.key(event)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(event).encode(), IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "412"):
                raise self._error(f"writing {key}", exc, deleted) from exc
        except BotoCoreError as exc:
            raise self._error(f"writing {key}", exc, deleted) from exc
        logger.info(
            "VACUUM of %s at version %d: %d files recorded in %s",
            uri,
            version,
            len(deleted),
            key,
            extra={"table_version": version},
        )
        return f"s3://{self.bucket}/{key}"

    def _error(self, what: str, exc: Exception, deleted: Collection[str]) -> StorageError:
        return StorageError(
            f"VACUUM lineage: {what} in bucket {self.bucket!r} failed: {exc}. The VACUUM itself is done "
            f"({len(deleted)} files deleted; the command's --json output lists them). Fix: check the endpoint and "
            "credentials (s3.endpoint, s3.credentials_file); without the record the lineage does not show this VACUUM"
        )

    def events(self, skip_runs: Collection[str] = (), *, table: str | None = None) -> list[dict[str, Any]]:
        """The records' events, oldest version first; those whose run id is in ``skip_runs`` are not read.
        ``table``: one table's path (``silver/ev``) only."""
        prefix = f"{VACUUM_PREFIX}/{table.strip('/')}/" if table else f"{VACUUM_PREFIX}/"
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    key = item.get("Key", "")
                    run = key.rsplit("/", 1)[-1].removesuffix(".json").partition("-")[2]
                    if key.endswith(".json") and run not in skip_runs:
                        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                        found.append((key, json.loads(body)))
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(
                f"VACUUM lineage: reading s3://{self.bucket}/{prefix} failed: {exc}. Fix: check s3.endpoint and "
                "s3.credentials_file"
            ) from exc
        return [event for _, event in sorted(found, key=lambda item: item[0])]
