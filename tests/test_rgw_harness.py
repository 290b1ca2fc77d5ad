"""The Ceph RGW harness itself (ponos_dev/rgw.py): it answers S3, and leaves no daemon behind,
whether the block ends or the start fails."""

from __future__ import annotations

import os

import boto3
import pytest

from ponos_dev import rgw
from tests.conftest import _s3_implementations

needs_rgw = pytest.mark.skipif(not rgw.installed() or "rgw" not in _s3_implementations(),
                               reason="Ceph RGW not installed or not chosen (PONOS_TEST_S3)")


def daemons_of(workdir) -> dict[str, int]:
    """The monitor's and the OSD's pids, from their pid files."""
    return {pid_file.stem: int(pid_file.read_text()) for pid_file in (workdir / "run").glob("*.pid")}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_missing_ceph_is_one_error_naming_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(rgw.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install -y --no-install-recommends ceph-mon ceph-osd radosgw"):
        with rgw.ceph_rgw(tmp_path):
            pass


@needs_rgw
def test_a_cluster_answers_s3_then_stops_every_daemon(tmp_path):
    with rgw.ceph_rgw(tmp_path) as s3:
        client = boto3.client("s3", endpoint_url=s3.endpoint_url, aws_access_key_id=s3.access_key,
                              aws_secret_access_key=s3.secret_key, region_name="us-east-1")
        client.create_bucket(Bucket="harness")
        client.put_object(Bucket="harness", Key="a/b", Body=b"bytes")
        assert client.get_object(Bucket="harness", Key="a/b")["Body"].read() == b"bytes"
        client.put_object(Bucket="harness", Key="ia", Body=b"cool", StorageClass="STANDARD_IA")
        assert client.head_object(Bucket="harness", Key="ia")["StorageClass"] == "STANDARD_IA"
        daemons = {**daemons_of(tmp_path), "radosgw": s3.process.pid}  # radosgw -f writes no pid file
        assert set(daemons) == {"mon.a", "osd.0", "radosgw"}
        assert all(alive(pid) for pid in daemons.values())
    assert not any(alive(pid) for pid in daemons.values())


@needs_rgw
def test_a_failed_start_stops_the_daemons_already_running(tmp_path, monkeypatch):
    seen = {}

    def gateway_never_answers(*args, **kwargs):
        seen.update(daemons_of(tmp_path))
        raise RuntimeError("no answer")

    monkeypatch.setattr(rgw, "_wait_for_s3", gateway_never_answers)
    with pytest.raises(RuntimeError, match="no answer"):
        with rgw.ceph_rgw(tmp_path):
            pass
    assert "mon.a" in seen and "osd.0" in seen
    assert not any(alive(pid) for pid in seen.values())
