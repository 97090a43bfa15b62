"""Typed settings, loaded once at the entry point and passed down.

Precedence, highest first: explicit overrides (CLI flags) > ``TIERLAKE_*`` environment variables >
``conf/<profile>.yaml`` > ``conf/base.yaml``. Nested keys in the environment use a double underscore:
``TIERLAKE_KAFKA__NODES=3`` sets ``kafka.nodes``; ``TIERLAKE_RUN_DIR`` sets the top-level ``run_dir``.
Secrets (the S3 keys) come only from the environment or the secret file that ``tierlake stack up`` creates;
a conf file that holds one is refused.

Every value remembers where it came from, so a bad one fails with the file (or variable), the key, the value
and the fix. Library code never reads ``os.environ``: the environment is an argument of :func:`load_settings`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tierlake.catalog import check_table_path
from tierlake.entities import EntitySpec, build_entities
from tierlake.errors import ConfigError

ENV_PREFIX = "TIERLAKE_"
ENV_NESTING = "__"
PROFILES = ("local", "ci", "prod")
SECRET_KEYS = frozenset({"s3.access_key", "s3.secret_key"})
EPHEMERAL_PORTS_START = 32768
_OPAQUE_KEYS = frozenset({"spark.extra_conf", "entities", "maintenance.tables", "archive.tables"})
_ENV_NOT_KEYS = frozenset({"TIERLAKE_PROFILE", "TIERLAKE_CONF_DIR", "TIERLAKE_CACHE"})  # choose files, not values
_T = TypeVar("_T")


@dataclass(frozen=True)
class Secret:
    """A credential that never shows itself in repr, str or logs."""

    value: str = field(repr=False)

    def __str__(self) -> str:
        return "****" if self.value else ""

    def __repr__(self) -> str:
        return "Secret('****')"


@dataclass(frozen=True, kw_only=True)
class TopicSettings:
    name: str
    partitions: int
    replication: int
    retention_ms: int


@dataclass(frozen=True, kw_only=True)
class KafkaSettings:
    managed: bool
    nodes: int
    bootstrap_servers: str
    broker_port: int
    controller_port: int
    port_stride: int
    heap_mb: int
    topics: tuple[TopicSettings, ...]

    def broker_ports(self, nodes: int | None = None) -> list[int]:
        return [self.broker_port + i * self.port_stride for i in range(nodes or self.nodes)]

    def bootstrap(self, nodes: int | None = None) -> str:
        """The bootstrap list clients use: the local brokers when managed, else the configured cluster."""
        if not self.managed:
            return self.bootstrap_servers
        return ",".join(f"127.0.0.1:{port}" for port in self.broker_ports(nodes))


@dataclass(frozen=True, kw_only=True)
class CephSettings:
    managed: bool
    mon_port: int
    rgw_port: int
    osds: int
    osd_size_gb: int
    ec_k: int
    ec_m: int


@dataclass(frozen=True, kw_only=True)
class S3Settings:
    endpoint: str
    region: str
    lake_bucket: str
    buckets: tuple[str, ...]
    credentials_file: Path
    access_key: Secret
    secret_key: Secret

    def has_credentials(self) -> bool:
        return bool(self.access_key.value and self.secret_key.value)

    def require_credentials(self) -> tuple[str, str]:
        if not self.has_credentials():
            raise ConfigError(
                "no S3 credentials: set TIERLAKE_S3__ACCESS_KEY and TIERLAKE_S3__SECRET_KEY, or run "
                f"`tierlake stack up`, which creates {self.credentials_file} for the local Ceph"
            )
        return self.access_key.value, self.secret_key.value


@dataclass(frozen=True, kw_only=True)
class SparkSettings:
    master: str
    driver_memory: str
    shuffle_partitions: int
    local_ip: str
    jars_dir: Path
    codegen_min_batch_rows: int
    extra_conf: Mapping[str, str]


@dataclass(frozen=True, kw_only=True)
class CacheSettings:
    """The edge cache (tiers/cache): where, how big, and its site server."""

    directory: Path
    max_bytes: int
    disk_fraction: float
    block_bytes: int
    revalidate_s: float
    immutable_patterns: tuple[str, ...]
    direct_io: bool
    fill_timeout_s: float
    warm_concurrency: int
    site_host: str
    site_port: int
    site_credentials_file: Path


OPTIMIZE_MODES = ("compact", "zorder")
MIN_VACUUM_RETENTION_HOURS = 168.0  # Delta's own floor (7 days): readers of older snapshots need those files


@dataclass(frozen=True, kw_only=True)
class TableMaintenance:
    """How OPTIMIZE lays out one table: ``compact`` (bin-packing) or ``zorder`` (clustered by ``zorder_by``)."""

    table: str
    optimize: str
    zorder_by: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class MaintenanceSettings:
    """Table maintenance (pipelines/lake/maintenance.py): OPTIMIZE, VACUUM, checkpoints, stats."""

    vacuum_retention_hours: float
    target_file_mb: int
    lease_ttl_s: float
    metrics_file: Path
    max_ingest_staleness_s: float
    tables: tuple[TableMaintenance, ...]

    def table(self, name: str) -> TableMaintenance:
        """The configured layout of ``name``; a table not in conf/ is compacted."""
        for entry in self.tables:
            if entry.table == name:
                return entry
        return TableMaintenance(table=name, optimize="compact")


@dataclass(frozen=True, kw_only=True)
class MirrorSettings:
    """The second site (pipelines/lake/mirror.py): an endpoint (empty: the lake's), a bucket, what to copy."""

    endpoint: str
    bucket: str
    credentials_file: Path | None
    tables: tuple[str, ...]
    checkpoint_prefixes: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class ArchiveTable:
    """Cold-tier policy of one table: what goes cold when, its record key, how long the online copy stays."""

    table: str
    partition_column: str
    key_column: str
    cold_by: str  # "age" (the partition's date value) or "access" (last read through the edge cache)
    cold_after_days: int
    retention_days: int


@dataclass(frozen=True, kw_only=True)
class ArchiveSettings:
    """The cold tier (tiers/tape, tiers/archive): the tape library, its sites and the catalog."""

    backend: str
    library_dir: Path
    sites: tuple[str, ...]
    cartridges_per_site: int
    drives_per_site: int
    cartridge_capacity_mb: int
    block_size: int
    aggregate_mb: int
    drive_mb_s: float
    verify_after_write: bool
    catalog_uri: str
    audit_uri: str
    staging_dir: Path
    changer_load: str
    changer_unload: str
    mount_command: str
    unmount_command: str
    tables: Mapping[str, ArchiveTable]


@dataclass(frozen=True, kw_only=True)
class Settings:
    profile: str
    root: Path
    run_dir: Path
    kafka: KafkaSettings
    ceph: CephSettings
    s3: S3Settings
    spark: SparkSettings
    cache: CacheSettings
    archive: ArchiveSettings
    maintenance: MaintenanceSettings
    mirror: MirrorSettings
    entities: Mapping[str, EntitySpec]
    sources: tuple[str, ...]

    def with_credentials(self, access_key: str, secret_key: str) -> Settings:
        s3 = replace(self.s3, access_key=Secret(access_key), secret_key=Secret(secret_key))
        return replace(self, s3=s3)


# ---------------------------------------------------------------------------------------------------------
# Loading


class _Values:
    """Flat dotted keys -> (value, source). Hands out typed values and remembers which keys were used."""

    def __init__(self, flat: dict[str, tuple[Any, str]]) -> None:
        self._flat = flat
        self._used: set[str] = set()

    def source(self, key: str) -> str:
        return self._flat[key][1] if key in self._flat else "defaults"

    def fail(self, key: str, value: object, why: str, fix: str) -> ConfigError:
        shown = "****" if key in SECRET_KEYS else repr(value)
        return ConfigError(f"{self.source(key)}: {key} = {shown} is invalid: {why}. Fix: {fix}")

    def get(
        self,
        key: str,
        kind: type[_T],
        *,
        fix: str,
        check: Callable[[_T], str | None] | None = None,
        default: _T | None = None,
    ) -> _T:
        self._used.add(key)
        if key not in self._flat:
            if default is not None:
                return default
            raise ConfigError(f"missing config key {key} in {self.source(key)}. Fix: {fix}")
        value = self._flat[key][0]
        if kind is bool and not isinstance(value, bool):
            raise self.fail(key, value, "expected true or false", fix)
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise self.fail(key, value, "expected an integer", fix)
        if kind is str and not isinstance(value, str):
            value = str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
            if not isinstance(value, str):
                raise self.fail(key, value, "expected a string", fix)
        if kind is list and not isinstance(value, list):
            raise self.fail(key, value, "expected a list", fix)
        if kind is dict and not isinstance(value, dict):
            raise self.fail(key, value, "expected a mapping", fix)
        if check is not None and (why := check(value)) is not None:
            raise self.fail(key, value, why, fix)
        return value  # type: ignore[no-any-return]

    def unused(self) -> list[str]:
        return sorted(set(self._flat) - self._used)


def _flatten(tree: Mapping[str, Any], source: str, prefix: str = "") -> dict[str, tuple[Any, str]]:
    flat: dict[str, tuple[Any, str]] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        # Free-form mappings stay one value: Spark conf keys, and entity schemas (validated in tierlake.entities).
        if isinstance(value, dict) and dotted not in _OPAQUE_KEYS:
            flat.update(_flatten(value, source, f"{dotted}."))
        else:
            flat[dotted] = (value, source)
    return flat


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist. Fix: create it or choose another profile") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}). Fix: correct the syntax at the position shown") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


def _env_layer(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    flat: dict[str, tuple[Any, str]] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name in _ENV_NOT_KEYS:
            continue
        key = name[len(ENV_PREFIX) :].lower().replace(ENV_NESTING, ".")
        # Parse as a YAML scalar so TIERLAKE_KAFKA__NODES=3 is the integer 3; secrets stay verbatim strings.
        value: Any = raw if key in SECRET_KEYS else yaml.safe_load(raw) if raw else raw
        flat[key] = (value, f"environment variable {name}")
    return flat


def find_conf_dir(start: Path) -> Path:
    """The nearest ``conf/`` holding ``base.yaml`` at or above ``start``."""
    for folder in (start, *start.parents):
        if (folder / "conf" / "base.yaml").is_file():
            return folder / "conf"
    raise ConfigError(
        f"no conf/base.yaml found at or above {start}. Fix: run tierlake inside its checkout, "
        "or set TIERLAKE_CONF_DIR to the folder holding base.yaml"
    )


def load_settings(
    profile: str | None = None,
    *,
    conf_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Resolve the settings once. ``env`` defaults to ``os.environ`` only here, at the process edge."""
    env = dict(os.environ) if env is None else env
    conf_dir = conf_dir or (Path(env["TIERLAKE_CONF_DIR"]) if "TIERLAKE_CONF_DIR" in env else None)
    conf_dir = (conf_dir or find_conf_dir(Path.cwd())).resolve()
    if profile is not None and not profile.strip():
        raise ConfigError(f"--profile {profile!r} is empty. Fix: give one of {PROFILES}, or leave the flag out (local)")
    profile = profile or env.get("TIERLAKE_PROFILE") or "local"
    if profile not in PROFILES:
        raise ConfigError(
            f"profile {profile!r} is unknown (from --profile or TIERLAKE_PROFILE). Fix: use one of {PROFILES}"
        )
    flat: dict[str, tuple[Any, str]] = {}
    sources = []
    for name in ("base", profile):
        path = conf_dir / f"{name}.yaml"
        layer = _flatten(_read_yaml(path), str(path))
        if leaked := sorted(SECRET_KEYS & set(layer)):
            raise ConfigError(
                f"{path}: {', '.join(leaked)} must not be in a conf file (conf/ is in git). "
                "Fix: delete it there and set TIERLAKE_S3__ACCESS_KEY / TIERLAKE_S3__SECRET_KEY"
            )
        flat.update(layer)
        sources.append(str(path))
    flat.update(_env_layer(env))
    for key, value in (overrides or {}).items():
        flat[key] = (value, "command line")
    values = _Values(flat)
    settings = _build(values, profile=profile, root=conf_dir.parent, sources=tuple(sources))
    if unknown := values.unused():
        where = ", ".join(f"{key} ({values.source(key)})" for key in unknown)
        raise ConfigError(f"unknown config keys: {where}. Fix: remove them or correct the spelling")
    return settings


# ---------------------------------------------------------------------------------------------------------
# Building the typed tree


def _positive(value: int) -> str | None:
    return None if value > 0 else "must be at least 1"


def _port(value: int) -> str | None:
    return None if 1024 <= value <= 65535 else "must be a port between 1024 and 65535"


def _url(value: str) -> str | None:
    return None if re.match(r"^https?://[^/\s]+", value) else "must be an http:// or https:// URL"


def _bucket_name(value: str) -> str | None:
    ok = re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value)
    return None if ok else "S3 bucket names are 3-63 characters of a-z, 0-9, '.', '-'"


def _build_kafka(values: _Values) -> KafkaSettings:
    managed = values.get("kafka.managed", bool, fix="true to start Kafka locally, false to use bootstrap_servers")
    nodes = values.get(
        "kafka.nodes",
        int,
        fix="use 1 (demo) or 3 (durability)",
        check=lambda n: None if n in (1, 3) else "the local stack runs 1 or 3 combined broker/controller nodes",
    )
    bootstrap = values.get("kafka.bootstrap_servers", str, default="", fix="host:port[,host:port...]")
    if not managed and not bootstrap:
        raise values.fail(
            "kafka.bootstrap_servers",
            bootstrap,
            "required when kafka.managed is false",
            "set it to your cluster's brokers, e.g. kafka-1:9092,kafka-2:9092",
        )
    topics = []
    for index, item in enumerate(values.get("kafka.topics", list, fix="a list of {name, partitions, ...}")):
        where = f"kafka.topics[{index}]"
        if not isinstance(item, dict) or not {"name", "partitions", "replication", "retention_ms"} <= set(item):
            raise values.fail(
                "kafka.topics",
                item,
                f"{where} needs name, partitions, replication, retention_ms",
                "give every topic all four keys",
            )
        if not all(isinstance(item[k], int) and item[k] > 0 for k in ("partitions", "replication")):
            raise values.fail(
                "kafka.topics",
                item,
                f"{where}: partitions and replication must be integers >= 1",
                "correct the numbers",
            )
        topics.append(
            TopicSettings(
                name=str(item["name"]),
                partitions=item["partitions"],
                replication=item["replication"],
                retention_ms=int(item["retention_ms"]),
            )
        )
    kafka = KafkaSettings(
        managed=managed,
        nodes=nodes,
        bootstrap_servers=bootstrap,
        broker_port=values.get("kafka.broker_port", int, check=_port, fix="a free port, e.g. 19092"),
        controller_port=values.get("kafka.controller_port", int, check=_port, fix="a free port, e.g. 19093"),
        port_stride=values.get("kafka.port_stride", int, check=_positive, fix="e.g. 10: node 2 uses port+10"),
        heap_mb=values.get(
            "kafka.heap_mb",
            int,
            fix="at least 256",
            check=lambda n: None if n >= 256 else "a broker needs at least 256 MB of heap",
        ),
        topics=tuple(topics),
    )
    _check_kafka_ports(values, kafka)
    return kafka


def _check_kafka_ports(values: _Values, kafka: KafkaSettings) -> None:
    """Broker and controller ports of up to 3 nodes must not collide, nor fall in the ephemeral range."""
    ports = [p + i * kafka.port_stride for i in range(3) for p in (kafka.broker_port, kafka.controller_port)]
    if len(set(ports)) != len(ports):
        raise values.fail(
            "kafka.port_stride",
            kafka.port_stride,
            f"node ports collide: {sorted(ports)}",
            "use a stride larger than controller_port - broker_port",
        )
    if max(ports) >= EPHEMERAL_PORTS_START:
        raise values.fail(
            "kafka.broker_port",
            kafka.broker_port,
            f"node ports reach {max(ports)}, inside Linux's ephemeral range (32768-60999) where any "
            "outgoing connection may take them",
            "keep broker_port + 2 * port_stride + 1 below 32768",
        )


def _build_s3(values: _Values, root: Path) -> S3Settings:
    buckets = values.get("s3.buckets", list, fix="a list of bucket names")
    for bucket in buckets:
        if (why := _bucket_name(str(bucket))) is not None:
            raise values.fail("s3.buckets", bucket, why, "rename the bucket")
    lake_bucket = values.get("s3.lake_bucket", str, check=_bucket_name, fix="one of s3.buckets")
    if lake_bucket not in buckets:
        raise values.fail("s3.lake_bucket", lake_bucket, f"not in s3.buckets {buckets}", "add it to s3.buckets")
    credentials_file = root / values.get("s3.credentials_file", str, fix="a path, e.g. .run/secrets/s3.env")
    access_key = values.get("s3.access_key", str, default="", fix="set TIERLAKE_S3__ACCESS_KEY")
    secret_key = values.get("s3.secret_key", str, default="", fix="set TIERLAKE_S3__SECRET_KEY")
    if bool(access_key) != bool(secret_key):
        given, missing = ("s3.access_key", "s3.secret_key") if access_key else ("s3.secret_key", "s3.access_key")
        raise ConfigError(
            f"{given} is set ({values.source(given)}) but {missing} is not. "
            "Fix: set both TIERLAKE_S3__ACCESS_KEY and TIERLAKE_S3__SECRET_KEY, or neither to use the secret file"
        )
    if not access_key:
        access_key, secret_key = read_credentials_file(credentials_file)
    return S3Settings(
        endpoint=values.get("s3.endpoint", str, check=_url, fix="e.g. http://127.0.0.1:7480").rstrip("/"),
        region=values.get(
            "s3.region",
            str,
            fix="any non-empty region name, e.g. us-east-1",
            check=lambda r: None if r else "SigV4 signing needs a region",
        ),
        lake_bucket=lake_bucket,
        buckets=tuple(str(b) for b in buckets),
        credentials_file=credentials_file,
        access_key=Secret(access_key),
        secret_key=Secret(secret_key),
    )


def _build(values: _Values, *, profile: str, root: Path, sources: tuple[str, ...]) -> Settings:
    run_dir = root / values.get("run_dir", str, fix="a folder for the local stack's data, logs and pids")
    ceph = CephSettings(
        managed=values.get("ceph.managed", bool, fix="true to start Ceph locally, false to use s3.endpoint"),
        mon_port=values.get("ceph.mon_port", int, check=_port, fix="a free port, e.g. 3300"),
        rgw_port=values.get("ceph.rgw_port", int, check=_port, fix="a free port, e.g. 7480"),
        osds=values.get(
            "ceph.osds",
            int,
            fix="3 for an EC 2+1 pool",
            check=lambda n: None if n >= 3 else "EC 2+1 needs 3 OSDs",
        ),
        osd_size_gb=values.get("ceph.osd_size_gb", int, check=_positive, fix="e.g. 4 (sparse file)"),
        ec_k=values.get("ceph.ec_k", int, check=_positive, fix="e.g. 2"),
        ec_m=values.get("ceph.ec_m", int, check=_positive, fix="e.g. 1"),
    )
    if ceph.ec_k + ceph.ec_m > ceph.osds:
        raise values.fail(
            "ceph.osds",
            ceph.osds,
            f"EC {ceph.ec_k}+{ceph.ec_m} needs k+m OSDs",
            f"raise ceph.osds to {ceph.ec_k + ceph.ec_m}",
        )
    s3 = _build_s3(values, root)
    if ceph.managed and s3.endpoint != f"http://127.0.0.1:{ceph.rgw_port}":
        raise values.fail(
            "s3.endpoint",
            s3.endpoint,
            "the managed local Ceph serves RGW on loopback",
            f"set s3.endpoint to http://127.0.0.1:{ceph.rgw_port} or ceph.managed to false",
        )
    extra = values.get("spark.extra_conf", dict, default={}, fix="a mapping of Spark conf keys to values")
    spark = SparkSettings(
        master=values.get(
            "spark.master",
            str,
            fix="local[2], spark://host:7077 or k8s://...",
            check=lambda m: None if m else "must not be empty",
        ),
        driver_memory=values.get(
            "spark.driver_memory",
            str,
            fix="e.g. 1g",
            check=lambda m: None if re.fullmatch(r"\d+[mg]", m) else "expected e.g. 512m or 2g",
        ),
        shuffle_partitions=values.get("spark.shuffle_partitions", int, check=_positive, fix="e.g. 2 on 2 cores"),
        local_ip=values.get("spark.local_ip", str, fix="127.0.0.1 for the local stack"),
        jars_dir=root / values.get("spark.jars_dir", str, fix="where infra/bootstrap.sh puts the jars"),
        codegen_min_batch_rows=values.get(
            "spark.codegen_min_batch_rows",
            int,
            check=lambda n: None if n >= 0 else "must be 0 or more",
            fix="e.g. 20000; 0 compiles every batch",
        ),
        extra_conf={str(k): str(v) for k, v in extra.items()},
    )
    kafka = _build_kafka(values)
    raw_entities = values.get("entities", dict, default={}, fix="a mapping of entity name -> schema")
    entities = build_entities(raw_entities, values.source("entities"), {t.name for t in kafka.topics})
    return Settings(
        profile=profile,
        root=root,
        run_dir=run_dir,
        kafka=kafka,
        ceph=ceph,
        s3=s3,
        spark=spark,
        cache=_build_cache(values, root, run_dir),
        archive=_build_archive(values, root, run_dir),
        maintenance=_build_maintenance(values, root, run_dir),
        mirror=_build_mirror(values, root, s3),
        entities=entities,
        sources=sources,
    )


def _build_cache(values: _Values, root: Path, run_dir: Path) -> CacheSettings:
    folder = values.get("cache.dir", str, default="", fix="a folder on local NVMe; empty means <run_dir>/edge-cache")
    fraction = values.get("cache.disk_fraction", str, fix="a fraction in (0, 1], e.g. 0.9")
    try:
        disk_fraction = float(fraction)
    except ValueError:
        disk_fraction = -1.0
    if not 0 < disk_fraction <= 1:
        raise values.fail("cache.disk_fraction", fraction, "must be a number in (0, 1]", "e.g. 0.9")
    timing = {}
    for name in ("revalidate_s", "fill_timeout_s"):
        raw = values.get(f"cache.{name}", str, fix="seconds, e.g. 0 or 300")
        try:
            timing[name] = float(raw)
        except ValueError:
            timing[name] = -1.0
        if timing[name] < 0 or (name == "fill_timeout_s" and timing[name] == 0):
            raise values.fail(f"cache.{name}", raw, "must be a number of seconds >= 0 (fill_timeout_s > 0)", "e.g. 300")
    block_bytes = values.get(
        "cache.block_bytes",
        int,
        fix="e.g. 8388608 (8 MiB)",
        check=lambda n: None if n >= 4096 else "a block holds at least 4096 bytes",
    )
    site_keys = values.get("cache.site_credentials_file", str, default="", fix="empty, or a path for the keys file")
    immutable = values.get(
        "cache.immutable_patterns",
        list,
        fix="a list of key globs, e.g. ['*.parquet', '!*/_delta_log/*'], or [] to revalidate every key",
        check=lambda globs: next(
            (f"{g!r} is not a glob" for g in globs if not isinstance(g, str) or not g.removeprefix("!")), None
        ),
    )
    return CacheSettings(
        directory=(root / folder) if folder else run_dir / "edge-cache",
        max_bytes=values.get("cache.max_bytes", int, check=_positive, fix="a byte budget, e.g. 10737418240"),
        disk_fraction=disk_fraction,
        block_bytes=block_bytes,
        revalidate_s=timing["revalidate_s"],
        immutable_patterns=tuple(immutable),
        direct_io=values.get("cache.direct_io", bool, fix="true (O_DIRECT fills) or false (page-cache writes)"),
        fill_timeout_s=timing["fill_timeout_s"],
        warm_concurrency=values.get("cache.warm_concurrency", int, check=_positive, fix="parallel GETs, e.g. 4"),
        site_host=values.get("cache.site_host", str, fix="the address to listen on, e.g. 0.0.0.0 or 127.0.0.1"),
        site_port=values.get("cache.site_port", int, check=_port, fix="a free port, e.g. 7680"),
        site_credentials_file=(root / site_keys) if site_keys else run_dir / "secrets" / "cache-site.env",
    )


def _float(values: _Values, key: str, *, fix: str, minimum: float) -> float:
    raw = values.get(key, str, fix=fix)
    try:
        number = float(raw)
    except ValueError:
        raise values.fail(key, raw, f"must be a number >= {minimum:g}", fix) from None
    if number < minimum:
        raise values.fail(key, number, f"must be a number >= {minimum:g}", fix)
    return number


def _build_maintenance(values: _Values, root: Path, run_dir: Path) -> MaintenanceSettings:
    retention = _float(
        values,
        "maintenance.vacuum_retention_hours",
        fix=f"{MIN_VACUUM_RETENTION_HOURS:g} (7 days) or more",
        minimum=MIN_VACUUM_RETENTION_HOURS,
    )
    raw_tables = values.get("maintenance.tables", dict, default={}, fix="a mapping of table path -> {optimize: ...}")
    tables = []
    for name, spec in raw_tables.items():
        fix = "e.g. silver/ev: {optimize: zorder, zorder_by: [station_id]} or {optimize: compact}"
        if (why := check_table_path(str(name))) is not None:
            raise values.fail("maintenance.tables", name, why, fix)
        if (
            not isinstance(spec, dict)
            or spec.get("optimize") not in OPTIMIZE_MODES
            or set(spec)
            - {
                "optimize",
                "zorder_by",
            }
        ):
            raise values.fail(
                "maintenance.tables",
                {name: spec},
                f"optimize must be one of {OPTIMIZE_MODES} (keys: optimize, zorder_by)",
                fix,
            )
        columns = spec.get("zorder_by", [])
        if not isinstance(columns, list) or (spec["optimize"] == "zorder") != bool(columns):
            raise values.fail(
                "maintenance.tables", {name: spec}, "zorder needs a non-empty zorder_by list; compact takes none", fix
            )
        tables.append(TableMaintenance(table=str(name), optimize=spec["optimize"], zorder_by=tuple(map(str, columns))))
    metrics = values.get("maintenance.metrics_file", str, default="", fix="a path, or empty for the run dir")
    return MaintenanceSettings(
        vacuum_retention_hours=retention,
        target_file_mb=values.get("maintenance.target_file_mb", int, check=_positive, fix="e.g. 128"),
        lease_ttl_s=_float(values, "maintenance.lease_ttl_s", fix="seconds, at least 3, e.g. 30", minimum=3),
        metrics_file=(root / metrics) if metrics else run_dir / "metrics" / "tierlake_tables.prom",
        max_ingest_staleness_s=_float(values, "maintenance.max_ingest_staleness_s", fix="seconds, e.g. 300", minimum=1),
        tables=tuple(tables),
    )


def _build_mirror(values: _Values, root: Path, s3: S3Settings) -> MirrorSettings:
    endpoint = values.get("mirror.endpoint", str, default="", fix="empty (same endpoint) or e.g. https://rgw-b:443")
    if endpoint and (why := _url(endpoint)) is not None:
        raise values.fail("mirror.endpoint", endpoint, why, "empty (same endpoint) or e.g. https://rgw-b:443")
    bucket = values.get("mirror.bucket", str, check=_bucket_name, fix="a bucket at the second site")
    if not endpoint and bucket == s3.lake_bucket:
        raise values.fail(
            "mirror.bucket",
            bucket,
            "the mirror would overwrite the lake itself",
            "use another bucket, e.g. tierlake-mirror",
        )
    keys = values.get("mirror.credentials_file", str, default="", fix="empty, or a file with access_key=/secret_key=")
    tables = [str(t) for t in values.get("mirror.tables", list, default=[], fix="a list of table paths")]
    for table in tables:
        if (why := check_table_path(table)) is not None:
            raise values.fail("mirror.tables", table, why, "e.g. [silver/ev, gold/ev_windows]")
    prefixes = [str(p) for p in values.get("mirror.checkpoint_prefixes", list, default=[], fix="a list of prefixes")]
    for prefix in prefixes:
        if not prefix.endswith("/") or prefix.startswith("/"):
            raise values.fail(
                "mirror.checkpoint_prefixes", prefix, "a prefix is a folder ending in /", "e.g. training/ckpt/"
            )
    return MirrorSettings(
        endpoint=endpoint.rstrip("/"),
        bucket=bucket,
        credentials_file=(root / keys) if keys else None,
        tables=tuple(tables),
        checkpoint_prefixes=tuple(prefixes),
    )


_ARCHIVE_TABLE_KEYS = {"partition_column", "key_column", "cold_by", "cold_after_days", "retention_days"}


def _build_archive_tables(values: _Values) -> dict[str, ArchiveTable]:
    raw = values.get("archive.tables", dict, default={}, fix="a mapping of lake table path -> policy")
    tables = {}
    for name, policy in raw.items():
        fix = f"give archive.tables.{name} the keys {sorted(_ARCHIVE_TABLE_KEYS)}"
        if not isinstance(policy, dict) or set(policy) != _ARCHIVE_TABLE_KEYS:
            raise values.fail("archive.tables", {name: policy}, "a table policy needs exactly its five keys", fix)
        if policy["cold_by"] not in ("age", "access"):
            raise values.fail("archive.tables", {name: policy}, "cold_by must be age or access", fix)
        numbers = (policy["cold_after_days"], policy["retention_days"])
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
            raise values.fail("archive.tables", {name: policy}, "days must be integers >= 0", fix)
        tables[str(name).strip("/")] = ArchiveTable(
            table=str(name).strip("/"),
            partition_column=str(policy["partition_column"]),
            key_column=str(policy["key_column"]),
            cold_by=policy["cold_by"],
            cold_after_days=policy["cold_after_days"],
            retention_days=policy["retention_days"],
        )
    return tables


def _build_archive(values: _Values, root: Path, run_dir: Path) -> ArchiveSettings:
    sites = values.get("archive.sites", list, fix="two site names, e.g. [site-a, site-b]")
    if len(sites) != 2 or len(set(sites)) != 2 or not all(re.fullmatch(r"[a-z0-9-]+", str(s)) for s in sites):
        raise values.fail(
            "archive.sites", sites, "two copies need two distinct sites named a-z, 0-9, '-'", "e.g. [site-a, site-b]"
        )
    folder = values.get("archive.library_dir", str, default="", fix="a folder; empty means <run_dir>/tape")
    staging = values.get("archive.staging_dir", str, default="", fix="a folder; empty means <run_dir>/archive/staging")
    catalog = values.get("archive.catalog_uri", str, default="", fix="a folder or s3:// URI; empty: <run_dir>/archive")
    audit = values.get("archive.audit_uri", str, default="", fix="a folder or s3:// URI; empty: <run_dir>/archive")
    speed = values.get("archive.drive_mb_s", str, fix="0 (no limit) or MB/s, e.g. 360")
    try:
        drive_mb_s = float(speed)
    except ValueError:
        drive_mb_s = -1.0
    if drive_mb_s < 0:
        raise values.fail("archive.drive_mb_s", speed, "must be a number >= 0", "0 for no limit, or e.g. 360")
    command = "a command template with {barcode} {slot} {drive} {mount} {site}, or empty"
    return ArchiveSettings(
        backend=values.get(
            "archive.backend",
            str,
            fix="virtual (a tape library on disk) or ltfs (mounted LTFS volumes)",
            check=lambda b: None if b in ("virtual", "ltfs") else "must be virtual or ltfs",
        ),
        library_dir=(root / folder) if folder else run_dir / "tape",
        sites=tuple(str(s) for s in sites),
        cartridges_per_site=values.get("archive.cartridges_per_site", int, check=_positive, fix="e.g. 4"),
        drives_per_site=values.get("archive.drives_per_site", int, check=_positive, fix="e.g. 2"),
        cartridge_capacity_mb=values.get("archive.cartridge_capacity_mb", int, check=_positive, fix="e.g. 3072"),
        block_size=values.get(
            "archive.block_size",
            int,
            fix="1048576 (1 MiB; mkltfs's default is 524288)",
            check=lambda n: None if 4096 <= n <= 4 * 1024 * 1024 else "LTFS blocks are 4 KiB to 4 MiB",
        ),
        aggregate_mb=values.get("archive.aggregate_mb", int, check=_positive, fix="e.g. 256"),
        drive_mb_s=drive_mb_s,
        verify_after_write=values.get("archive.verify_after_write", bool, fix="true: read back and compare SHA-256"),
        catalog_uri=catalog or str(run_dir / "archive" / "catalog"),
        audit_uri=audit or str(run_dir / "archive" / "audit"),
        staging_dir=(root / staging) if staging else run_dir / "archive" / "staging",
        changer_load=values.get("archive.changer_load", str, default="", fix=command),
        changer_unload=values.get("archive.changer_unload", str, default="", fix=command),
        mount_command=values.get("archive.mount_command", str, default="", fix=command),
        unmount_command=values.get("archive.unmount_command", str, default="", fix=command),
        tables=_build_archive_tables(values),
    )


# ---------------------------------------------------------------------------------------------------------
# Secret file and display


def read_credentials_file(path: Path) -> tuple[str, str]:
    """``access_key=...`` / ``secret_key=...`` lines; ("", "") when the file does not exist yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "", ""
    pairs = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return pairs.get("access_key", "").strip(), pairs.get("secret_key", "").strip()


def masked(settings: Settings) -> dict[str, Any]:
    """The resolved settings as plain data, secrets masked: what ``tierlake config show`` prints."""

    def plain(value: Any) -> Any:
        if isinstance(value, Secret):
            return str(value)
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if hasattr(value, "__dataclass_fields__"):
            return {name: plain(getattr(value, name)) for name in value.__dataclass_fields__}
        return value

    result: dict[str, Any] = plain(settings)
    return result
