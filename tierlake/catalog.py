"""Where every lake table, checkpoint folder and lease lives: the one module that builds their paths.

A table is a path inside a bucket (``silver/ev`` in ``tierlake-lake``); Spark reads it as ``s3a://``, delta-rs,
boto3 and the cold tier as ``s3://``. Users may name a table either way or by its path alone
(:func:`parse_table`). The layout of the lake bucket::

    bronze/<topic with . as _>                 raw Kafka records          bronze/_checkpoints/<topic>   ingest query
    silver/<entity>  quarantine/<entity>  dropped/<entity>                silver/_checkpoints/<entity>  (unused by
    gold/<entity>_windows  gold/<entity>_anomalies  gold/<entity>_tokens gold/_checkpoints/<entity>    the one-hop
    _leases/<name>/<generation>.json           writer leases                                        ingest query)

Each table the pipeline writes is laid out for its lifecycle (:func:`day_layout`): bronze by ingest day, silver and
gold by event day, so a day's rows live in files of their own and the cold tier moves whole days
(docs/lifecycle.md says why partitions rather than Delta clustering).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tierlake.errors import ConfigError

CHECKPOINTS = "_checkpoints"
LEASES = "_leases"
_PATH = re.compile(r"^[A-Za-z0-9_.=-]+(/[A-Za-z0-9_.=-]+)*$")


@dataclass(frozen=True)
class TablePath:
    """A table (or a folder such as a checkpoint) in a bucket."""

    bucket: str
    path: str

    @property
    def s3a(self) -> str:
        """For Spark (hadoop-aws)."""
        return f"s3a://{self.bucket}/{self.path}"

    @property
    def s3(self) -> str:
        """For delta-rs, boto3, pyarrow and the tiers."""
        return f"s3://{self.bucket}/{self.path}"

    def __str__(self) -> str:
        return self.s3


def check_table_path(path: str) -> str | None:
    """Why ``path`` is not a table path inside a bucket (None: it is one)."""
    if not path:
        return "the path is empty"
    if not _PATH.match(path):
        return (
            "a table is a path in the lake bucket such as silver/ev (letters, digits, _ . = -; no scheme, no leading /)"
        )
    if any(part in (".", "..") for part in path.split("/")):
        return "no . or .. parts"
    return None


def parse_table(text: str, *, lake_bucket: str, other_buckets: bool = False) -> TablePath:
    """``silver/ev``, ``s3://<bucket>/silver/ev`` or ``s3a://<bucket>/silver/ev`` as a :class:`TablePath`.

    A URI in another bucket than ``lake_bucket`` is refused unless ``other_buckets``.
    """
    name, bucket = text.strip(), lake_bucket
    if "://" in name:
        scheme, _, rest = name.partition("://")
        if scheme not in ("s3", "s3a"):
            raise ConfigError(f"table {text!r} is invalid: scheme {scheme!r}. Fix: use s3://, s3a:// or a lake path")
        bucket, _, name = rest.partition("/")
        if bucket != lake_bucket and not other_buckets:
            raise ConfigError(
                f"table {text!r} is in bucket {bucket!r}, not the lake bucket {lake_bucket!r}. "
                "Fix: give a path in the lake such as silver/ev"
            )
    name = name.strip("/")
    if (why := check_table_path(name)) is not None:
        raise ConfigError(f"table {text!r} is invalid: {why}. Fix: e.g. silver/ev or s3://{lake_bucket}/silver/ev")
    return TablePath(bucket, name)


def in_lake(uri: str, lake_bucket: str) -> bool:
    """Whether ``uri`` (``s3://`` or ``s3a://``) names something in the lake bucket."""
    return any(uri.startswith(f"{scheme}://{lake_bucket}/") for scheme in ("s3", "s3a"))


INGEST_DAY = "ingest_date"
EVENT_DAY = "event_date"


@dataclass(frozen=True)
class DayLayout:
    """A table partitioned by day: the writer adds ``column``, the UTC date of the timestamp column ``source``."""

    column: str
    source: str


def day_layout(path: str, *, event_time: str = "ts") -> DayLayout | None:
    """How the pipeline lays out the table at ``path`` (None: not partitioned, e.g. quarantine or gold tokens).

    ``event_time``: the entity's event-time field (``entities.<name>.event_time`` in conf/).
    """
    layer, _, rest = path.strip("/").partition("/")
    if layer == "bronze" and rest and not rest.startswith("_"):
        return DayLayout(INGEST_DAY, "ingest_time")
    if layer == "silver" and rest and not rest.startswith("_"):
        return DayLayout(EVENT_DAY, event_time)
    if layer == "gold" and rest.endswith("_windows"):
        return DayLayout(EVENT_DAY, "window_start")
    if layer == "gold" and rest.endswith("_anomalies"):
        return DayLayout(EVENT_DAY, "ts")
    return None


def topic_folder(topic: str) -> str:
    """A Kafka topic's name as a folder (``ev.telemetry`` -> ``ev_telemetry``)."""
    return topic.replace(".", "_")


def bronze(lake_bucket: str, topic: str) -> TablePath:
    return TablePath(lake_bucket, f"bronze/{topic_folder(topic)}")


def bronze_checkpoint(lake_bucket: str, topic: str) -> TablePath:
    """The ingest query's checkpoint (it writes bronze and silver in one hop)."""
    return TablePath(lake_bucket, f"bronze/{CHECKPOINTS}/{topic_folder(topic)}")


def silver(lake_bucket: str, entity: str) -> TablePath:
    return TablePath(lake_bucket, f"silver/{entity}")


def quarantine(lake_bucket: str, entity: str) -> TablePath:
    return TablePath(lake_bucket, f"quarantine/{entity}")


def dropped(lake_bucket: str, entity: str) -> TablePath:
    return TablePath(lake_bucket, f"dropped/{entity}")


def silver_checkpoint(lake_bucket: str, entity: str) -> TablePath:
    return TablePath(lake_bucket, f"silver/{CHECKPOINTS}/{entity}")


def gold_windows(lake_bucket: str, entity: str) -> TablePath:
    return TablePath(lake_bucket, f"gold/{entity}_windows")


def gold_anomalies(lake_bucket: str, entity: str) -> TablePath:
    return TablePath(lake_bucket, f"gold/{entity}_anomalies")


def gold_tokens(lake_bucket: str, entity: str) -> TablePath:
    return TablePath(lake_bucket, f"gold/{entity}_tokens")


def gold_checkpoint(lake_bucket: str, entity: str) -> TablePath:
    return TablePath(lake_bucket, f"gold/{CHECKPOINTS}/{entity}")


def entity_tables(lake_bucket: str, entity: str, topic: str) -> list[TablePath]:
    """Every table the ingestion of ``entity`` (from ``topic``) writes: the ones its writer lease covers."""
    return [
        bronze(lake_bucket, topic),
        silver(lake_bucket, entity),
        quarantine(lake_bucket, entity),
        dropped(lake_bucket, entity),
        gold_windows(lake_bucket, entity),
        gold_anomalies(lake_bucket, entity),
        gold_tokens(lake_bucket, entity),
    ]


def lease_prefix(name: str) -> str:
    """The key prefix of writer lease ``name`` in the lake bucket (its generations are objects under it)."""
    return f"{LEASES}/{name}/"
