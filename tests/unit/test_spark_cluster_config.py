"""The Spark standalone cluster's settings, its jar conf and the keys kept off the JVM's command line (no JVM)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from infra.spark import SparkCluster
from pipelines.session import KEY_CONF, spark_conf
from tierlake.config import Settings, load_settings
from tierlake.errors import ConfigError

REPO_CONF = Path(__file__).resolve().parents[2] / "conf"


def _settings(tmp_path: Path, profile: str, **env: str) -> Settings:
    conf_dir = tmp_path / "conf"
    if not conf_dir.exists():
        shutil.copytree(REPO_CONF, conf_dir)
    settings = load_settings(
        profile, conf_dir=conf_dir, env={"TIERLAKE_S3__ACCESS_KEY": "AK", "TIERLAKE_S3__SECRET_KEY": "SK", **env}
    )
    jars = tmp_path / "jars"
    jars.mkdir(exist_ok=True)
    for name in ("a-1.jar", "tierlake-logstore-0.jar"):
        (jars / name).write_bytes(b"PK")
    return replace(settings, spark=replace(settings.spark, jars_dir=jars))


def test_the_cluster_profile_points_spark_at_the_cluster_the_stack_starts(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "cluster")
    cluster = SparkCluster(settings)
    assert settings.spark_cluster.workers == 2
    assert settings.spark.master == settings.spark_cluster.master_url == cluster.master_url
    assert [w.port for w in cluster.workers] == [17087, 17097]
    assert len({w.home for w in cluster.workers} | {w.work_dir for w in cluster.workers}) == 4


def test_other_profiles_start_no_cluster_unless_asked(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "ci")
    assert settings.spark_cluster.workers == 0
    assert SparkCluster(settings).workers == []
    assert len(SparkCluster(settings, workers=3).workers) == 3


def test_a_master_port_whose_workers_reach_the_ephemeral_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"spark_cluster.master_port = 32700 .*ephemeral"):
        _settings(tmp_path, "cluster", TIERLAKE_SPARK_CLUSTER__MASTER_PORT="32700")


def test_executors_on_this_machine_share_the_drivers_classpath(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "cluster")
    conf = spark_conf(settings, app_name="unit")
    assert conf["spark.executor.extraClassPath"] == conf["spark.driver.extraClassPath"]
    assert "spark.jars" not in conf  # a copy of 681 MB per executor and application
    remote = spark_conf(replace(settings, spark=replace(settings.spark, master="spark://head:7077")), app_name="u")
    assert "spark.executor.extraClassPath" not in remote
    assert remote["spark.jars"].count(".jar") == 2


def test_the_keys_kept_off_the_command_line_are_the_ones_spark_conf_sets(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "cluster")
    conf = spark_conf(settings, app_name="unit")
    assert {key for key, value in conf.items() if value in ("AK", "SK")} == KEY_CONF
