"""The layer contracts in pyproject.toml ([tool.importlinter]): kept by the tree, and broken by a wrong arrow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).parent / "lint-imports"
PACKAGES = {
    "tierlake": ["config", "catalog", "entities", "logs", "host", "errors", "cli", "commands"],
    "pipelines": [],
    "loaders": [],
    "tiers": [],
    "infra": [],
    "dags": [],
}


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_the_tree_keeps_every_layer_contract() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


def _fake_tree(root: Path, wrong_import: tuple[str, str]) -> None:
    """The project's top-level packages, empty but for one import, under the project's own contracts."""
    for package, modules in PACKAGES.items():
        (root / package).mkdir()
        (root / package / "__init__.py").write_text("")
        for module in modules:
            (root / package / f"{module}.py").write_text("")
    where, what = wrong_import
    (root / where.replace(".", "/")).with_suffix(".py").write_text(f"import {what}\n")
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert contracts["contracts"], "the contracts live in pyproject.toml"
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")


def test_a_tier_importing_a_pipeline_breaks_the_build(tmp_path: Path) -> None:
    _fake_tree(tmp_path, ("tiers.wrong", "pipelines"))
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout
    assert "tiers.wrong -> pipelines" in result.stdout


def test_production_code_importing_the_dev_stack_breaks_the_build(tmp_path: Path) -> None:
    _fake_tree(tmp_path, ("pipelines.wrong", "infra"))
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout
    assert "pipelines is not allowed to import infra" in result.stdout
