"""How a config value is read: flat dotted keys with their source (file or variable), one parser per value type.

Every value remembers where it came from, so a bad one fails with the file (or variable), the key, the value and
the fix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tierlake.errors import ConfigError

ENV_PREFIX = "TIERLAKE_"
ENV_NESTING = "__"
SECRET_KEYS = frozenset({"s3.access_key", "s3.secret_key"})
_OPAQUE_KEYS = frozenset({"spark.extra_conf", "entities", "maintenance.tables", "archive.tables"})
_ENV_NOT_KEYS = frozenset({"TIERLAKE_PROFILE", "TIERLAKE_CONF_DIR", "TIERLAKE_CACHE"})  # choose files, not values
FAULT_PREFIX = "TIERLAKE_FAULT_"  # fault-injection hooks of the tests (e.g. pipelines.ingest.ledger), not values
_T = TypeVar("_T")


class Values:
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

    def number(self, key: str, *, fix: str, minimum: float, maximum: float | None = None, above: bool = False) -> float:
        """A number (YAML int or float, or a numeric string) >= ``minimum`` (> with ``above``), <= ``maximum``."""
        raw = self.get(key, str, fix=fix)
        bounds = f"{'>' if above else '>='} {minimum:g}" + (f" and <= {maximum:g}" if maximum is not None else "")
        try:
            number = float(raw)
        except ValueError:
            raise self.fail(key, raw, f"must be a number {bounds}", fix) from None
        low_ok = number > minimum if above else number >= minimum
        if not (low_ok and (maximum is None or number <= maximum)):
            raise self.fail(key, number, f"must be a number {bounds}", fix)
        return number

    def unused(self) -> list[str]:
        return sorted(set(self._flat) - self._used)


def flatten(tree: Mapping[str, Any], source: str, prefix: str = "") -> dict[str, tuple[Any, str]]:
    flat: dict[str, tuple[Any, str]] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        # Free-form mappings stay one value: Spark conf keys, and entity schemas (validated in tierlake.entities).
        if isinstance(value, dict) and dotted not in _OPAQUE_KEYS:
            flat.update(flatten(value, source, f"{dotted}."))
        else:
            flat[dotted] = (value, source)
    return flat


def read_yaml(path: Path) -> dict[str, Any]:
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


def env_layer(env: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    flat: dict[str, tuple[Any, str]] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name in _ENV_NOT_KEYS or name.startswith(FAULT_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower().replace(ENV_NESTING, ".")
        # Parse as a YAML scalar so TIERLAKE_KAFKA__NODES=3 is the integer 3; secrets stay verbatim strings.
        value: Any = raw if key in SECRET_KEYS else yaml.safe_load(raw) if raw else raw
        flat[key] = (value, f"environment variable {name}")
    return flat


# ---------------------------------------------------------------------------------------------------------
# Checks of single values (``check=`` of :meth:`Values.get`): the reason a value is wrong, or None


def positive(value: int) -> str | None:
    return None if value > 0 else "must be at least 1"


def port(value: int) -> str | None:
    return None if 1024 <= value <= 65535 else "must be a port between 1024 and 65535"


def url(value: str) -> str | None:
    return None if re.match(r"^https?://[^/\s]+", value) else "must be an http:// or https:// URL"


def bucket_name(value: str) -> str | None:
    ok = re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value)
    return None if ok else "S3 bucket names are 3-63 characters of a-z, 0-9, '.', '-'"
