"""The layer contracts in pyproject.toml ([tool.importlinter]): kept by the tree, and broken by a wrong arrow. And
issue 18: tiers and loaders take their own config section, never the root ``tierlake.config.Settings``."""

from __future__ import annotations

import ast
import gc
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


# ---------------------------------------------------------------------------------------------------------
# Tiers and loaders get their own section, never the whole Settings (issue 18)

OWN_SECTION_PACKAGES = ("tiers", "loaders")


def _parse(source: str, mode: str = "exec") -> ast.AST:
    """``ast.parse`` with the garbage collector held off: on Python 3.11 a collection during the parse can run a
    finalizer that formats a traceback, which parses too and breaks the parser's recursion count ("AST constructor
    recursion depth mismatch", CPython gh-106905). py4j's finalizers do that once a Spark test has run."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(source, mode=mode)
    finally:
        if was_enabled:
            gc.enable()


def _string_names(node: ast.AST) -> list[str]:
    """Names inside a string annotation (``"Settings | None"``); a string that is not an expression has none."""
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        return []
    try:
        parsed = _parse(node.value, mode="eval")
    except SyntaxError:
        return []
    return [n.id for n in ast.walk(parsed) if isinstance(n, ast.Name)]


def _annotations(tree: ast.AST) -> list[ast.expr]:
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign | ast.arg) and node.annotation is not None:
            found.append(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            found.append(node.returns)
    return found


def root_settings_uses(source: str) -> list[str]:
    """Where ``source`` imports the root ``Settings`` (any spelling) or names it in an annotation, as
    "line N: what"; sections such as ``S3Settings`` or ``ArchiveSettings`` are fine."""
    tree = _parse(source)
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "tierlake.config":
            uses += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name in ("Settings", "*")]
        elif isinstance(node, ast.Attribute) and node.attr == "Settings":
            uses.append(f"line {node.lineno}: {ast.unparse(node)}")
    for annotation in _annotations(tree):
        names = [n.id for n in ast.walk(annotation) if isinstance(n, ast.Name)]
        names += [name for n in ast.walk(annotation) for name in _string_names(n)]
        if "Settings" in names:
            uses.append(f"line {annotation.lineno}: annotated {ast.unparse(annotation)}")
    return uses


def test_tiers_and_loaders_never_take_the_whole_settings() -> None:
    offenders = {
        str(path.relative_to(REPO)): uses
        for package in OWN_SECTION_PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        if (uses := root_settings_uses(path.read_text()))
    }
    assert offenders == {}, (
        f"tiers/ and loaders/ take their own section (S3Settings, CacheOptions, ArchiveContext...), never "
        f"tierlake.config.Settings; the entry point builds the section: {offenders}"
    )


def test_every_spelling_of_the_root_settings_is_caught() -> None:
    wrong = {
        "from tierlake.config import Settings": "import Settings",
        "from tierlake.config import Settings as Conf": "import Settings",
        "from tierlake.config import *": "import *",
        "import tierlake.config\ndef f(s: tierlake.config.Settings) -> None: ...": "tierlake.config.Settings",
        "from tierlake import config\nx: config.Settings": "config.Settings",
        "def f(s: 'Settings | None') -> None: ...": "annotated",
        "def f() -> list[Settings]: ...": "annotated",
    }
    for source, what in wrong.items():
        uses = root_settings_uses(source)
        assert len(uses) == 1, (source, uses)
        assert what in uses[0], (source, uses)
    fine = "from tierlake.config import ArchiveSettings, S3Settings\nsettings: S3Settings = load()\n"
    fine += "def f(s: S3Settings, a: 'ArchiveSettings') -> None: ..."
    assert root_settings_uses(fine) == []
