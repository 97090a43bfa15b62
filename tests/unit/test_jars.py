"""The jar-set linking rules: artifact names, and pyspark's own jars win over duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.jars import artifact_of, jar_paths, link_jar_set
from tierlake.errors import DependencyMissing

pytestmark = pytest.mark.unit


def _m2_jar(root: Path, group: str, artifact: str, version: str) -> Path:
    jar = root / group.replace(".", "/") / artifact / version / f"{artifact}-{version}.jar"
    jar.parent.mkdir(parents=True)
    jar.write_bytes(b"PK")
    return jar


@pytest.mark.parametrize(
    ("name", "artifact"),
    [
        ("jackson-core-2.13.5.jar", "jackson-core"),
        ("delta-spark_4.2_2.13-4.4.0.jar", "delta-spark_4.2_2.13"),
        ("wildfly-openssl-2.2.5.Final.jar", "wildfly-openssl"),
        ("scala-library-2.13.18.jar", "scala-library"),
    ],
)
def test_artifact_of_flat_names(tmp_path: Path, name: str, artifact: str) -> None:
    assert artifact_of(tmp_path / name) == artifact


def test_artifact_of_m2_path_uses_the_folder(tmp_path: Path) -> None:
    jar = _m2_jar(tmp_path, "io.delta", "delta-spark_4.2_2.13", "4.4.0")
    assert artifact_of(jar) == "delta-spark_4.2_2.13"


def test_link_skips_artifacts_pyspark_ships_and_replaces_stale_links(tmp_path: Path) -> None:
    m2 = tmp_path / "m2"
    delta = _m2_jar(m2, "io.delta", "delta-spark_4.2_2.13", "4.4.0")
    jackson = _m2_jar(m2, "com.fasterxml.jackson.core", "jackson-core", "2.13.5")
    dest = tmp_path / "jars"
    dest.mkdir()
    (dest / "old-1.0.jar").write_bytes(b"PK")
    linked = link_jar_set([delta, jackson], dest, skip={"jackson-core"})
    assert [p.name for p in linked] == ["delta-spark_4.2_2.13-4.4.0.jar"]
    assert sorted(p.name for p in dest.glob("*.jar")) == ["delta-spark_4.2_2.13-4.4.0.jar"]
    assert (dest / "delta-spark_4.2_2.13-4.4.0.jar").resolve() == delta


def test_missing_jar_in_classpath_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DependencyMissing, match=r"missing\. Fix: rerun `make setup`"):
        link_jar_set([tmp_path / "gone-1.0.jar"], tmp_path / "jars", skip=set())


def test_empty_jar_folder_says_run_setup(tmp_path: Path) -> None:
    with pytest.raises(DependencyMissing, match=r"no jars in .*Fix: run `make setup`"):
        jar_paths(tmp_path)
