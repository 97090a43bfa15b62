"""The JVM jar sets: resolved once from Maven Central by ``infra/bootstrap.sh``, then used offline.

Maven writes each set's classpath (paths into ``~/.m2``) to a file; :func:`link_jar_set` turns it into a folder
of symlinks under ``.cache/jars/<set>`` so a classpath is one glob and nothing is copied twice. For the Spark set
every artifact that pyspark already ships (Scala, Hadoop client, Jackson, Parquet, log4j, ...) is dropped, so the
JVM sees one version of each class: pyspark's.

Run as ``python -m infra.jars link <set> <classpath-file> <dest> [--skip-pyspark-jars]``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from tierlake.errors import DependencyMissing
from tierlake.host import jars_in

_VERSIONED_JAR = re.compile(r"^(?P<artifact>.+?)-\d[\w.+-]*\.jar$")


def artifact_of(jar: Path) -> str:
    """``jackson-core-2.13.5.jar`` -> ``jackson-core``. A jar in ~/.m2 takes its artifact id from its folder."""
    if jar.parent.parent.name and jar.name.startswith(jar.parent.parent.name + "-"):
        return jar.parent.parent.name
    match = _VERSIONED_JAR.match(jar.name)
    return match.group("artifact") if match else jar.stem


def pyspark_artifacts() -> set[str]:
    try:
        import pyspark  # noqa: PLC0415 - only this path needs pyspark
    except ImportError as exc:
        raise DependencyMissing("pyspark is not installed. Fix: run `make setup` (infra/bootstrap.sh)") from exc
    jars = Path(pyspark.__file__).parent / "jars"
    # pyspark routes commons-logging through jcl-over-slf4j; a second copy of those classes would shadow it.
    return {artifact_of(jar) for jar in jars.glob("*.jar")} | {"commons-logging"}


def link_jar_set(classpath: list[Path], dest: Path, *, skip: set[str]) -> list[Path]:
    """Make ``dest`` hold exactly one symlink per jar of ``classpath`` whose artifact is not in ``skip``."""
    dest.mkdir(parents=True, exist_ok=True)
    for stale in dest.glob("*.jar"):
        stale.unlink()
    linked = []
    for jar in classpath:
        if not jar.is_file():
            raise DependencyMissing(f"jar {jar} from the Maven classpath is missing. Fix: rerun `make setup`")
        if artifact_of(jar) in skip:
            continue
        link = dest / jar.name
        link.symlink_to(jar)
        linked.append(link)
    return linked


def jar_paths(folder: Path) -> list[Path]:
    """The jars of one linked set, sorted; a clear error when set-up has not run."""
    return jars_in(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.jars")
    sub = parser.add_subparsers(dest="command", required=True)
    link = sub.add_parser("link", help="symlink a Maven classpath into a folder")
    link.add_argument("name")
    link.add_argument("classpath_file", type=Path)
    link.add_argument("dest", type=Path)
    link.add_argument("--skip-pyspark-jars", action="store_true")
    args = parser.parse_args(argv)
    entries = args.classpath_file.read_text(encoding="utf-8").strip().split(":")
    skip = pyspark_artifacts() if args.skip_pyspark_jars else set()
    linked = link_jar_set([Path(e) for e in entries if e], args.dest, skip=skip)
    sys.stdout.write(f"{args.name}: {len(linked)} jars linked in {args.dest} ({len(entries) - len(linked)} skipped)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
