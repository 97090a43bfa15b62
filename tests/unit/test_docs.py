"""Every code example in README.md and docs/*.md is executed or checked against the real thing.

- ```python blocks run, each in a fresh namespace in a temp folder holding a small local Delta table
  (``lake/gold/corpus_tokens``, written here with delta-rs) and with ``conf/`` of this checkout;
- ```bash blocks: every line is a command a check knows: ``tierlake ...`` parses with the real CLI parser,
  ``make X`` names a Makefile target, ``airflow dags test D`` names a DAG in ``dags/``, a bench command names a bench
  and its flags, ``export`` sets variables; any other line fails;
- ```yaml blocks parse, and a block of settings sections loads as a profile over ``conf/base.yaml``;
- ```text blocks are output or pictures; no other language is allowed, so nothing escapes the checks.

The README also stays a user's guide (size, no dated history or measurements in its prose, a complete layout
table, working links), docs/benchmarks.md equals what ``bench/report.py`` generates, and docs/operations.md lists
every exit code and every DAG.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pyarrow as pa
import pytest
import yaml
from deltalake import write_deltalake

from tierlake.cli import build_parser
from tierlake.commands import ExitCode
from tierlake.config import load_settings
from tierlake.errors import ConfigError

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
# The docs written with this suite: their links and the paths they name are checked too. The per-part guides
# (cache, loader, tape) have other owners; only their code blocks are checked here.
OWNED = [README, *(REPO / "docs" / name for name in ("architecture.md", "decisions.md", "operations.md"))]
BENCHMARKS = REPO / "docs" / "benchmarks.md"
MINE = [*OWNED, BENCHMARKS]
# Every code block of every doc is checked, the per-part guides' included; links and paths are checked in MINE.
DOCS = [*MINE, *sorted(set((REPO / "docs").glob("*.md")) - set(MINE))]
# Guides other people are writing: links to them may point at nothing until they land, and only these.
PENDING_GUIDES = {REPO / "docs" / name for name in ("cache.md", "loader.md", "tape.md")}
LANGUAGES = {"python", "bash", "yaml", "text"}
README_LIMIT = 15_000  # "at most 15 KB", read as 15,000 bytes
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    language: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def code_blocks(path: Path, text: str | None = None) -> list[Block]:
    """The fenced blocks of a Markdown file (fences at the start of a line, as this project writes them)."""
    blocks: list[Block] = []
    opened: tuple[int, str] | None = None
    body: list[str] = []
    for number, line in enumerate((path.read_text() if text is None else text).splitlines(), 1):
        fence = FENCE.match(line)
        if opened is None and fence:
            opened, body = (number, fence.group(1)), []
        elif opened is not None and line.rstrip() == "```":
            blocks.append(Block(path, opened[0], opened[1], "\n".join(body) + "\n"))
            opened = None
        elif opened is not None:
            body.append(line)
    if opened is not None:
        raise AssertionError(f"{path.relative_to(REPO)}:{opened[0]}: a code fence is never closed")
    return blocks


def readme_block(heading: str) -> list[str]:
    """The non-empty lines of the README's first bash block after ``heading`` (a user's example, run as written by
    the e2e tests)."""
    text = README.read_text()
    section = text.index(heading)
    block = next(b for b in code_blocks(README) if b.language == "bash" and text.index(b.code) > section)
    return [line for line in block.code.splitlines() if line.strip()]


def prose(path: Path) -> str:
    """The text of a Markdown file outside its code blocks."""
    return re.sub(r"^```.*?^```\s*$", "", path.read_text(), flags=re.S | re.M)


def blocks_of(language: str) -> list[Block]:
    return [block for path in DOCS for block in code_blocks(path) if block.language == language]


def ids(blocks: list[Block]) -> list[str]:
    return [block.where for block in blocks]


def load_report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", REPO / "bench" / "report.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while the class is built
    spec.loader.exec_module(module)
    return module


report = load_report()


# -- every block is of a language a check covers ---------------------------------------------------------------


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_block_has_a_checked_language(path: Path) -> None:
    blocks = code_blocks(path)
    unchecked = [f"{b.where} ({b.language or 'no language'})" for b in blocks if b.language not in LANGUAGES]
    assert not unchecked, f"blocks no test checks: {unchecked}; use one of {sorted(LANGUAGES)}"


def test_the_fence_reader_sees_every_block() -> None:
    sample = "a\n```bash\nmake demo\n```\n\n```\nplain\n```\n"
    blocks = code_blocks(README, sample)
    assert [(b.language, b.code, b.line) for b in blocks] == [("bash", "make demo\n", 2), ("", "plain\n", 6)]
    with pytest.raises(AssertionError, match="never closed"):
        code_blocks(README, "```python\nx = 1\n")
    assert len(blocks_of("python")) >= 2, "the README's trainer and data-engineer examples are python blocks"


# -- python blocks run ------------------------------------------------------------------------------------------


def write_corpus_tokens(lake: Path) -> None:
    """A small stand-in for ``gold/corpus_tokens``: 64 rows of 128 int32 token ids (8,192 tokens), one version."""
    rows, width = 64, 128
    tokens = pa.array([list(range(i * width, (i + 1) * width)) for i in range(rows)], pa.list_(pa.int32()))
    table = pa.table({"doc_id": pa.array([f"doc-{i}" for i in range(rows)]), "tokens": tokens})
    write_deltalake(str(lake / "gold" / "corpus_tokens"), table)


@pytest.mark.parametrize("block", blocks_of("python"), ids=ids(blocks_of("python")))
def test_python_block_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TIERLAKE_CONF_DIR", str(REPO / "conf"))
    write_corpus_tokens(tmp_path / "lake")
    code = compile(block.code, block.where, "exec")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, {"__name__": "__docs__"})  # noqa: S102 - the examples are this repository's own text
    for expected in re.findall(r"print\(.*\)\s+#\s*(.+)$", block.code, flags=re.M):
        assert expected.strip() in out.getvalue(), (
            f"{block.where}: printed {out.getvalue()!r}, the comment says {expected!r}"
        )


# -- shell blocks name real commands -----------------------------------------------------------------------------


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (REPO / "Makefile").read_text(), flags=re.M))


def dag_ids() -> set[str]:
    return {m for path in (REPO / "dags").glob("*.py") for m in re.findall(r'dag_id="([\w-]+)"', path.read_text())}


def check_tierlake(argv: list[str]) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`tierlake {shlex.join(argv)}` does not parse (exit {exc.code})") from exc


def check_make(argv: list[str]) -> None:
    missing = set(argv) - make_targets()
    assert argv, "make without a target"
    assert not missing, f"make targets {sorted(missing)} are not in the Makefile"


def check_export(argv: list[str]) -> None:
    bad = [arg for arg in argv if not re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S+", arg)]
    assert argv, "export of nothing"
    assert not bad, f"export of {bad}: not NAME=value"


def check_airflow(argv: list[str]) -> None:
    if argv == ["db", "migrate"]:
        return
    assert len(argv) == 3, f"airflow {argv}: only `db migrate` and `dags test D`"
    assert argv[:2] == ["dags", "test"], f"airflow {argv}: only `db migrate` and `dags test D`"
    assert argv[2] in dag_ids(), f"DAG {argv[2]!r} is not in dags/ ({sorted(dag_ids())})"


def check_python(argv: list[str]) -> None:
    script = REPO / argv[0]
    assert argv[0].startswith("bench/"), f"python {argv[0]}: not a bench script"
    assert script.is_file(), f"python {argv[0]}: no such bench"
    if script.name == "report.py":
        args = argv[1:]
        # `record -- <command>`: the report's parser takes the rest; the bench command is checked too.
        report.build_parser().parse_args(args)
        if "--" in args:
            check_python(args[args.index("--") + 2 :])
        return
    source = script.read_text()
    flags = [arg.split("=")[0] for arg in argv[1:] if arg.startswith("--")]
    unknown = [flag for flag in flags if f'"{flag}"' not in source]
    assert not unknown, f"{argv[0]} has no flags {unknown}"


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "tierlake": check_tierlake,
    ".venv/bin/tierlake": check_tierlake,
    "make": check_make,
    "export": check_export,
    ".venv/bin/airflow": check_airflow,
    ".venv/bin/python": check_python,
}


def check_line(line: str) -> None:
    words = shlex.split(line, comments=True)
    while words:  # a && b: each part on its own
        part = words[: words.index("&&")] if "&&" in words else words
        words = words[len(part) + 1 :]
        assert part[0] in COMMANDS, f"no check knows `{part[0]}`; known: {sorted(COMMANDS)}"
        COMMANDS[part[0]](part[1:])


@pytest.mark.parametrize("block", blocks_of("bash"), ids=ids(blocks_of("bash")))
def test_shell_block_names_real_commands(block: Block) -> None:
    lines = [line for line in block.code.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines, f"{block.where}: empty block"
    for line in lines:
        try:
            check_line(line)
        except AssertionError as exc:
            raise AssertionError(f"{block.where}: {line!r}: {exc}") from exc


@pytest.mark.parametrize(
    "line",
    [
        "tierlake ingest start --trigger-s -1",
        "tierlake table vacuum --everything",
        "make no-such-target",
        ".venv/bin/airflow dags test no_such_dag",
        ".venv/bin/python bench/archive.py --no-such-flag",
        "rm -rf .run",
    ],
)
def test_the_shell_checks_fail_on_wrong_lines(line: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(AssertionError):
        check_line(line)
    capsys.readouterr()  # argparse's usage message


# -- yaml blocks and configuration examples ---------------------------------------------------------------------


@pytest.mark.parametrize("block", blocks_of("yaml"), ids=ids(blocks_of("yaml")))
def test_yaml_block_is_a_profile(block: Block, tmp_path: Path) -> None:
    layer = yaml.safe_load(block.code)
    assert isinstance(layer, dict), f"{block.where}: not a mapping"
    conf = tmp_path / "conf"
    conf.mkdir()
    shutil.copy(REPO / "conf" / "base.yaml", conf / "base.yaml")
    (conf / "prod.yaml").write_text(block.code)
    settings = load_settings("prod", conf_dir=conf, env={})
    for section, values in layer.items():
        for key, value in values.items():
            assert str(getattr(getattr(settings, section), key)) == str(value), f"{section}.{key} was not applied"


def test_environment_examples_resolve() -> None:
    examples = re.findall(r"`(TIERLAKE_[A-Z0-9]+__[A-Z0-9_]+)=([^`]+)`", prose(README))
    assert examples, "the README shows TIERLAKE_<SECTION>__<KEY>=value examples"
    for name, value in examples:
        load_settings("local", conf_dir=REPO / "conf", env={name: value})


def test_readme_config_error_is_the_real_message() -> None:
    shown = [b for b in code_blocks(README) if b.language == "text" and b.code.startswith("tierlake: error:")]
    assert len(shown) == 1, "the README shows one configuration error"
    found = re.search(r"environment variable (TIERLAKE_\w+): \S+ = (\S+)", shown[0].code)
    assert found, shown[0].code
    with pytest.raises(ConfigError) as caught:
        load_settings("local", conf_dir=REPO / "conf", env={found.group(1): found.group(2)})
    assert " ".join(shown[0].code.split()) == " ".join(f"tierlake: error: {caught.value}".split())


REPO_PATH = re.compile(r"(?<![\w/.])((?:tierlake|tiers|pipelines|loaders|dags|infra|conf|bench|tests)/[\w./-]*)")


@pytest.mark.parametrize("path", MINE, ids=lambda p: str(p.relative_to(REPO)))
def test_paths_named_in_the_docs_exist(path: Path) -> None:
    text = path.read_text()
    named = {m.group(1).rstrip(".,") for m in REPO_PATH.finditer(text) if "<" not in text[m.end() : m.end() + 1]}
    missing = sorted(name for name in named if not (REPO / name).exists())
    assert not missing, f"{path.relative_to(REPO)} names paths that do not exist: {missing}"


# -- the README is a user's guide --------------------------------------------------------------------------------


def test_readme_is_small() -> None:
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes > {README_LIMIT}; move detail to docs/"


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"(?<![=\d])20\d\d-\d\d-\d\d", "a date: history belongs in docs/decisions.md or bench/results/"),
        (r"not kept|the issue|this session|\bTODO\b", "notebook language"),
        (r"\d[\d,.]*\s*(MB/s|GB/s|records/s|ms\b)|\bp(50|99)\s+\d", "a measurement: it belongs in docs/"),
    ],
)
def test_readme_prose_has_no_history_or_measurements(pattern: str, why: str) -> None:
    found = [m.group(0) for m in re.finditer(pattern, prose(README), flags=re.I)]
    assert not found, f"README.md: {found}: {why}"


def layout_section() -> str:
    text = README.read_text()
    start = text.index("## Layout")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_layout_table_names_every_folder() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    top = {line.split("/")[0] for line in tracked.splitlines() if "/" in line and not line.startswith(".")}
    nested = {
        f"{parent}/{path.name}"
        for parent in ("tiers", "pipelines")
        for path in (REPO / parent).iterdir()
        if path.is_dir() and not path.name.startswith(("_", "."))
    }
    layout = layout_section()
    missing = sorted(f for f in top if f"`{f}/`" not in layout)
    missing += sorted(f for f in nested if f"`{f.split('/')[1]}/`" not in layout)
    assert {"tiers/tape", "tiers/archive", "tiers/cache"} <= nested
    assert not missing, f"README's layout table lacks {missing}"


@pytest.mark.parametrize("path", MINE, ids=lambda p: str(p.relative_to(REPO)))
def test_links_point_at_files(path: Path) -> None:
    broken = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", prose(path)):
        if "://" in target:
            continue
        resolved = (path.parent / target).resolve()
        if not resolved.exists() and resolved not in PENDING_GUIDES:
            broken.append(target)
    assert not broken, f"{path.relative_to(REPO)} links to missing files: {broken}"


def test_readme_links_every_doc() -> None:
    text = README.read_text()
    for doc in (REPO / "docs").glob("*.md"):
        assert f"](docs/{doc.name})" in text, f"README's 'Read more' does not link docs/{doc.name}"


# -- docs/operations.md knows every exit code and DAG -------------------------------------------------------------


def test_operations_lists_every_exit_code() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    rows = dict(re.findall(r"^\| (\d+) \| `(\w+)` \|", text, flags=re.M))
    assert rows == {str(code.value): code.name.lower() for code in ExitCode}


def test_operations_lists_every_dag() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    assert dag_ids(), "dags/ defines DAGs"
    missing = sorted(dag for dag in dag_ids() if f"| `{dag}` |" not in text)
    assert not missing, f"docs/operations.md's DAG table lacks {missing}"


# -- docs/benchmarks.md is generated -----------------------------------------------------------------------------


def test_benchmarks_page_is_what_the_results_generate() -> None:
    expected = report.render(REPO / "bench", REPO / "bench" / "results")
    assert BENCHMARKS.read_text() == expected, (
        "docs/benchmarks.md differs from bench/results/. Fix: .venv/bin/python bench/report.py render"
    )


def test_every_bench_has_a_section_and_names_itself() -> None:
    page = BENCHMARKS.read_text()
    for bench in report.benches(REPO / "bench"):
        assert f"## {bench}\n" in page
        assert f'"bench": "{bench}"' in (REPO / "bench" / f"{bench}.py").read_text(), (
            f"bench/{bench}.py must print bench={bench!r}: its runs are saved as bench/results/{bench}.jsonl"
        )


FAKE_RESULT = {
    "bench": "cache",
    "figures": {"hits": 3, "nested": {"a_mb_s": 1234.5}},
    "ratios": {"r": 0.5},
    "setup": {},
}


def test_record_appends_the_last_line_and_the_page_shows_the_latest(tmp_path: Path) -> None:
    results, hits = tmp_path / "results", tmp_path / "hits"
    bench = tmp_path / "fake_bench.py"  # the same command twice; its second run reports 4 hits
    bench.write_text(
        "import json, pathlib\n"
        f"p = pathlib.Path({str(hits)!r}); n = int(p.read_text()) + 1 if p.exists() else 3; p.write_text(str(n))\n"
        "print('progress')\n"
        f"print(json.dumps({{**{FAKE_RESULT!r}, 'figures': {{'hits': n, 'nested': {{'a_mb_s': 1234.5}}}}}}))\n"
    )
    for _ in range(2):
        with contextlib.redirect_stdout(io.StringIO()):
            path = report.record([sys.executable, str(bench)], results=results, note="a test")
    runs = [json.loads(line) for line in path.read_text().splitlines()]
    assert path.name == "cache.jsonl"
    assert len(runs) == 2
    assert runs[1]["result"]["figures"]["hits"] == 4
    assert runs[1]["command"].startswith(sys.executable)
    assert {"date", "machine", "command", "load_avg", "note"} <= set(runs[1])
    page = report.render(REPO / "bench", results)
    cache = page[page.index("## cache") : page.index("## ingest")]
    assert "2 run(s) recorded, 1 command(s)" in cache
    assert "| `hits` | 4 |" in cache
    assert "| `nested.a_mb_s` | 1,234.5 |" in cache
    assert "| `hits` | 3 |" not in cache
    assert "No run recorded yet" in page[page.index("## ingest") :]


@pytest.mark.parametrize(
    "stdout",
    ["", "not json", json.dumps({"bench": "loader_gpu", "error": "needs a CUDA device"})],
)
def test_record_refuses_a_result_without_the_bench_keys(stdout: str) -> None:
    with pytest.raises(SystemExit):
        report.last_json(stdout)


def test_render_check_fails_on_a_hand_edit(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text(BENCHMARKS.read_text() + "a hand edit\n")
    assert report.main(["--page", str(page), "render", "--check"]) == 1
    page.write_text(BENCHMARKS.read_text())
    assert report.main(["--page", str(page), "render", "--check"]) == 0
