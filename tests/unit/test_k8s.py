"""infra/k8s/, checked offline (no cluster can run here): every overlay renders, every object validates against
the vendored Kubernetes and CRD schemas, a broken field fails, and the manifests agree with conf/prod.yaml."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import manifests
from tierlake.config import Settings, load_settings
from tierlake.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = REPO / "infra" / "k8s" / "airflow" / "values.yaml"


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
    assert manifests.disagreements(_overlay(size), prod, airflow) == []


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
