"""infra/k8s/, checked offline (no cluster can run here): every overlay renders, every object validates against
the vendored Kubernetes and CRD schemas, a broken field fails, and the manifests agree with conf/prod.yaml."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import manifests
from tierlake.config import Settings, load_settings
from tierlake.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = manifests.AIRFLOW_VALUES


@pytest.fixture(scope="module")
def prod() -> Settings:
    return load_settings("prod", env={})


@pytest.fixture(scope="module")
def airflow() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(AIRFLOW.read_text())
    return values


def _overlay(size: str) -> list[manifests.Manifest]:
    return manifests.render(manifests.K8S / "overlays" / size)


@pytest.mark.parametrize("size", manifests.OVERLAYS)
def test_every_object_of_each_overlay_is_valid(size: str) -> None:
    objects = _overlay(size)
    kinds = {obj["kind"] for obj in objects}
    assert {
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
        "CephCluster",
        "CephObjectStore",
        "ObjectBucketClaim",
        "SparkApplication",
        "DaemonSet",
        "Service",
        "StatefulSet",
        "Job",
    } <= kinds
    assert manifests.validate(objects) == []


@pytest.mark.parametrize(
    ("kind", "name", "path", "value", "complaint"),
    [
        ("DaemonSet", "tierlake-edge-cache", ["spec", "template", "spec", "containers", 0, "imagee"], "x", "'imagee'"),
        ("Kafka", "tierlake", ["spec", "kafka", "racks"], {}, "'racks' was unexpected"),
        ("KafkaNodePool", "az-a", ["spec", "replicas"], "three", "'three' is not of type 'integer'"),
        ("CephObjectStore", "tierlake", ["spec", "dataPool", "erasureCoded", "dataChunks"], "8", "not of type"),
        ("SparkApplication", "tierlake-ingest-ev", ["spec", "mode"], "clustr", "'clustr' is not one of"),
        ("ObjectBucketClaim", "tierlake-lake", ["spec", "bucket"], "x", "'bucket' was unexpected"),
        ("Job", "tierlake-train-demo", ["spec", "backoffLimit"], "6", "not of type"),
    ],
)
def test_a_broken_field_fails_validation(kind: str, name: str, path: list[Any], value: Any, complaint: str) -> None:
    objects = _overlay("large")
    target: Any = manifests.one(objects, kind, name)
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    problems = manifests.validate(objects)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{kind}/{name}: ")
    assert complaint in problems[0]


def test_an_object_without_a_vendored_schema_is_reported() -> None:
    job = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert manifests.validate([job]) == [
        "Widget/w: no vendored schema for apiVersion 'example.com/v1' kind 'Widget' (looked for "
        "infra/k8s/schemas/crds/example.com_widget_v1.json). Fix: vendor it as infra/k8s/schemas/README.md says"
    ]


@pytest.mark.parametrize("size", manifests.OVERLAYS)
def test_the_manifests_agree_with_conf_prod(size: str, prod: Settings, airflow: dict[str, Any]) -> None:
    assert manifests.disagreements(_overlay(size), prod, airflow, site=size) == []


def test_the_airflow_values_are_valid(airflow: dict[str, Any]) -> None:
    assert manifests.validate_airflow_values(airflow) == []


@pytest.mark.parametrize(
    ("path", "value", "complaint"),
    [
        (["dags", "gitSync", "subpath"], "dags", "dags/gitSync: Additional properties are not allowed ('subpath'"),
        (["workers", "replicas"], "two", "workers/replicas: 'two' is not of type 'integer'"),
        (["executor"], "CeleryExecuter", "executor: 'CeleryExecuter' is not one of"),
        (["images", "airflow", "pullPolicy"], "Sometimes", "images/airflow/pullPolicy: 'Sometimes' is not one of"),
        (["dags", "gitSync", "period"], 60, "dags/gitSync/period: 60 is not of type 'string'"),
        (["data", "brokerURLSecretName"], "x", "data: Additional properties are not allowed ('brokerURLSecretName'"),
        (["redis", "enabled"], "yes", "redis/enabled: 'yes' is not of type 'boolean'"),
    ],
)
def test_a_misspelled_or_mistyped_airflow_value_fails(
    airflow: dict[str, Any], path: list[str], value: Any, complaint: str
) -> None:
    values = _with(airflow, path, value)
    problems = manifests.validate_airflow_values(values)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"airflow values: {complaint}"), problems


def _changed(objects: list[manifests.Manifest], kind: str, name: str, *path: Any, value: Any) -> list[Any]:
    changed = copy.deepcopy(objects)
    target: Any = manifests.one(changed, kind, name)
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return changed


DRIFTS = {
    "Kafka min.insync.replicas": ("Kafka", "tierlake", ("spec", "kafka", "config", "min.insync.replicas"), 1),
    "Kafka topics": ("KafkaTopic", "ev.telemetry", ("spec", "partitions"), 6),
    "EC data pool": ("CephObjectStore", "tierlake", ("spec", "dataPool", "erasureCoded", "codingChunks"), 2),
    "bucket claims": ("ObjectBucketClaim", "tierlake-mirror", ("spec", "bucketName"), "other"),
    "tierlake-ingest-ev: driver memory": ("SparkApplication", "tierlake-ingest-ev", ("spec", "driver", "memory"), "2g"),
    "edge cache Service port": ("Service", "tierlake-edge-cache", ("spec", "ports", 0, "port"), 9000),
    "Ceph OSDs (CephCluster storageClassDeviceSets count, overlay small)": (
        "CephCluster",
        "rook-ceph",
        ("spec", "storage", "storageClassDeviceSets", 0, "count"),
        12,
    ),
    "archive workers' DAG folder": (
        "StatefulSet",
        "tierlake-archive",
        ("spec", "template", "spec", "containers", 0, "env", 6, "value"),
        "/opt/airflow/dags",
    ),
    "archive workers' git-sync (repo, ref, period, link)": (
        "StatefulSet",
        "tierlake-archive",
        ("spec", "template", "spec", "containers", 1, "env", 1, "value"),
        "develop",
    ),
    "archive workers' image": (
        "StatefulSet",
        "tierlake-archive",
        ("spec", "template", "spec", "containers", 0, "image"),
        "registry.example.com/tierlake:0.0.9",
    ),
}


@pytest.mark.parametrize("complaint", DRIFTS)
def test_a_manifest_that_drifts_from_conf_prod_is_named(
    complaint: str, prod: Settings, airflow: dict[str, Any]
) -> None:
    kind, name, path, value = DRIFTS[complaint]
    objects = _changed(_overlay("small"), kind, name, *path, value=value)
    problems = manifests.disagreements(objects, prod, airflow)
    assert len(problems) == 1, problems
    assert problems[0].startswith(complaint)
    assert "manifests say" in problems[0]


def test_a_pool_in_a_zone_that_conf_does_not_name_is_a_drift(prod: Settings, airflow: dict[str, Any]) -> None:
    objects = _overlay("small")
    pool = manifests.one(objects, "KafkaNodePool", "az-c")
    terms = pool["spec"]["template"]["pod"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] = ["az-d"]
    problems = manifests.disagreements(objects, prod, airflow)
    assert problems == [
        "Kafka node pools' zones (one pool per rack): manifests say ['az-a', 'az-b', 'az-d'], conf/prod.yaml says "
        "['az-a', 'az-b', 'az-c']"
    ]


def test_overlays_size_the_site() -> None:
    small, large = (_overlay(size) for size in manifests.OVERLAYS)
    for objects, brokers, gateways in ((small, 1, 2), (large, 3, 8)):
        pools = list(manifests.objects_of(objects, "KafkaNodePool"))
        assert [p["spec"]["replicas"] for p in pools] == [brokers] * 3
        assert manifests.one(objects, "CephObjectStore", "tierlake")["spec"]["gateway"]["instances"] == gateways
        # The patch replaced one field; the rest of the object is the base's.
        assert manifests.one(objects, "CephObjectStore", "tierlake")["spec"]["dataPool"]["erasureCoded"]
    assert {o["metadata"]["labels"]["tierlake.io/site-size"] for o in large} == {"large"}


def test_a_kustomization_field_the_renderer_does_not_know_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: site-\n")
    with pytest.raises(ConfigError, match=r"fields \['namePrefix'\] are not rendered here"):
        manifests.render(tmp_path)


def test_a_patch_without_a_target_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{manifests.K8S / 'base'}]\npatches:\n  - path: patch.yaml\n"
    )
    (tmp_path / "patch.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: nope, namespace: x}\n")
    with pytest.raises(ConfigError, match=r"patch target .* is not among the resources"):
        manifests.render(tmp_path)


def test_every_pool_in_a_zone_counts_towards_kafka_nodes(prod: Settings, airflow: dict[str, Any]) -> None:
    objects = _overlay("small")
    for zone in prod.kafka.racks:
        manifests.one(objects, "KafkaNodePool", zone)["spec"]["replicas"] = 2
    assert manifests.disagreements(objects, prod, airflow) == [
        "Kafka brokers (node pools' replicas, overlay small): manifests say 6, conf/prod.yaml says 3"
    ]
    manifests.one(objects, "KafkaNodePool", "az-a")["spec"]["replicas"] = 1
    assert "Kafka node pools' replicas [1, 2, 2]: not one size in every zone" in manifests.disagreements(
        objects, prod, airflow
    )


def test_conf_prod_states_the_small_site_and_a_large_site_is_at_least_that(
    prod: Settings, airflow: dict[str, Any]
) -> None:
    large = _overlay("large")
    # The large site's 9 brokers are not conf/prod.yaml's 3: compared as the small site, that is named.
    assert manifests.disagreements(large, prod, airflow, site="small") == [
        "Kafka brokers (node pools' replicas, overlay small): manifests say 9, conf/prod.yaml says 3"
    ]
    device_sets = manifests.one(large, "CephCluster", "rook-ceph")["spec"]["storage"]["storageClassDeviceSets"]
    device_sets[0]["count"] = 8
    assert manifests.disagreements(large, prod, airflow, site="large") == [
        "Ceph OSDs (overlay large): 8 is below ceph.osds 11"
    ]


def test_spark_master_has_one_source_conf_prod(prod: Settings, airflow: dict[str, Any]) -> None:
    assert prod.spark.master == manifests.SPARK_OPERATOR_MASTER
    standalone = replace(prod, spark=replace(prod.spark, master="spark://spark-master.internal:7077"))
    assert manifests.disagreements(_overlay("small"), standalone, airflow) == [
        "spark.master (spark-operator's in-cluster API server): manifests say "
        "'k8s://https://kubernetes.default.svc:443', conf/prod.yaml says 'spark://spark-master.internal:7077'"
    ]
    objects = _overlay("small")
    driver = manifests.one(objects, "SparkApplication", "tierlake-gold-corpus")["spec"]["driver"]
    driver["env"].append({"name": "TIERLAKE_SPARK__MASTER", "value": manifests.SPARK_OPERATOR_MASTER})
    assert manifests.disagreements(objects, prod, airflow) == [
        "SparkApplication/tierlake-gold-corpus driver: TIERLAKE_SPARK__MASTER overrides spark.master of "
        "conf/prod.yaml. Fix: set it there only"
    ]


@pytest.mark.parametrize(
    ("path", "value", "complaint"),
    [
        (("data", "brokerUrlSecretName"), "airflow-broker-url", "archive workers' AIRFLOW__CELERY__BROKER_URL Secret"),
        (
            ("data", "resultBackendSecretName"),
            "other",
            "archive workers' AIRFLOW__CELERY__RESULT_BACKEND Secret",
        ),
        (("fernetKeySecretName",), "other", "archive workers' AIRFLOW__CORE__FERNET_KEY Secret"),
        (("executor",), "LocalExecutor", "archive workers' AIRFLOW__CORE__EXECUTOR"),
        (("dags", "gitSync", "subPath"), "airflow/dags", "archive workers' DAG folder"),
    ],
)
def test_the_archive_workers_follow_the_airflow_values(
    prod: Settings, airflow: dict[str, Any], path: tuple[str, ...], value: str, complaint: str
) -> None:
    values = _with(airflow, path, value)
    problems = manifests.disagreements(_overlay("small"), prod, values)
    problems = [p for p in problems if not p.startswith("Airflow DAG folder")]  # subPath is also checked alone
    assert len(problems) == 1, problems
    assert problems[0].startswith(complaint)
    assert "infra/k8s/airflow/values.yaml" in problems[0]


def test_archive_workers_without_the_dag_sync_are_named(prod: Settings, airflow: dict[str, Any]) -> None:
    objects = _overlay("small")
    pod = manifests.one(objects, "StatefulSet", "tierlake-archive")["spec"]["template"]["spec"]
    pod["containers"] = [c for c in pod["containers"] if c["name"] != "git-sync"]
    assert manifests.disagreements(objects, prod, airflow) == [
        f"archive workers: no git-sync container keeps the DAGs mounted at {manifests.DAGS_MOUNT}"
    ]


def _with(values: dict[str, Any], path: Sequence[str], value: Any) -> dict[str, Any]:
    """A deep copy of ``values`` with the key at ``path`` set to ``value``."""
    changed = copy.deepcopy(values)
    target: Any = changed
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return changed
