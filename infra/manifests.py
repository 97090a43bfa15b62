"""The Kubernetes deployment of ``infra/k8s/``, checked offline: render its kustomize overlays, validate every
object against the vendored JSON schemas, and compare the manifests with ``conf/prod.yaml``.

No cluster runs here (no container engine), so nothing is applied. The renderer is the subset of kustomize the
overlays use, written in Python because no kustomize binary is installed: ``resources`` (files and folders
holding a ``kustomization.yaml``), ``labels`` (``pairs`` added to ``metadata.labels``) and ``patches`` with a
``path`` (a merge patch matched on apiVersion, kind, name and namespace: mappings merge, lists and scalars are
replaced, as kustomize does for custom resources). Any other kustomization field is refused, so an overlay never
means something here that it would not mean to ``kubectl apply -k``.

Schemas (``infra/k8s/schemas/``, provenance in its README): Kubernetes 1.34 built-in kinds, strict (unknown fields
fail), and the CRDs of Strimzi, Rook, the object bucket claim and spark-operator; the Airflow chart's values against
tierlake's own subset schema of them (the chart's ``values.schema.json`` is not vendored).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from infra.kafka import RACK_SELECTOR, min_insync
from tierlake.config import CephSettings, KafkaSettings, S3Settings, Settings
from tierlake.errors import ConfigError

logger = logging.getLogger(__name__)

K8S = Path(__file__).parent / "k8s"
SCHEMAS = K8S / "schemas"
OVERLAYS = ("small", "large")
PROD_SITE = "small"  # the overlay whose counts (Kafka brokers, Ceph OSDs) conf/prod.yaml states
AIRFLOW_VALUES = K8S / "airflow" / "values.yaml"
AIRFLOW_SCHEMA = SCHEMAS / "airflow" / "values.tierlake-subset.schema.json"
_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "labels", "patches"}
_CORE_GROUPS = {"", "apps", "batch", "rbac.authorization.k8s.io", "storage.k8s.io"}

Manifest = dict[str, Any]


def load_documents(path: Path) -> list[Manifest]:
    """Every YAML document of one file (empty documents skipped)."""
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def render(folder: Path) -> list[Manifest]:
    """The objects a kustomization folder produces (the subset described in the module docstring)."""
    path = folder / "kustomization.yaml"
    if not path.is_file():
        raise ConfigError(f"{folder} has no kustomization.yaml. Fix: point at infra/k8s/base or an overlay")
    kustomization = load_documents(path)[0]
    unknown = sorted(set(kustomization) - _KUSTOMIZATION_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: fields {unknown} are not rendered here. Fix: use only {sorted(_KUSTOMIZATION_KEYS)}, or teach "
            "infra/manifests.py the field first"
        )
    objects: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        target = (folder / entry).resolve()
        objects.extend(render(target) if target.is_dir() else load_documents(target))
    for patch in kustomization.get("patches", []):
        for change in load_documents(folder / patch["path"]):
            _apply_patch(objects, change, where=folder / patch["path"])
    for label in kustomization.get("labels", []):
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    return objects


def _key(obj: Mapping[str, Any]) -> tuple[str, str, str, str]:
    meta = obj.get("metadata", {})
    return (obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("name", ""), meta.get("namespace", ""))


def _apply_patch(objects: list[Manifest], change: Manifest, *, where: Path) -> None:
    for index, obj in enumerate(objects):
        if _key(obj) == _key(change):
            objects[index] = merge(obj, change)
            return
    raise ConfigError(f"{where}: patch target {_key(change)} is not among the resources. Fix: name an object they hold")


def merge(base: Any, change: Any) -> Any:
    """A merge patch: mappings merge key by key, anything else is replaced by the change."""
    if isinstance(base, dict) and isinstance(change, dict):
        merged = copy.deepcopy(base)
        for key, value in change.items():
            merged[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(change)


# ---------------------------------------------------------------------------------------------------------------
# schemas


def schema_path(obj: Mapping[str, Any]) -> Path:
    """The vendored schema of an object's apiVersion and kind."""
    group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
    kind = str(obj.get("kind", "")).lower()
    if group in _CORE_GROUPS:
        short = group.split(".")[0]
        name = f"{kind}-{short}-{version}.json" if short else f"{kind}-{version}.json"
        path = SCHEMAS / "kubernetes" / name
    else:
        path = SCHEMAS / "crds" / f"{group}_{kind}_{version}.json"
    if not path.is_file():
        raise ConfigError(
            f"no vendored schema for apiVersion {obj.get('apiVersion')!r} kind {obj.get('kind')!r} (looked for "
            f"{path.relative_to(K8S.parent.parent)}). Fix: vendor it as infra/k8s/schemas/README.md says"
        )
    return path


@functools.cache
def _registry() -> Registry:
    definitions = json.loads((SCHEMAS / "kubernetes" / "_definitions.json").read_text(encoding="utf-8"))
    registry: Registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    return registry


@functools.cache
def _validator(path: Path) -> Draft202012Validator:
    schema = json.loads(path.read_text(encoding="utf-8"))
    return Draft202012Validator(schema, registry=_registry())


def validate(objects: list[Manifest]) -> list[str]:
    """Every schema violation of every object, as ``Kind/name: path: message`` lines (empty: all valid)."""
    problems = []
    for obj in objects:
        label = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            validator = _validator(schema_path(obj))
        except ConfigError as exc:
            problems.append(f"{label}: {exc}")
            continue
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            problems.append(f"{label}: {where}: {error.message}")
    return problems


def validate_airflow_values(values: Mapping[str, Any]) -> list[str]:
    """Every violation of tierlake's subset schema of the Airflow chart's values (``infra/k8s/schemas/airflow/``),
    as ``airflow values: path: message`` lines (empty: valid). A key the schema does not list fails."""
    validator = _validator(AIRFLOW_SCHEMA)
    return [
        f"airflow values: {'/'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(values), key=lambda e: list(e.absolute_path))
    ]


def objects_of(objects: list[Manifest], kind: str) -> Iterator[Manifest]:
    return (obj for obj in objects if obj.get("kind") == kind)


def one(objects: list[Manifest], kind: str, name: str) -> Manifest:
    found = [obj for obj in objects_of(objects, kind) if obj["metadata"]["name"] == name]
    if len(found) != 1:
        raise ConfigError(f"expected one {kind}/{name} in the manifests, found {len(found)}")
    return found[0]


# ---------------------------------------------------------------------------------------------------------------
# one source of truth: the manifests against conf/prod.yaml

RACK_KEY = "topology.kubernetes.io/zone"
# spark-operator submits every SparkApplication in cluster mode to the in-cluster API server; the driver then builds
# its session from conf/prod.yaml's spark.master, which must therefore name the same master (no env override).
SPARK_OPERATOR_MASTER = "k8s://https://kubernetes.default.svc:443"


def disagreements(
    objects: list[Manifest], settings: Settings, airflow: Manifest, *, site: str = PROD_SITE
) -> list[str]:
    """Where the manifests of overlay ``site`` (and the Airflow values) disagree with ``conf/prod.yaml``.

    conf/prod.yaml states the counts of :data:`PROD_SITE`: that overlay's Kafka brokers and Ceph OSDs must equal
    ``kafka.nodes`` and ``ceph.osds``; a larger site's must be at least those (``kafka.nodes`` is 1 or 3).
    """
    return [
        *_kafka(objects, settings.kafka),
        *_sizes(objects, settings, site=site),
        *_ceph(objects, settings.s3, settings.ceph),
        *_spark(objects, settings),
        *_edge_and_training(objects, settings),
        *_profile_everywhere(objects, airflow),
        *_archive_workers(objects, airflow),
    ]


def _differs(what: str, manifest: object, conf: object, *, source: str = "conf/prod.yaml") -> list[str]:
    return [] if manifest == conf else [f"{what}: manifests say {manifest!r}, {source} says {conf!r}"]


def _sizes(objects: list[Manifest], settings: Settings, *, site: str) -> list[str]:
    replicas = [pool["spec"]["replicas"] for pool in objects_of(objects, "KafkaNodePool")]
    storage = next(objects_of(objects, "CephCluster"))["spec"]["storage"]
    osds = sum(device_set["count"] for device_set in storage.get("storageClassDeviceSets", []))
    brokers, nodes = sum(replicas), settings.kafka.nodes
    problems = [] if len(set(replicas)) == 1 else [f"Kafka node pools' replicas {replicas}: not one size in every zone"]
    if site == PROD_SITE:
        return [
            *problems,
            *_differs(f"Kafka brokers (node pools' replicas, overlay {site})", brokers, nodes),
            *_differs(
                f"Ceph OSDs (CephCluster storageClassDeviceSets count, overlay {site})", osds, settings.ceph.osds
            ),
        ]
    if brokers < nodes:
        problems.append(f"Kafka brokers (node pools' replicas, overlay {site}): {brokers} is below kafka.nodes {nodes}")
    if osds < settings.ceph.osds:
        problems.append(f"Ceph OSDs (overlay {site}): {osds} is below ceph.osds {settings.ceph.osds}")
    return problems


def _kafka(objects: list[Manifest], kafka: KafkaSettings) -> list[str]:
    cluster = next(objects_of(objects, "Kafka"))
    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    spec = cluster["spec"]["kafka"]
    pools = [p for p in objects_of(objects, "KafkaNodePool") if p["metadata"]["labels"]["strimzi.io/cluster"] == name]
    zones = sorted(zone for pool in pools for zone in _pool_zones(pool))
    port = next(listener["port"] for listener in spec["listeners"] if not listener.get("tls"))
    replication = max(t.replication for t in kafka.topics)
    topics = {
        (
            t["metadata"]["name"],
            t["spec"]["partitions"],
            t["spec"]["replicas"],
            int(t["spec"]["config"]["retention.ms"]),
        )
        for t in objects_of(objects, "KafkaTopic")
    }
    return [
        *_differs("Kafka node pools' zones (one pool per rack)", zones, sorted(kafka.racks)),
        *_differs("Kafka rack topology key", spec.get("rack", {}).get("topologyKey"), RACK_KEY),
        *_differs("Kafka default.replication.factor", spec["config"]["default.replication.factor"], replication),
        *_differs("Kafka min.insync.replicas", spec["config"]["min.insync.replicas"], min_insync(kafka.nodes)),
        *_differs("Kafka replica.selector.class", spec["config"].get("replica.selector.class"), RACK_SELECTOR),
        *_differs(
            "Kafka topics (name, partitions, replicas, retention.ms)",
            sorted(topics),
            sorted((t.name, t.partitions, t.replication, t.retention_ms) for t in kafka.topics),
        ),
        *_differs("kafka.bootstrap_servers", f"{name}-kafka-bootstrap.{namespace}.svc:{port}", kafka.bootstrap_servers),
    ]


def _pool_zones(pool: Manifest) -> list[str]:
    terms = pool["spec"]["template"]["pod"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    return [
        value
        for term in terms["nodeSelectorTerms"]
        for expression in term["matchExpressions"]
        if expression["key"] == RACK_KEY
        for value in expression["values"]
    ]


def _ceph(objects: list[Manifest], s3: S3Settings, ceph: CephSettings) -> list[str]:
    store = next(objects_of(objects, "CephObjectStore"))
    coded = store["spec"]["dataPool"]["erasureCoded"]
    name, namespace = store["metadata"]["name"], store["metadata"]["namespace"]
    claims = list(objects_of(objects, "ObjectBucketClaim"))
    classes = {c["metadata"]["name"]: c for c in objects_of(objects, "StorageClass")}
    stores = {classes[claim["spec"]["storageClassName"]]["parameters"]["objectStoreName"] for claim in claims}
    return [
        *_differs("EC data pool (k, m)", (coded["dataChunks"], coded["codingChunks"]), (ceph.ec_k, ceph.ec_m)),
        *_differs(
            "s3.endpoint",
            f"http://rook-ceph-rgw-{name}.{namespace}.svc:{store['spec']['gateway']['port']}",
            s3.endpoint,
        ),
        *_differs("bucket claims", sorted(c["spec"]["bucketName"] for c in claims), sorted(s3.buckets)),
        *_differs("bucket claims' object store", sorted(stores), [name]),
    ]


def _env(container: Mapping[str, Any]) -> dict[str, str]:
    return {item["name"]: str(item.get("value", "")) for item in container.get("env", [])}


def _spark(objects: list[Manifest], settings: Settings) -> list[str]:
    problems = _differs(
        "spark.master (spark-operator's in-cluster API server)", SPARK_OPERATOR_MASTER, settings.spark.master
    )
    problems += [
        f"{where}: TIERLAKE_SPARK__MASTER overrides spark.master of conf/prod.yaml. Fix: set it there only"
        for where, container in _containers(objects)
        if "TIERLAKE_SPARK__MASTER" in _env(container)
    ]
    for app in objects_of(objects, "SparkApplication"):
        spec, name = app["spec"], app["metadata"]["name"]
        conf = spec.get("sparkConf", {})
        entity = spec["arguments"][spec["arguments"].index("--entity") + 1]
        zone = conf.get(f"spark.kubernetes.node.selector.{RACK_KEY}")
        problems += _differs(f"{name}: driver memory", spec["driver"]["memory"], settings.spark.driver_memory)
        problems += _differs(
            f"{name}: spark.sql.shuffle.partitions",
            conf.get("spark.sql.shuffle.partitions"),
            str(settings.spark.shuffle_partitions),
        )
        problems += [] if entity in settings.entities else [f"{name}: entity {entity!r} is not in conf/ entities"]
        for role in ("driver", "executor"):
            rack = _env(spec[role]).get("TIERLAKE_KAFKA__CLIENT_RACK")
            problems += _differs(f"{name}: {role} client rack vs its zone", rack, zone)
            problems += (
                [] if rack in settings.kafka.racks else [f"{name}: {role} client rack {rack!r} is no kafka.racks"]
            )
    return problems


def _pod_specs(objects: list[Manifest]) -> Iterator[tuple[str, Manifest]]:
    for obj in objects:
        if obj["kind"] in ("DaemonSet", "StatefulSet", "Deployment", "Job"):
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


def _mounts(pod: Manifest) -> set[str]:
    return {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}


def _edge_and_training(objects: list[Manifest], settings: Settings) -> list[str]:
    pods = dict(_pod_specs(objects))
    cache = pods["DaemonSet/tierlake-edge-cache"]
    service = one(objects, "Service", "tierlake-edge-cache")
    ports = {p["containerPort"] for c in cache["containers"] for p in c.get("ports", [])}
    trainer = pods["Job/tierlake-train-demo"]
    checkpoint = settings.checkpoint
    args = trainer["containers"][0]["args"]
    return [
        *_differs("edge cache container port", sorted(ports), [settings.cache.site_port]),
        *_differs("edge cache Service port", [p["port"] for p in service["spec"]["ports"]], [settings.cache.site_port]),
        *_differs("edge cache NVMe mount", str(settings.cache.directory) in _mounts(cache), True),
        *_differs(
            "trainer checkpoint mounts (local_dir, edge_dir)",
            sorted(_mounts(trainer) & {str(checkpoint.local_dir), str(checkpoint.edge_dir)}),
            sorted({str(checkpoint.local_dir), str(checkpoint.edge_dir)}),
        ),
        *_differs("trainer table bucket", args[args.index("--table") + 1].split("/")[2], settings.s3.lake_bucket),
    ]


def _containers(objects: list[Manifest]) -> list[tuple[str, Manifest]]:
    """Every container that runs tierlake (all but the git-sync sidecars of the DAGs), and each Spark role."""
    containers = [
        (where, c)
        for where, pod in _pod_specs(objects)
        for c in pod["containers"]
        if not c["name"].startswith("git-sync")
    ]
    return containers + [
        (f"SparkApplication/{a['metadata']['name']} {role}", a["spec"][role])
        for a in objects_of(objects, "SparkApplication")
        for role in ("driver", "executor")
    ]


def _profile_everywhere(objects: list[Manifest], airflow: Manifest) -> list[str]:
    containers = [*_containers(objects), ("airflow values", airflow)]
    return [
        f"{where}: TIERLAKE_PROFILE is {_env(c).get('TIERLAKE_PROFILE')!r}, not 'prod'"
        for where, c in containers
        if _env(c).get("TIERLAKE_PROFILE") != "prod"
    ] + _differs("Airflow DAG folder (dags.gitSync.subPath)", airflow["dags"]["gitSync"]["subPath"], "dags")


# ---------------------------------------------------------------------------------------------------------------
# the archive workers against the Airflow values: they join the chart's Airflow as its own workers do

ARCHIVE_WORKERS = "StatefulSet/tierlake-archive"
DAGS_MOUNT = "/opt/airflow/dags"  # the chart's dags.mountPath; git-sync links the checkout at <mount>/repo
# An Airflow setting of the workers: (the values' key naming its Secret, the key inside that Secret).
_AIRFLOW_SECRETS = {
    "AIRFLOW__CELERY__BROKER_URL": (("data", "brokerUrlSecretName"), "connection"),
    "AIRFLOW__CELERY__RESULT_BACKEND": (("data", "resultBackendSecretName"), "connection"),
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (("data", "metadataSecretName"), "connection"),
    "AIRFLOW__CORE__FERNET_KEY": (("fernetKeySecretName",), "fernet-key"),
}


def _secret_refs(container: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    refs = {}
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            refs[item["name"]] = (ref["name"], ref["key"])
    return refs


def _value_at(values: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for step in path:
        values = values.get(step, {}) if isinstance(values, Mapping) else {}
    return values or None


def _archive_workers(objects: list[Manifest], airflow: Manifest) -> list[str]:
    pod = dict(_pod_specs(objects))[ARCHIVE_WORKERS]
    worker = next(c for c in pod["containers"] if c["name"] == "worker")
    env, refs = _env(worker), _secret_refs(worker)
    image = airflow["images"]["airflow"]
    values = "infra/k8s/airflow/values.yaml"
    problems = [
        *_differs("archive workers' image", worker["image"], f"{image['repository']}:{image['tag']}", source=values),
        *_differs(
            "archive workers' AIRFLOW__CORE__EXECUTOR",
            env.get("AIRFLOW__CORE__EXECUTOR"),
            airflow["executor"],
            source=values,
        ),
    ]
    for name, (path, key) in _AIRFLOW_SECRETS.items():
        problems += _differs(
            f"archive workers' {name} Secret", refs.get(name), (_value_at(airflow, path), key), source=values
        )
    for item in airflow.get("secret", []):
        wanted = (item["secretName"], item["secretKey"])
        problems += _differs(
            f"archive workers' {item['envName']} Secret", refs.get(item["envName"]), wanted, source=values
        )
    for item in airflow.get("env", []):
        problems += _differs(f"archive workers' {item['name']}", env.get(item["name"]), item["value"], source=values)
    return problems + _archive_dags(pod, worker, airflow["dags"]["gitSync"])


def _archive_dags(pod: Manifest, worker: Manifest, git: Mapping[str, Any]) -> list[str]:
    """The DAGs: a git-sync of the values' repository, branch and period into a volume the worker mounts."""
    values = "infra/k8s/airflow/values.yaml dags.gitSync"
    mounted = {m["name"] for m in worker.get("volumeMounts", []) if m["mountPath"] == DAGS_MOUNT}
    folder = _env(worker).get("AIRFLOW__CORE__DAGS_FOLDER")
    problems = _differs("archive workers' DAG folder", folder, f"{DAGS_MOUNT}/repo/{git['subPath']}", source=values)
    syncs = [c for c in [*pod.get("initContainers", []), *pod["containers"]] if c["name"].startswith("git-sync")]
    if not mounted or not any(c in pod["containers"] for c in syncs):
        problems.append(f"archive workers: no git-sync container keeps the DAGs mounted at {DAGS_MOUNT}")
    for sync in syncs:
        env = _env(sync)
        seen = (env.get("GITSYNC_REPO"), env.get("GITSYNC_REF"), env.get("GITSYNC_PERIOD"), env.get("GITSYNC_LINK"))
        wanted = (git["repo"], git["branch"], git["period"], "repo")
        problems += _differs(f"archive workers' {sync['name']} (repo, ref, period, link)", seen, wanted, source=values)
        if not mounted & {m["name"] for m in sync.get("volumeMounts", [])}:
            problems.append(f"archive workers: {sync['name']} does not write the volume mounted at {DAGS_MOUNT}")
    return problems
