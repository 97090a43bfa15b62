"""Single-node Ceph 16.2 with RGW from Debian packages: 1 mon, 1 mgr, N bluestore-on-file OSDs, EC k+m data pool.

Everything lives under ``<run_dir>/ceph``: ``ceph.conf``, keyrings, ``mon/ mgr/ osd/ rgw/`` data, ``run/*.pid``
(written by the daemons themselves), ``log/*.log``. The first ``up`` bootstraps a new cluster; later ones restart
the daemons that are down over the same data, so objects survive ``stack down``. Facts behind each setting
(paxos interval, pool order, keyring placement): shared/reference/ceph-single-node.md.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid

from infra import procs
from tierlake.config import CephSettings, Settings
from tierlake.errors import DependencyMissing, StackError

logger = logging.getLogger(__name__)

WAIT_S = 120.0
_DATA_POOL = "default.rgw.buckets.data"
RGW_USER = "tierlake"


# ceph.conf of the single-node cluster (see shared/reference/ceph-single-node.md); $name and $id are Ceph's own.
CEPH_CONF = """# written by tierlake (infra/ceph.py) at bootstrap; edit conf/, not this file
[global]
fsid = {fsid}
mon_host = v2:127.0.0.1:{mon_port}
mon_initial_members = a
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_msgr1 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
run_dir = {home}/run
pid_file = {home}/run/$name.pid
admin_socket = {home}/run/$name.asok
log_file = {home}/log/$name.log
crash_dir = {home}/crash
log_to_stderr = false
err_to_stderr = false
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 2
mon_data_avail_crit = 1
paxos_propose_interval = 0.1

[mon]
mon_data = {home}/mon/$id
mon_cluster_log_file = {home}/log/cluster.log
mgr_initial_modules = iostat

[mgr]
mgr_data = {home}/mgr/$id

[osd]
osd_data = {home}/osd/$id
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = {size}
bluestore_fsck_on_mkfs = false
bdev_enable_discard = false
osd_memory_target = 939524096
bluestore_cache_autotune = true

[client.admin]
keyring = {home}/keyring

[client.rgw.gw]
rgw_data = {home}/rgw/gw
keyring = {home}/rgw/gw/keyring
rgw_frontends = {rgw_frontends}
rgw_thread_pool_size = 32
"""


class CephCluster:
    """The local Ceph cluster: owns its daemons and files under ``<run_dir>/ceph``."""

    def __init__(self, settings: Settings) -> None:
        self.ceph: CephSettings = settings.ceph
        self.home = settings.run_dir / "ceph"
        self.conf = self.home / "ceph.conf"
        self.log_dir = self.home / "log"
        self.setup_log = self.log_dir / "setup.log"
        self.marker_file = self.home / "bootstrapped.json"

    # ----------------------------------------------------------------------------------------------------
    # daemons

    def _daemon(self, name: str) -> procs.Daemon:
        return procs.Daemon(
            name=f"ceph-{name}",
            pid_file=self.home / "run" / f"{name}.pid",
            log=self.log_dir / f"{name}.log",
            marker=f"-c {self.conf}",
        )

    def osd_ids(self) -> list[int]:
        osd_root = self.home / "osd"
        return sorted(int(p.name) for p in osd_root.iterdir() if p.name.isdigit()) if osd_root.exists() else []

    def daemons(self) -> list[procs.Daemon]:
        """In stop order: rgw first, mon last."""
        names = ["client.rgw.gw", *(f"osd.{i}" for i in self.osd_ids()), "mgr.x", "mon.a"]
        return [self._daemon(name) for name in names]

    def cli(self, *args: str, stdin: str | None = None, timeout_s: float = 60) -> str:
        """Run the ``ceph`` CLI against this cluster."""
        argv = ["ceph", "-c", str(self.conf), *args]
        try:
            result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"`{' '.join(argv)}` timed out after {timeout_s:.0f} s; see {self.log_dir}") from exc
        if result.returncode != 0:
            raise StackError(f"`{' '.join(argv)}` failed: {result.stderr.strip()[-300:]}; see {self.log_dir}")
        return result.stdout

    def _ok(self, *args: str) -> bool:
        try:
            self.cli(*args, timeout_s=10)
        except StackError:
            return False
        return True

    # ----------------------------------------------------------------------------------------------------
    # up

    def up(self, *, access_key: str, secret_key: str) -> None:
        for tool in (
            "ceph-mon",
            "ceph-mgr",
            "ceph-osd",
            "radosgw",
            "ceph-authtool",
            "monmaptool",
            "radosgw-admin",
        ):
            if shutil.which(tool) is None:
                raise DependencyMissing(f"{tool} is not installed. Fix: run `make setup` (installs Ceph 16.2)")
        if self.marker_file.exists():
            self._restart()
        else:
            self._bootstrap()
        self._ensure_user(access_key, secret_key)

    def _bootstrap(self) -> None:
        if self.home.exists():
            procs.stop(self.daemons())
            shutil.rmtree(self.home)
        for sub in ("run", "log", "crash", "mon/a", "mgr/x", "rgw/gw", "osd"):
            (self.home / sub).mkdir(parents=True)
        fsid = str(uuid.uuid4())
        self.conf.write_text(self._ceph_conf(fsid), encoding="utf-8")
        self._make_mon(fsid)
        self._start("mon.a", ["ceph-mon", "-c", str(self.conf), "-i", "a"])
        procs.wait_until("ceph mon", lambda: self._ok("mon", "stat"), timeout_s=WAIT_S, log=self._daemon("mon.a").log)
        self.cli(
            "auth",
            "get-or-create",
            "mgr.x",
            "mon",
            "allow profile mgr",
            "osd",
            "allow *",
            "mds",
            "allow *",
            "-o",
            str(self.home / "mgr/x/keyring"),
        )
        self._start("mgr.x", ["ceph-mgr", "-c", str(self.conf), "-i", "x"])
        self._create_osds()
        self._start_osds(self.osd_ids())
        self.cli(
            "osd",
            "erasure-code-profile",
            "set",
            "tierlake-ec",
            f"k={self.ceph.ec_k}",
            f"m={self.ceph.ec_m}",
            "crush-failure-domain=osd",
        )
        # The data pool must exist before RGW's first bucket, or RGW creates a replicated one itself.
        self.cli("osd", "pool", "create", _DATA_POOL, "8", "8", "erasure", "tierlake-ec")
        self.cli("osd", "pool", "application", "enable", _DATA_POOL, "rgw")
        self.cli(
            "auth",
            "get-or-create",
            "client.rgw.gw",
            "mon",
            "allow rw",
            "osd",
            "allow rwx",
            "mgr",
            "allow rw",
            "-o",
            str(self.home / "rgw/gw/keyring"),
        )
        self._start_rgw()
        self.marker_file.write_text(json.dumps({"fsid": fsid, "created": time.time()}), encoding="utf-8")
        self.wait_health_ok()

    def _restart(self) -> None:
        if self._daemon("mon.a").running_pid() is None:
            self._start("mon.a", ["ceph-mon", "-c", str(self.conf), "-i", "a"])
        procs.wait_until("ceph mon", lambda: self._ok("mon", "stat"), timeout_s=WAIT_S, log=self._daemon("mon.a").log)
        if self._daemon("mgr.x").running_pid() is None:
            self._start("mgr.x", ["ceph-mgr", "-c", str(self.conf), "-i", "x"])
        down = [i for i in self.osd_ids() if self._daemon(f"osd.{i}").running_pid() is None]
        self._start_osds(down)
        if self._daemon("client.rgw.gw").running_pid() is None:
            self._refresh_rgw_frontends()
            self._start_rgw()

    def _rgw_frontends(self) -> str:
        """Beast on loopback with TCP_NODELAY. Without it a GET or LIST answer waits on Nagle's algorithm for the
        client's delayed ACK: ~48 ms per GET and LIST here, against ~5 and ~10 ms with it (measured with boto3);
        a Delta commit on s3a makes dozens of such calls."""
        return f"beast endpoint=127.0.0.1:{self.ceph.rgw_port} tcp_nodelay=1"

    def _refresh_rgw_frontends(self) -> None:
        """A cluster made by an older tierlake gets the current frontend line before RGW starts again."""
        lines = self.conf.read_text(encoding="utf-8").splitlines()
        fresh = [f"rgw_frontends = {self._rgw_frontends()}" if ln.startswith("rgw_frontends =") else ln for ln in lines]
        if fresh != lines:
            self.conf.write_text("\n".join(fresh) + "\n", encoding="utf-8")

    def _make_mon(self, fsid: str) -> None:
        """Keyrings, the monitor map and the monitor's store (the steps of a manual mon deployment)."""
        home = str(self.home)
        admin_caps = [arg for daemon in ("mon", "osd", "mds", "mgr") for arg in ("--cap", daemon, "allow *")]
        mon_key = ["--create-keyring", f"{home}/mon.keyring", "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"]
        monmap = ["--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{self.ceph.mon_port}]", f"{home}/monmap"]
        mkfs = [
            "-c",
            str(self.conf),
            "--mkfs",
            "-i",
            "a",
            "--monmap",
            f"{home}/monmap",
            "--keyring",
            f"{home}/mon.keyring",
        ]
        steps = [
            (["ceph-authtool", *mon_key], "mon keyring"),
            (
                [
                    "ceph-authtool",
                    "--create-keyring",
                    f"{home}/keyring",
                    "--gen-key",
                    "-n",
                    "client.admin",
                    *admin_caps,
                ],
                "admin keyring",
            ),
            (["ceph-authtool", f"{home}/mon.keyring", "--import-keyring", f"{home}/keyring"], "keyring import"),
            (["monmaptool", *monmap], "monmap"),
            (["ceph-mon", *mkfs], "ceph-mon --mkfs"),
        ]
        for argv, what in steps:
            procs.run(argv, log=self.setup_log, what=what)

    def _create_osds(self) -> None:
        """Register every OSD with its cephx key first (as ceph-volume does), then mkfs them in parallel."""
        mkfs: list[tuple[int, subprocess.Popen[bytes]]] = []
        for _ in range(self.ceph.osds):
            osd_uuid = str(uuid.uuid4())
            secret = procs.run(["ceph-authtool", "--gen-print-key"], log=self.setup_log, what="osd key").strip()
            osd_id = int(self.cli("osd", "new", osd_uuid, "-i", "-", stdin=json.dumps({"cephx_secret": secret})))
            (self.home / "osd" / str(osd_id)).mkdir(parents=True)
            procs.run(
                [
                    "ceph-authtool",
                    "--create-keyring",
                    str(self.home / f"osd/{osd_id}/keyring"),
                    "--name",
                    f"osd.{osd_id}",
                    "--add-key",
                    secret,
                ],
                log=self.setup_log,
                what="osd keyring",
            )
            with (self.log_dir / f"osd.{osd_id}.mkfs.log").open("wb") as out:
                mkfs.append(
                    (
                        osd_id,
                        subprocess.Popen(
                            [
                                "ceph-osd",
                                "-c",
                                str(self.conf),
                                "-i",
                                str(osd_id),
                                "--mkfs",
                                "--osd-uuid",
                                osd_uuid,
                            ],
                            stdout=out,
                            stderr=subprocess.STDOUT,
                        ),
                    )
                )
        for osd_id, process in mkfs:
            if process.wait(timeout=WAIT_S) != 0:
                raise StackError(f"ceph-osd mkfs failed for osd.{osd_id}; see {self.log_dir}/osd.{osd_id}.mkfs.log")

    def _start(self, name: str, argv: list[str]) -> None:
        """Ceph daemons fork into the background themselves and write their own pid files."""
        procs.run(argv, log=self.log_dir / f"{name}.start.log", what=f"start {name}", timeout_s=WAIT_S)

    def _start_osds(self, osd_ids: list[int]) -> None:
        # Each ceph-osd returns only after 2-4 s of init: start them all at once.
        starting = [
            (
                i,
                subprocess.Popen(
                    ["ceph-osd", "-c", str(self.conf), "-i", str(i)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                ),
            )
            for i in osd_ids
        ]
        for osd_id, process in starting:
            _, err = process.communicate(timeout=WAIT_S)
            if process.returncode != 0:
                raise StackError(
                    f"osd.{osd_id} failed to start: {err.decode()[-300:]}; see {self.log_dir}/osd.{osd_id}.log"
                )
        if osd_ids:
            procs.wait_until(
                f"{len(self.osd_ids())} ceph osds up",
                self._all_osds_up,
                timeout_s=WAIT_S,
                log=self.log_dir / f"osd.{osd_ids[0]}.log",
                interval_s=0.5,
            )

    def _all_osds_up(self) -> bool:
        try:
            stat = json.loads(self.cli("osd", "stat", "-f", "json", timeout_s=10))
        except (StackError, json.JSONDecodeError):
            return False
        return int(stat.get("num_up_osds", 0)) == len(self.osd_ids())

    def _start_rgw(self) -> None:
        self._start("client.rgw.gw", ["radosgw", "-c", str(self.conf), "-n", "client.rgw.gw"])
        procs.wait_until(
            f"RGW on 127.0.0.1:{self.ceph.rgw_port}",
            self.rgw_answers,
            timeout_s=WAIT_S,
            log=self._daemon("client.rgw.gw").log,
        )

    def rgw_answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ceph.rgw_port}/", timeout=2) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def create_buckets(self, buckets: tuple[str, ...], *, access_key: str, secret_key: str, region: str) -> list[str]:
        """Create the buckets RGW does not have yet (through its S3 API, as the tierlake user); returns those made."""
        import boto3  # noqa: PLC0415 - only when Ceph is ours
        from botocore.exceptions import ClientError  # noqa: PLC0415

        client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.ceph.rgw_port}",
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
        )
        created = []
        for bucket in buckets:
            try:
                client.create_bucket(Bucket=bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    continue
                raise StackError(f"creating bucket {bucket!r} on RGW failed: {exc}; see {self.setup_log}") from exc
            created.append(bucket)
        return created

    def _ensure_user(self, access_key: str, secret_key: str) -> None:
        admin = ["radosgw-admin", "-c", str(self.conf)]
        try:
            info = json.loads(
                procs.run(
                    [*admin, "user", "info", f"--uid={RGW_USER}"],
                    log=self.setup_log,
                    what="rgw user info",
                    secrets=[secret_key],
                )
            )
        except StackError:
            procs.run(
                [
                    *admin,
                    "user",
                    "create",
                    f"--uid={RGW_USER}",
                    f"--display-name={RGW_USER}",
                    f"--access-key={access_key}",
                    f"--secret-key={secret_key}",
                ],
                log=self.setup_log,
                what="rgw user create",
                secrets=[secret_key],
            )
            return
        if not any(k.get("access_key") == access_key for k in info.get("keys", [])):
            procs.run(
                [
                    *admin,
                    "key",
                    "create",
                    f"--uid={RGW_USER}",
                    "--key-type=s3",
                    f"--access-key={access_key}",
                    f"--secret-key={secret_key}",
                ],
                log=self.setup_log,
                what="rgw key create",
                secrets=[secret_key],
            )

    # ----------------------------------------------------------------------------------------------------
    # health, status, down

    def health(self) -> str:
        if self._daemon("mon.a").running_pid() is None:
            return "down"
        try:
            return self.cli("health", timeout_s=10).strip() or "unknown"
        except StackError:
            return "unreachable"

    def wait_health_ok(self, timeout_s: float = WAIT_S) -> None:
        procs.wait_until(
            "ceph HEALTH_OK",
            lambda: self.health() == "HEALTH_OK",
            timeout_s=timeout_s,
            log=self.log_dir / "cluster.log",
            interval_s=0.5,
        )

    def status(self) -> list[dict[str, object]]:
        health = self.health()
        rows: list[dict[str, object]] = []
        for daemon in self.daemons():
            pid = daemon.running_pid()
            port: int | None = None
            if daemon.name == "ceph-mon.a":
                port = self.ceph.mon_port
            elif daemon.name == "ceph-client.rgw.gw":
                port = self.ceph.rgw_port
            if pid is None:
                state = "down"
            elif daemon.name == "ceph-client.rgw.gw":
                state = "ok" if self.rgw_answers() else "not answering"
            else:
                state = "ok" if health.startswith("HEALTH_OK") else health.split(" ")[0].lower()
            rows.append({"service": daemon.name, "pid": pid, "port": port, "health": state, "log": str(daemon.log)})
        return rows

    def down(self) -> list[str]:
        return procs.stop(self.daemons(), timeout_s=15)

    def _ceph_conf(self, fsid: str) -> str:
        return CEPH_CONF.format(
            fsid=fsid,
            mon_port=self.ceph.mon_port,
            home=self.home,
            size=self.ceph.osd_size_gb * 1024**3,
            rgw_frontends=self._rgw_frontends(),
        )
