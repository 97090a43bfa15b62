"""Settings: precedence, typed validation with file/key/value/fix, secrets kept out of conf and output."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tierlake.commands import fraction, non_negative_float, positive_float
from tierlake.config import Secret, load_settings, masked
from tierlake.errors import ConfigError

pytestmark = pytest.mark.unit
REPO_CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    target = tmp_path / "conf"
    shutil.copytree(REPO_CONF, target)
    return target


def test_every_shipped_profile_loads() -> None:
    for profile in ("local", "ci", "prod"):
        settings = load_settings(profile, conf_dir=REPO_CONF, env={})
        assert settings.profile == profile
        assert settings.kafka.topics, "topics come from conf/base.yaml"
        # small live batches interpreted on 2 cores; a cluster compiles every batch
        assert settings.spark.codegen_min_batch_rows == (0 if profile == "prod" else 20_000)


def test_profile_overrides_base_and_env_overrides_profile(conf_dir: Path) -> None:
    ci = load_settings("ci", conf_dir=conf_dir, env={})
    assert ci.kafka.nodes == 3
    assert ci.kafka.bootstrap() == "127.0.0.1:19192,127.0.0.1:19202,127.0.0.1:19212"
    from_env = load_settings("ci", conf_dir=conf_dir, env={"TIERLAKE_KAFKA__NODES": "1"})
    assert from_env.kafka.nodes == 1
    explicit = load_settings("ci", conf_dir=conf_dir, env={"TIERLAKE_KAFKA__NODES": "1"}, overrides={"kafka.nodes": 3})
    assert explicit.kafka.nodes == 3


def test_profile_comes_from_env_when_not_explicit(conf_dir: Path) -> None:
    assert load_settings(conf_dir=conf_dir, env={"TIERLAKE_PROFILE": "ci"}).profile == "ci"
    assert load_settings(conf_dir=conf_dir, env={}).profile == "local"


def test_bad_value_names_file_key_value_and_fix(conf_dir: Path) -> None:
    (conf_dir / "local.yaml").write_text("kafka:\n  nodes: 2\n")
    with pytest.raises(ConfigError, match=r"local\.yaml: kafka\.nodes = 2 is invalid: .*1 or 3.*Fix: "):
        load_settings("local", conf_dir=conf_dir, env={})


def test_bad_env_value_names_the_variable(conf_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"environment variable TIERLAKE_CEPH__RGW_PORT: ceph\.rgw_port = 80"):
        load_settings("local", conf_dir=conf_dir, env={"TIERLAKE_CEPH__RGW_PORT": "80"})


def test_wrong_type_is_refused(conf_dir: Path) -> None:
    (conf_dir / "local.yaml").write_text("kafka:\n  heap_mb: lots\n")
    with pytest.raises(ConfigError, match=r"kafka\.heap_mb = 'lots' is invalid: expected an integer"):
        load_settings("local", conf_dir=conf_dir, env={})


def test_unknown_key_is_refused_with_its_file(conf_dir: Path) -> None:
    (conf_dir / "local.yaml").write_text("kafka:\n  nodez: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config keys: kafka\.nodez \(.*local\.yaml\)"):
        load_settings("local", conf_dir=conf_dir, env={})


def test_unknown_profile_lists_the_known_ones(conf_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"profile 'staging' is unknown.*'local', 'ci', 'prod'"):
        load_settings("staging", conf_dir=conf_dir, env={})


def test_invalid_yaml_says_where(conf_dir: Path) -> None:
    (conf_dir / "local.yaml").write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError, match=r"local\.yaml: not valid YAML"):
        load_settings("local", conf_dir=conf_dir, env={})


def test_secret_in_conf_file_is_refused(conf_dir: Path) -> None:
    (conf_dir / "local.yaml").write_text("s3:\n  secret_key: hunter2\n")
    with pytest.raises(ConfigError, match=r"s3\.secret_key must not be in a conf file") as caught:
        load_settings("local", conf_dir=conf_dir, env={})
    assert "hunter2" not in str(caught.value)


def test_secrets_from_env_are_masked_everywhere(conf_dir: Path) -> None:
    env = {"TIERLAKE_S3__ACCESS_KEY": "AKIAEXAMPLE", "TIERLAKE_S3__SECRET_KEY": "very-secret-value"}
    settings = load_settings("local", conf_dir=conf_dir, env=env)
    assert settings.s3.require_credentials() == ("AKIAEXAMPLE", "very-secret-value")
    shown = str(masked(settings)) + repr(settings) + str(settings)
    assert "very-secret-value" not in shown
    assert "AKIAEXAMPLE" not in shown
    assert masked(settings)["s3"]["secret_key"] == "****"


def test_credentials_file_is_read_when_env_has_none(conf_dir: Path) -> None:
    secrets_file = conf_dir.parent / ".run" / "secrets" / "s3.env"
    secrets_file.parent.mkdir(parents=True)
    secrets_file.write_text("access_key=FILEKEY\nsecret_key=filesecret\n")
    settings = load_settings("local", conf_dir=conf_dir, env={})
    assert settings.s3.require_credentials() == ("FILEKEY", "filesecret")


def test_missing_credentials_say_how_to_get_them(conf_dir: Path) -> None:
    settings = load_settings("local", conf_dir=conf_dir, env={})
    with pytest.raises(ConfigError, match=r"no S3 credentials: set TIERLAKE_S3__ACCESS_KEY.*tierlake stack up"):
        settings.s3.require_credentials()


def test_external_kafka_needs_bootstrap_servers(conf_dir: Path) -> None:
    (conf_dir / "local.yaml").write_text("kafka:\n  managed: false\n")
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_servers = '' is invalid: required when"):
        load_settings("local", conf_dir=conf_dir, env={})


def test_managed_ceph_endpoint_must_match_rgw_port(conf_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"s3\.endpoint = 'http://127\.0\.0\.1:9999'.*managed local Ceph"):
        load_settings("local", conf_dir=conf_dir, env={"TIERLAKE_S3__ENDPOINT": "http://127.0.0.1:9999"})


def test_lake_bucket_must_be_declared(conf_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"s3\.lake_bucket = 'other-bucket' is invalid: not in s3\.buckets"):
        load_settings("local", conf_dir=conf_dir, env={"TIERLAKE_S3__LAKE_BUCKET": "other-bucket"})


def test_erasure_code_must_fit_the_osds(conf_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"ceph\.osds = 3 is invalid: EC 4\+1 needs k\+m OSDs"):
        load_settings("local", conf_dir=conf_dir, env={"TIERLAKE_CEPH__EC_K": "4"})


def test_secret_repr_never_shows_value() -> None:
    secret = Secret("s3cr3t")
    assert "s3cr3t" not in f"{secret} {secret!r}"
    assert secret.value == "s3cr3t"


def test_top_level_key_from_env_and_unknown_env_key_is_refused(conf_dir: Path) -> None:
    settings = load_settings("local", conf_dir=conf_dir, env={"TIERLAKE_RUN_DIR": ".run-mine"})
    assert settings.run_dir == conf_dir.parent / ".run-mine"
    with pytest.raises(
        ConfigError, match=r"unknown config keys: kafka\.nodez \(environment variable TIERLAKE_KAFKA__NODEZ\)"
    ):
        load_settings("local", conf_dir=conf_dir, env={"TIERLAKE_KAFKA__NODEZ": "3"})
    # fault-injection hooks of the tests share the prefix but are not config keys
    assert load_settings("local", conf_dir=conf_dir, env={"TIERLAKE_FAULT_PAUSE_AFTER_GATE": "pause-now"}).profile


def test_kafka_ports_in_the_ephemeral_range_are_refused(conf_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"kafka\.broker_port = 19092 is invalid: node ports reach 39093, inside"):
        load_settings("local", conf_dir=conf_dir, env={"TIERLAKE_KAFKA__PORT_STRIDE": "10000"})
    with pytest.raises(ConfigError, match=r"kafka\.port_stride = 1 is invalid: node ports collide"):
        load_settings("local", conf_dir=conf_dir, env={"TIERLAKE_KAFKA__PORT_STRIDE": "1"})


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (positive_float, "-1", "must be a finite number above 0"),
        (positive_float, "0", "must be a finite number above 0"),
        (positive_float, "inf", "must be a finite number above 0"),
        (positive_float, "nan", "must be a finite number above 0"),
        (positive_float, "soon", "is not a number"),
        (fraction, "1.5", "must be at most 1"),
        (non_negative_float, "-2", "must be a finite number above 0"),
    ],
)
def test_cli_number_flags_refuse_with_the_reason(parse: Callable[[str], float], text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)


def test_cli_number_flags_accept_their_range() -> None:
    assert (positive_float("2.5"), fraction("0"), fraction("0.02"), non_negative_float("0")) == (2.5, 0.0, 0.02, 0.0)


def test_an_empty_profile_is_refused_not_taken_as_local() -> None:
    with pytest.raises(ConfigError, match=r"--profile '' is empty"):
        load_settings("", env={})
