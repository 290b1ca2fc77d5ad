"""A throwaway Ceph RGW (Ceph's S3 gateway) for the tests, from Debian's packages.

One ``ceph-mon``, one ``ceph-osd`` keeping its data in memory (memstore) and one ``radosgw``
(beast frontend), all on 127.0.0.1 and free ports, every file under one folder, with their own
fsid and configuration file: nothing in /etc/ceph or /var/lib/ceph is read or written, and a
Ceph cluster already on the machine is never touched. No authentication between the daemons
(``auth_*_required = none``, messenger in ``crc`` mode, else radosgw cannot log in to the
monitor), pools of one replica, a storage class STANDARD_IA besides STANDARD.
It starts in 2 to 4 s (most of it radosgw creating its pools; the monitor commits each new OSD
map at once here, not after its default 1 s); every daemon is stopped when the block exits,
even when the start failed.

Objects may use SSE-C and SSE-KMS over plain http; RGW's "testing" KMS backend holds the keys
the tests name (RGW 16.2 cannot copy an SSE-KMS object, though: NotImplemented).

    with ceph_rgw(tmp_path) as s3:   # a local.LocalS3, like local.seaweedfs()
        boto3.client("s3", endpoint_url=s3.endpoint_url, ...)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

from .local import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, LocalS3, _die_with_parent, _free_port, _wait_for_s3

PACKAGES = ("ceph-mon", "ceph-osd", "radosgw")
INSTALL_COMMAND = "apt-get install -y --no-install-recommends " + " ".join(PACKAGES)
# A class besides STANDARD, so a copy's storage class is tested here too. Not GLACIER: RGW has
# no archive tier, a class of that name would hold objects readable at once.
STORAGE_CLASSES = ("STANDARD_IA",)
BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")

# Keys of the "testing" KMS backend (AES-256, base64), so SSE-KMS objects can be written:
# the tests' tenant key and the bucket default's. Throwaway values for a throwaway cluster.
_KMS_KEYS = {
    "arn:aws:kms:us-east-1:123456789012:key/tenant-key": "UeKmqGbySyuzYvrCHC6jhSt2GBbLBT7aUzbvbcmjAQg=",
    "default-key": "YJ9D/mRdLBNqyWqhgfWk4wF2+D5XxvG0Yj5dtnNq1U8=",
}


def missing_binaries() -> list[str]:
    """The Ceph programs this needs that are not on PATH (empty: ready to run)."""
    return [name for name in BINARIES if shutil.which(name) is None]


def installed() -> bool:
    return not missing_binaries()


def _config(root: Path, fsid: str, mon_port: int, rgw_port: int) -> str:
    kms_keys = " ".join(f"{name}={key}" for name, key in _KMS_KEYS.items())
    return f"""\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
ms cluster mode = crc
ms service mode = crc
ms client mode = crc
ms mon cluster mode = crc
ms mon service mode = crc
ms mon client mode = crc
run dir = {root}/run
admin socket = {root}/run/$name.asok
pid file = {root}/run/$name.pid
log file = {root}/log/$name.log
crash dir = {root}/crash
keyring = {root}/keyring
log to stderr = false
err to stderr = true
mon cluster log file = {root}/log/cluster.log
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
osd crush chooseleaf type = 0

[mon]
mon data = {root}/mon.$id
# every pool radosgw creates is a new OSD map: propose them at once, not once a second
paxos propose interval = 0.05
paxos min wait = 0.01
# the folder lives in a temporary directory: a nearly full disk is not this cluster's concern
mon data avail crit = 0
mon data avail warn = 0

[osd]
osd data = {root}/osd.$id
osd objectstore = memstore
memstore device bytes = {2 << 30}
# memstore keeps every PG's log in memory too: a short one (nothing to recover from on one OSD)
# holds the OSD near 100 MB through a test session instead of growing past 1 GB
osd min pg log entries = 10
osd max pg log entries = 50
osd target pg log entries per osd = 1000
osd pg log dups tracked = 100
osd pg log trim min = 10
osd op num shards = 2
osd op num threads per shard = 2
# the monitor stops with it: waiting for it to note the OSD down would cost 5 s
osd fast shutdown notify mon = false

[client.rgw.ponos]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {root}/rgw
rgw thread pool size = 128
rgw dynamic resharding = false
# deleted objects' tails are freed soon, not after two hours
rgw gc obj min wait = 10
rgw gc processor period = 10
# SSE-C and SSE-KMS over plain http (RGW refuses them without TLS by default)
rgw crypt require ssl = false
rgw crypt s3 kms backend = testing
rgw crypt s3 kms encryption keys = {kms_keys}
"""


@contextlib.contextmanager
def ceph_rgw(workdir: str | os.PathLike, timeout: float = 90.0) -> Iterator[LocalS3]:
    """Run a one-OSD Ceph cluster with an S3 gateway under ``workdir`` until the block exits."""
    missing = missing_binaries()
    if missing:
        raise RuntimeError(f"Ceph RGW needs {', '.join(missing)}: as root, apt-get update && {INSTALL_COMMAND}")
    root = Path(workdir).absolute()
    for folder in ("run", "log", "crash", "mon.a", "osd.0", "rgw"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    conf = root / "ceph.conf"
    fsid, mon_port, rgw_port = str(uuid.uuid4()), _free_port(), _free_port()
    conf.write_text(_config(root, fsid, mon_port, rgw_port))
    daemons: list[subprocess.Popen] = []
    # CEPH_ARGS, CEPH_CONF... of the caller would point the tools elsewhere.
    env = {name: value for name, value in os.environ.items() if not name.startswith("CEPH_")}

    def run(*args: str) -> str:
        """A one-shot command (mkfs, monmap, admin); its output, or an error carrying it."""
        done = subprocess.run([args[0], "-c", str(conf), *args[1:]], capture_output=True, text=True,
                              timeout=timeout, env=env)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"[-3000:])
        return done.stdout

    def start(name: str, *args: str) -> subprocess.Popen:
        with open(root / "log" / f"{name}.out", "ab") as out:
            process = subprocess.Popen([args[0], "-c", str(conf), "-f", *args[1:]], stdout=out,
                                       stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                       preexec_fn=_die_with_parent)
        daemons.append(process)
        return process

    try:
        # The monitor: a map naming it, its store, then the daemon.
        run("monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{mon_port}]",
            str(root / "monmap"))
        run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(root / "monmap"))
        start("mon.a", "ceph-mon", "-i", "a")
        # The OSD: registered with the monitor (the first id is 0), formatted, started.
        osd_uuid = str(uuid.uuid4())
        osd_id = run("ceph", "--connect-timeout", str(int(timeout)), "osd", "new", osd_uuid).strip()
        run("ceph-osd", "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        start(f"osd.{osd_id}", "ceph-osd", "-i", osd_id)
        # The S3 user (radosgw-admin waits for the OSD, creates the pools and the default zone).
        run("radosgw-admin", "user", "create", "--uid=ponos", "--display-name=ponos",
            f"--access-key={LOCAL_ACCESS_KEY}", f"--secret={LOCAL_SECRET_KEY}")
        # Storage classes besides STANDARD, as a production RGW may have them (in the one data
        # pool here): RGW refuses any x-amz-storage-class its placement target does not list.
        for storage_class in STORAGE_CLASSES:
            run("radosgw-admin", "zonegroup", "placement", "add", "--rgw-zonegroup=default",
                "--placement-id=default-placement", f"--storage-class={storage_class}")
            run("radosgw-admin", "zone", "placement", "add", "--rgw-zone=default",
                "--placement-id=default-placement", f"--storage-class={storage_class}",
                "--data-pool=default.rgw.buckets.data")
        rgw = start("rgw", "radosgw", "-n", "client.rgw.ponos")
        endpoint = f"http://127.0.0.1:{rgw_port}"
        _wait_for_s3(endpoint, rgw, root / "log" / "rgw.out", timeout, name="Ceph RGW")
        yield LocalS3(endpoint, LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, rgw)
    finally:
        _stop(daemons)


def _stop(daemons: list[subprocess.Popen], grace: float = 10.0) -> None:
    """Stop the gateway, then the OSD, then the monitor, each after the one before it (radosgw
    lingers when the cluster vanishes under it): SIGTERM, then SIGKILL after the grace."""
    for process in reversed(daemons):
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        process.kill()
        process.wait()
