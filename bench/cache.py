"""Edge-cache benchmark: tierlake's cache and its peers side by side, in one run, on the same objects in Ceph RGW.

Measured, all against the real local RGW (the bench starts Ceph only, through infra/, if it is not running):

- the S3 client for the store: boto3 ``get_object`` vs ``pyarrow.fs.S3FileSystem`` on the same objects;
- miss path: the cache filling each object it has never seen (one GET whose response names the version, no HEAD;
  CRC-32C, temp file, one fsync, rename, fsync of the folder) vs a direct boto3 GET of the same objects;
- hit path: reading an object through the cache vs a raw read of the same local file (both from the page cache,
  read once before timing). The objects are Delta-style data files (``*.parquet``), which the default
  ``cache.immutable_patterns`` opens without a HEAD; a mutable key (HEAD per open, ``revalidate_s: 0``) and an
  open with the version given by the caller are measured too;
- single-flight: backend GETs per object when 8 processes read the same cold objects at once, for tierlake's cache
  and for fsspec's ``filecache`` (over an fsspec file system on the same boto3 client; s3fs is not used because
  its aiobotocore pins an older botocore than the project's boto3);
- fsspec ``filecache`` miss and hit MB/s on the same workload;
- site mode: 4 concurrent remote readers (boto3 through ``tierlake cache serve``) vs the same 4 straight at RGW;
- eviction: hit ratios of S3-FIFO and plain LRU on a scan-heavy trace and on a skewed (Zipf) trace.

``--quick`` (under 3 minutes on 2 cores) uses fewer and smaller objects. The last line of output is one JSON object.
Times are wall-clock on a shared machine: compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tierlake.config import S3Settings, Settings, load_settings  # noqa: E402
from tierlake.config.cache import CacheOptions  # noqa: E402
from tiers.cache.core import EdgeCache  # noqa: E402
from tiers.cache.fileio import FILL_CHECKSUM  # noqa: E402
from tiers.cache.policy import LRU, S3FIFO, scan_heavy_trace, simulate  # noqa: E402
from tiers.cache.site import load_or_create_keys  # noqa: E402
from tiers.s3 import s3_client  # noqa: E402
from tiers.store import CHUNK, Body, ObjectInfo, S3Store  # noqa: E402

BUCKET = "tierlake-lake"
MIB = 1024 * 1024


def log(message: str) -> None:
    sys.stderr.write(f"[bench cache] {message}\n")
    sys.stderr.flush()


def timed(work: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    nbytes = work()
    return time.perf_counter() - start, nbytes


def mb_s(seconds: float, nbytes: int) -> float:
    return round(nbytes / MIB / seconds, 1) if seconds > 0 else 0.0


def best_of(runs: int, work: Callable[[], int]) -> float:
    """The best MB/s of ``runs`` repetitions (the least disturbed by the other tenants of the machine)."""
    return max(mb_s(*timed(work)) for _ in range(runs))


# ---------------------------------------------------------------------------------------------------------
# Origin side: counting GETs across processes


class CountingStore(S3Store):
    """Appends one line per backend GET to a shared file (O_APPEND), so GETs are counted across processes."""

    def __init__(self, s3: S3Settings, log_path: Path) -> None:
        super().__init__(s3)
        self.log_path = log_path

    def open(self, bucket: str, key: str, *, start: int = 0, end: int | None = None, etag: str | None = None) -> Body:
        _count(self.log_path, key)
        return super().open(bucket, key, start=start, end=end, etag=etag)

    def open_info(self, bucket: str, key: str) -> tuple[ObjectInfo, Body]:
        _count(self.log_path, key)
        return super().open_info(bucket, key)


def _count(path: Path, key: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{key}\n".encode())
    os.close(fd)


def _gets(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


# ---------------------------------------------------------------------------------------------------------
# The fsspec peer: filecache over a minimal fsspec file system on boto3


def fsspec_filecache(s3: S3Settings, cache_dir: Path, count_log: Path) -> Any:
    import fsspec  # type: ignore[import-untyped]  # noqa: PLC0415
    from fsspec.implementations.cached import WholeFileCacheFileSystem  # type: ignore[import-untyped]  # noqa: PLC0415

    class Boto3FileSystem(fsspec.AbstractFileSystem):  # type: ignore[misc]
        protocol = "rgw"

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.client = s3_client(s3)

        def _split(self, path: str) -> tuple[str, str]:
            bucket, _, key = self._strip_protocol(path).partition("/")
            return bucket, key

        def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
            bucket, key = self._split(path)
            head = self.client.head_object(Bucket=bucket, Key=key)
            return {"name": path, "size": head["ContentLength"], "type": "file", "ETag": head["ETag"]}

        def ukey(self, path: str) -> str:
            return str(self.info(path)["ETag"])

        def get_file(self, rpath: str, lpath: str, **kwargs: Any) -> None:  # one streaming GET, like s3fs
            bucket, key = self._split(rpath)
            _count(count_log, key)
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
            with open(lpath, "wb") as out:
                while chunk := body.read(MIB):
                    out.write(chunk)

    return WholeFileCacheFileSystem(fs=Boto3FileSystem(), cache_storage=str(cache_dir), check_files=True)


# ---------------------------------------------------------------------------------------------------------
# Process workers (spawned): 8 readers of the same cold objects


def _tierlake_reader(s3: S3Settings, options: CacheOptions, keys: list[str], count_log: Path, barrier: Any) -> None:
    cache = EdgeCache(CountingStore(s3, count_log), options)
    barrier.wait(timeout=120)
    for key in keys:
        with cache.open_path(BUCKET, key) as path:
            path.stat()


def _fsspec_reader(s3: S3Settings, cache_dir: Path, keys: list[str], count_log: Path, barrier: Any) -> None:
    fs = fsspec_filecache(s3, cache_dir, count_log)
    barrier.wait(timeout=120)
    for key in keys:
        with fs.open(f"{BUCKET}/{key}", "rb") as handle:
            handle.read(1)


def concurrent_gets(target: Callable[..., None], args: tuple[Any, ...], keys: list[str], count_log: Path) -> float:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=target, args=(*args, keys, count_log, barrier)) for _ in range(8)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
        if proc.exitcode != 0:
            log(f"a reader process exited with {proc.exitcode}")
    return round(_gets(count_log) / len(keys), 3)


# ---------------------------------------------------------------------------------------------------------
# Sections


def store_clients(settings: Settings, keys: list[str]) -> dict[str, float]:
    import pyarrow.fs as pafs  # noqa: PLC0415

    client = s3_client(settings.s3)
    access, secret = settings.s3.require_credentials()
    scheme, _, host = settings.s3.endpoint.partition("://")
    arrow = pafs.S3FileSystem(
        access_key=access, secret_key=secret, endpoint_override=host, scheme=scheme, region=settings.s3.region
    )
    boto3_all = partial(_boto3_read_all, client, keys)

    def arrow_all() -> int:
        total = 0
        for key in keys:
            with arrow.open_input_stream(f"{BUCKET}/{key}") as stream:
                while chunk := stream.read(MIB):
                    total += len(chunk)
        return total

    return {"store_boto3_get_mb_s": best_of(2, boto3_all), "store_pyarrow_s3fs_get_mb_s": best_of(2, arrow_all)}


def _boto3_read_all(client: Any, keys: list[str]) -> int:
    """Every object through one boto3 client, in MiB reads: how each boto3 reader of this bench reads (straight from
    RGW or through the site server), written once so that the compared sides read alike."""
    total = 0
    for key in keys:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
        while chunk := body.read(MIB):
            total += len(chunk)
    return total


def miss_and_hit(settings: Settings, keys: list[str], work: Path) -> dict[str, float]:
    """The miss path against direct GETs, then the hit path against raw local reads; the hit rounds read the cache
    folder the last miss round filled."""
    direct_runs, miss_runs = _miss_rounds(settings, keys, work)
    figures: dict[str, float] = {"boto3_get_mb_s": max(direct_runs), "cache_miss_mb_s": max(miss_runs)}
    figures |= _miss_then_read(settings, keys, work)
    figures["miss_over_boto3_paired_median"] = paired_median(miss_runs, direct_runs)
    rounds = _hit_rounds(_hit_readers(settings, keys, work))
    figures |= {name: max(values) for name, values in rounds.items()}
    figures |= _hit_ratios(rounds)
    return figures


def _miss_rounds(settings: Settings, keys: list[str], work: Path) -> tuple[list[float], list[float]]:
    """MB/s of direct GETs and of cache fills into a fresh folder (``miss-<round>``), three rounds each."""
    client = s3_client(settings.s3)
    # Interleaved rounds (A B A B ...). The ratio is the median of the rounds' own ratios (each pair ran
    # back to back, under about the same load); the best of each side is reported as well.
    direct = partial(_boto3_read_all, client, keys)
    direct_runs, miss_runs = [], []
    for run in range(3):
        direct_runs.append(mb_s(*timed(direct)))
        fresh = EdgeCache(S3Store(settings.s3), CacheOptions(directory=work / f"miss-{run}", max_bytes=8192 * MIB))

        def fill_all(cache: EdgeCache = fresh) -> int:
            return sum(cache.get_path(BUCKET, key).stat().st_size for key in keys)

        miss_runs.append(mb_s(*timed(fill_all)))
    return direct_runs, miss_runs


def _miss_then_read(settings: Settings, keys: list[str], work: Path) -> dict[str, float]:
    """What a reader that wants the bytes sees: the fill, then reading the file back (O_DIRECT fills leave it out of
    the page cache, so this read comes from the disk), with and without O_DIRECT."""
    figures: dict[str, float] = {}
    for name, direct_io in (("cache_miss_then_read_mb_s", True), ("cache_miss_then_read_buffered_mb_s", False)):
        folder = work / f"miss-read-{direct_io}"
        reader = EdgeCache(
            S3Store(settings.s3), CacheOptions(directory=folder, max_bytes=8192 * MIB, direct_io=direct_io)
        )

        def fill_and_read(cache: EdgeCache = reader) -> int:
            return sum(len(cache.get_path(BUCKET, key).read_bytes()) for key in keys)

        figures[name] = mb_s(*timed(fill_and_read))
        shutil.rmtree(folder, ignore_errors=True)
    return figures


def _read_through(edge: EdgeCache, keys: list[str], given: dict[str, ObjectInfo] | None = None) -> Callable[[], int]:
    """Reading every key through ``edge.open_path``, with the version given by the caller when ``given`` is."""

    def run() -> int:
        total = 0
        for key in keys:
            with edge.open_path(BUCKET, key, info=given[key] if given else None) as path:
                total += len(path.read_bytes())
        return total

    return run


def _hit_readers(settings: Settings, keys: list[str], work: Path) -> dict[str, Callable[[], int]]:
    """The hit path's readers by figure name, all on the objects the last miss round cached (``miss-2``), so none of
    them fills anything."""
    # The same cache folder twice: default options (these *.parquet keys are immutable: no HEAD per open), and
    # no immutable patterns (every open HEADs the origin, as for a Delta log file).
    options = CacheOptions(directory=work / "miss-2", max_bytes=8192 * MIB)
    cache = EdgeCache(S3Store(settings.s3), options)
    mutable = EdgeCache(S3Store(settings.s3), dataclasses.replace(options, immutable_patterns=()))
    infos = {key: mutable.info(BUCKET, key) for key in keys}
    paths = [cache.get_path(BUCKET, key) for key in keys]

    def local_read() -> int:
        return sum(len(path.read_bytes()) for path in paths)

    def verified() -> int:  # cat(): the whole entry is checked against its CRC-32C before it is served
        return sum(len(cache.cat(BUCKET, key)) for key in keys)

    return {
        "local_read_mb_s": local_read,
        "cache_hit_mb_s": _read_through(cache, keys),
        "cache_hit_mutable_key_mb_s": _read_through(mutable, keys),
        "cache_hit_known_version_mb_s": _read_through(cache, keys, infos),
        "cache_hit_verified_mb_s": verified,
    }


def _hit_rounds(readers: dict[str, Callable[[], int]]) -> dict[str, list[float]]:
    """MB/s of each reader over 9 rounds; each round runs all of them, starting one further along, so none always
    goes first."""
    readers["local_read_mb_s"]()  # every timed read below comes from the page cache, the same files, the same way
    rounds: dict[str, list[float]] = {name: [] for name in readers}
    names = list(rounds)
    for run in range(9):
        for name in names[run % len(names) :] + names[: run % len(names)]:
            rounds[name].append(mb_s(*timed(readers[name])))
    return rounds


def _hit_ratios(rounds: dict[str, list[float]]) -> dict[str, float]:
    """The hit path's paired medians: against a raw local read, and the CRC-32C-verified read against a plain hit."""
    figures: dict[str, float] = {}
    for name, label in (("cache_hit_mb_s", "hit"), ("cache_hit_mutable_key_mb_s", "hit_mutable_key")):
        figures[f"{label}_over_local_paired_median"] = paired_median(rounds[name], rounds["local_read_mb_s"])
    figures["hit_known_version_over_local_paired_median"] = paired_median(
        rounds["cache_hit_known_version_mb_s"], rounds["local_read_mb_s"]
    )
    figures["hit_verified_over_hit_paired_median"] = paired_median(
        rounds["cache_hit_verified_mb_s"], rounds["cache_hit_mb_s"]
    )
    return figures


def paired_median(ours: list[float], theirs: list[float]) -> float:
    """The median of per-round ratios: robust to a round that another tenant of the machine slowed down."""
    return round(statistics.median(a / b for a, b in zip(ours, theirs, strict=True) if b), 3)


def fsspec_peer(settings: Settings, keys: list[str], work: Path) -> dict[str, float]:
    fs = fsspec_filecache(settings.s3, work / "fsspec-solo", work / "fsspec-solo.log")

    def read_all() -> int:
        total = 0
        for key in keys:
            with fs.open(f"{BUCKET}/{key}", "rb") as handle:
                total += len(handle.read())
        return total

    miss = mb_s(*timed(read_all))
    return {"fsspec_filecache_miss_mb_s": miss, "fsspec_filecache_hit_mb_s": best_of(3, read_all)}


def site_mode(settings: Settings, keys: list[str], work: Path) -> dict[str, float]:
    import boto3  # noqa: PLC0415
    from botocore.config import Config  # noqa: PLC0415

    env = dict(os.environ)
    env.update(
        {
            "TIERLAKE_CACHE__DIR": str(work / "site-cache"),
            "TIERLAKE_CACHE__SITE_CREDENTIALS_FILE": str(work / "site.env"),
        }
    )
    server = subprocess.Popen(
        [str(ROOT / ".venv/bin/tierlake"), "cache", "serve", "--port", str(settings.cache.site_port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{settings.cache.site_port}"
    try:
        _wait_healthy(endpoint, server)
        keys_site = load_or_create_keys(work / "site.env")
        config = Config(s3={"addressing_style": "path"}, signature_version="s3v4", max_pool_connections=8)

        def site_client() -> Any:
            return boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id=keys_site.access_key,
                aws_secret_access_key=keys_site.secret_key,
                config=config,
            )

        def four_readers(make_client: Callable[[], Any]) -> Callable[[], int]:
            def run() -> int:
                def reader(offset: int) -> int:
                    return _boto3_read_all(make_client(), keys[offset:] + keys[:offset])

                with ThreadPoolExecutor(max_workers=4) as pool:
                    return sum(pool.map(reader, range(4)))

            return run

        cold = mb_s(*timed(four_readers(site_client)))
        warm = best_of(2, four_readers(site_client))
        direct = best_of(2, four_readers(lambda: s3_client(settings.s3)))
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"site_mode_cold_mb_s": cold, "site_mode_mb_s": warm, "rgw_direct_4_readers_mb_s": direct}


def _wait_healthy(endpoint: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the site server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint}/_tierlake/health", timeout=2):  # noqa: S310 - loopback
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the site server did not become healthy in 30 s")


def policies(quick: bool) -> dict[str, float]:
    scan = scan_heavy_trace(hot_keys=200, scan_keys=600, rounds=10 if quick else 30, size=1)
    rng = random.Random(11)
    weights = [1 / (rank + 1) ** 0.9 for rank in range(5000)]
    zipf = [(f"z{k}", 1) for k in rng.choices(range(5000), weights=weights, k=40_000 if quick else 200_000)]
    out: dict[str, float] = {}
    for name, trace, capacity in (("scan", scan, 400), ("zipf", zipf, 1000)):
        out[f"hit_ratio_s3fifo_{name}"] = round(simulate(S3FIFO(capacity), trace).hit_ratio, 4)
        out[f"hit_ratio_lru_{name}"] = round(simulate(LRU(capacity), trace).hit_ratio, 4)
    return out


# ---------------------------------------------------------------------------------------------------------


def ensure_rgw(settings: Settings) -> Settings:
    """Ceph RGW of this profile, started through infra/ if needed (Kafka is not needed here)."""
    from infra.stack import LocalStack  # noqa: PLC0415

    ceph_only = dataclasses.replace(settings, kafka=dataclasses.replace(settings.kafka, managed=False))
    return LocalStack(ceph_only).up() if settings.ceph.managed else settings


def upload(settings: Settings, count: int, size: int, run_id: str) -> list[str]:
    client = s3_client(settings.s3)
    keys = []
    for i in range(count):
        key = f"bench/cache/{run_id}/part-{i:04d}.parquet"
        client.put_object(Bucket=BUCKET, Key=key, Body=os.urandom(size))
        keys.append(key)
    return keys


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; the module docstring is the help, as it says what each figure measures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer, smaller objects (< 3 minutes on 2 cores)")
    return parser.parse_args(argv)


def _sections(settings: Settings, keys: list[str], work: Path, *, quick: bool) -> dict[str, float]:
    """Every section's figures, one after the other on the uploaded objects (each section uses its own folders)."""
    figures: dict[str, float] = {}
    log("S3 clients: boto3 vs pyarrow")
    figures |= store_clients(settings, keys)
    log("miss path and hit path")
    figures |= miss_and_hit(settings, keys, work)
    log("8 processes on cold objects: tierlake cache, then fsspec filecache")
    options = CacheOptions(directory=work / "flight", max_bytes=8192 * MIB)
    figures["backend_gets_per_object"] = concurrent_gets(
        _tierlake_reader, (settings.s3, options), keys, work / "flight.log"
    )
    figures["fsspec_filecache_gets_per_object"] = concurrent_gets(
        _fsspec_reader, (settings.s3, work / "fsspec-flight"), keys, work / "fsspec-flight.log"
    )
    log("fsspec filecache, one process")
    figures |= fsspec_peer(settings, keys, work)
    log("site mode, 4 concurrent remote readers")
    figures |= site_mode(settings, keys, work)
    log("eviction policies on traces")
    figures |= policies(quick)
    return figures


def _ratios(figures: dict[str, float]) -> dict[str, float]:
    """The headline ratios: the paired medians as measured, the rest from the best of each side (0.0 where the
    other side measured nothing)."""

    def ratio(a: str, b: str) -> float:
        return round(figures[a] / figures[b], 3) if figures.get(b) else 0.0

    return {
        "hit_vs_local_read": figures["hit_over_local_paired_median"],
        "hit_mutable_key_vs_local_read": figures["hit_mutable_key_over_local_paired_median"],
        "hit_known_version_vs_local_read": figures["hit_known_version_over_local_paired_median"],
        "miss_vs_boto3_get": figures["miss_over_boto3_paired_median"],
        "hit_crc32c_verified_vs_hit": figures["hit_verified_over_hit_paired_median"],
        "hit_vs_local_read_best_of": ratio("cache_hit_mb_s", "local_read_mb_s"),
        "miss_vs_boto3_get_best_of": ratio("cache_miss_mb_s", "boto3_get_mb_s"),
        "miss_then_read_vs_boto3_get": ratio("cache_miss_then_read_mb_s", "boto3_get_mb_s"),
        "miss_then_read_buffered_vs_boto3_get": ratio("cache_miss_then_read_buffered_mb_s", "boto3_get_mb_s"),
        "fsspec_miss_vs_boto3_get": ratio("fsspec_filecache_miss_mb_s", "boto3_get_mb_s"),
        "hit_vs_fsspec_hit": ratio("cache_hit_mb_s", "fsspec_filecache_hit_mb_s"),
        "site_vs_rgw_direct_4_readers": ratio("site_mode_mb_s", "rgw_direct_4_readers_mb_s"),
        "pyarrow_vs_boto3_store_get": ratio("store_pyarrow_s3fs_get_mb_s", "store_boto3_get_mb_s"),
        "s3fifo_vs_lru_hit_ratio_scan": ratio("hit_ratio_s3fifo_scan", "hit_ratio_lru_scan"),
        "s3fifo_vs_lru_hit_ratio_zipf": ratio("hit_ratio_s3fifo_zipf", "hit_ratio_lru_zipf"),
    }


def _setup(
    settings: Settings, work: Path, *, count: int, size: int, quick: bool, load_start: float, started: float
) -> dict[str, Any]:
    """How the figures were made, read when the run ends (load average, seconds and threads at that point)."""
    return {
        "objects": count,
        "object_mib": size // MIB,
        "quick": quick,
        "origin": f"Ceph RGW {settings.s3.endpoint}",
        "cpus": os.cpu_count(),
        "revalidate_s": 0,
        "immutable_patterns": list(CacheOptions(directory=work, max_bytes=1).immutable_patterns),
        "fill_checksum": FILL_CHECKSUM,
        "read_chunk_bytes": {"cache_fill": CHUNK, "boto3_peer": MIB, "fsspec_peer": MIB},
        "ratio_method": "hit, miss: median of per-round ratios over 9 (hit) / 3 (miss) interleaved rounds; "
        "*_best_of: best round of each side; miss_then_read*: one pass, fill then read back (O_DIRECT / buffered)",
        "load_average_1m_start": load_start,
        "hit_bytes": "the same cached files for cache and raw read, page cache warm, read_bytes() whole",
        "load_average_1m_end": round(os.getloadavg()[0], 2),
        "traces": "scan: 200 hot keys re-read between one-pass scans of 600, cache 400; zipf: 5000 keys, s=0.9, "
        "cache 1000",
        "fsspec_peer": "WholeFileCacheFileSystem (filecache, check_files=True) over a boto3 fsspec file system",
        "seconds": round(time.monotonic() - started, 1),
        "threads": threading.active_count(),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    count, size = (6, 32 * MIB) if args.quick else (12, 64 * MIB)
    started, load_start = time.monotonic(), round(os.getloadavg()[0], 2)
    settings = ensure_rgw(load_settings())
    run_id = hashlib.sha1(str(time.time()).encode(), usedforsecurity=False).hexdigest()[:10]
    work = Path(tempfile.mkdtemp(prefix="tierlake-bench-cache-", dir=settings.run_dir))
    try:
        log(f"uploading {count} x {size // MIB} MiB to s3://{BUCKET}/bench/cache/{run_id}/")
        keys = upload(settings, count, size, run_id)
        figures = _sections(settings, keys, work, quick=args.quick)
        client = s3_client(settings.s3)
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys]})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = _ratios(figures)
    setup = _setup(settings, work, count=count, size=size, quick=args.quick, load_start=load_start, started=started)
    sys.stdout.write(json.dumps({"bench": "cache", "figures": figures, "ratios": ratios, "setup": setup}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
