"""The ``cache:`` config section: defaults, environment overrides, and bad values named with the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierlake.config import load_settings
from tierlake.errors import ConfigError
from tiers.cache import options_from_settings

REPO_CONF = Path(__file__).resolve().parents[2] / "conf"


def test_defaults_follow_the_run_dir() -> None:
    settings = load_settings("ci", conf_dir=REPO_CONF, env={"TIERLAKE_RUN_DIR": ".run-elsewhere"})
    assert settings.cache.directory == settings.root / ".run-elsewhere" / "edge-cache"
    assert settings.cache.site_credentials_file == settings.root / ".run-elsewhere" / "secrets" / "cache-site.env"
    options = options_from_settings(settings.cache)
    assert (options.max_bytes, options.revalidate_s, options.block_bytes) == (10737418240, 0.0, 8388608)
    assert options.immutable_patterns == ("*.parquet", "!_delta_log/*", "!*/_delta_log/*")
    assert options.direct_io is True


def test_immutable_patterns_and_direct_io_from_the_environment() -> None:
    env = {"TIERLAKE_CACHE__IMMUTABLE_PATTERNS": "['frozen/*', '!frozen/tmp/*']", "TIERLAKE_CACHE__DIRECT_IO": "false"}
    options = options_from_settings(load_settings("ci", conf_dir=REPO_CONF, env=env).cache)
    assert (options.immutable_patterns, options.direct_io) == (("frozen/*", "!frozen/tmp/*"), False)
    none = options_from_settings(
        load_settings("ci", conf_dir=REPO_CONF, env={"TIERLAKE_CACHE__IMMUTABLE_PATTERNS": "[]"}).cache
    )
    assert none.immutable_patterns == ()


def test_environment_overrides() -> None:
    env = {
        "TIERLAKE_CACHE__MAX_BYTES": "1048576",
        "TIERLAKE_CACHE__DIR": "/nvme/cache",
        "TIERLAKE_CACHE__REVALIDATE_S": "30",
    }
    cache = load_settings("ci", conf_dir=REPO_CONF, env=env).cache.options
    assert (cache.max_bytes, cache.directory, cache.revalidate_s) == (1048576, Path("/nvme/cache"), 30.0)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TIERLAKE_CACHE__MAX_BYTES", "0", r"cache.max_bytes = 0 is invalid: must be at least 1\. Fix"),
        ("TIERLAKE_CACHE__MAX_BYTES", "lots", r"cache.max_bytes = 'lots' is invalid: expected an integer"),
        (
            "TIERLAKE_CACHE__DISK_FRACTION",
            "1.5",
            r"cache.disk_fraction = 1.5 is invalid: must be a number > 0 and <= 1",
        ),
        ("TIERLAKE_CACHE__BLOCK_BYTES", "512", r"cache.block_bytes = 512 is invalid: a block holds at least 4096"),
        ("TIERLAKE_CACHE__FILL_TIMEOUT_S", "0", r"cache.fill_timeout_s = 0.0 is invalid"),
        ("TIERLAKE_CACHE__SITE_PORT", "80", r"cache.site_port = 80 is invalid: must be a port"),
        (
            "TIERLAKE_CACHE__IMMUTABLE_PATTERNS",
            "'*.parquet'",
            r"cache.immutable_patterns = '\*.parquet' is invalid: ex",
        ),
        ("TIERLAKE_CACHE__IMMUTABLE_PATTERNS", "['!']", r"cache.immutable_patterns = \['!'\] is invalid: '!' is not"),
        ("TIERLAKE_CACHE__DIRECT_IO", "sometimes", r"cache.direct_io = 'sometimes' is invalid: expected true or"),
    ],
)
def test_bad_values_name_variable_key_value_and_fix(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"environment variable {variable}: {message}"):
        load_settings("ci", conf_dir=REPO_CONF, env={variable: value})
