"""Nothing is ever lost, whatever the server enforces: two legacy keys for one new key, folder
markers, an object the server refuses to copy. On every test S3 server; moto and Ceph RGW
ignore ``If-None-Match`` on CopyObject, so there the rename's own claims are what keeps the
promise (SeaweedFS refuses the second copy itself)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.helpers import list_keys
from tests.fixtures.rename import cli_command, rename, tasks_of

LOW_WORKFLOW = "00000000-0000-4000-8000-00000000a001"  # first in every listing
HIGH_WORKFLOW = "ffffffff-ffff-4fff-bfff-ffffffffa002"  # last: many pages, and another shard, later

# The twins' races run on SeaweedFS (it refuses the second copy itself) and moto (it ignores
# If-None-Match: the rename's claims keep the promise); RGW ignores it as moto does, so there
# they would only repeat moto's path on 1,800 objects. Folder markers and a refused copy are
# the server's own answers: every server.


def contents(s3, bucket: str) -> dict[str, bytes]:
    return {key: s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in list_keys(s3, bucket)}


def plant_twins(data) -> dict:
    """Two legacy keys for one new key, with other bytes of the same size (and one pair the same)."""
    s3 = data["ctx"].s3
    (_, task, _), (workflow, log_task, run) = tasks_of(data["dsn"], unfinished=False)[:2]
    planted = {
        "artifacts": {f"{LOW_WORKFLOW}/{task}/r.json": b'{"from": "low  workflow"}',
                      f"{HIGH_WORKFLOW}/{task}/r.json": b'{"from": "high workflow"}',
                      f"{LOW_WORKFLOW}/{task}/same.bin": b"identical twins",
                      f"{HIGH_WORKFLOW}/{task}/same.bin": b"identical twins"},
        "logs": {f"{workflow}/run_{run}/{log_task}.log": b"log of the run it had",
                 f"{workflow}/run_{run + 7}/{log_task}.log": b"log of another run!!"},
    }
    for kind, objects in planted.items():
        for key, body in objects.items():
            s3.put_object(Bucket=data[kind], Key=key, Body=body)
    return {"task": task, "log_task": log_task, **planted}


def assert_nothing_lost(data, planted) -> None:
    """Every planted content is still somewhere; the differing twins are conflicts, both kept."""
    s3 = data["ctx"].s3
    task, log_task = planted["task"], planted["log_task"]
    artifacts, logs = contents(s3, data["artifacts"]), contents(s3, data["logs"])
    for kind, now in (("artifacts", artifacts), ("logs", logs)):
        assert set(planted[kind].values()) <= set(now.values()), kind
    # One content at the new key, the other still at its own legacy key.
    r_json = [artifacts.get(key) for key in planted["artifacts"] if key.endswith("/r.json")]
    assert sorted([artifacts[f"{task}/r.json"]] + [b for b in r_json if b]) == sorted(
        body for key, body in planted["artifacts"].items() if key.endswith("/r.json"))
    assert [k for k in artifacts if k.endswith(f"{task}/same.bin")] == [f"{task}/same.bin"]
    assert logs[f"{log_task}.log"] in planted["logs"].values()
    assert len([k for k in logs if k.endswith(f"{log_task}.log")]) == 2


def conflict_keys(report) -> set[str]:
    return {item["key"] for item in report["items"].get("conflicts", [])}


@pytest.mark.slow
@pytest.mark.s3_servers("seaweedfs", "moto")
def test_two_legacy_keys_for_one_new_key_are_a_conflict_both_kept(bigger, s3_env, tmp_path):
    planted = plant_twins(bigger)
    args = ["--artifacts-bucket", bigger["artifacts"], "--logs-bucket", bigger["logs"], "--dsn", bigger["dsn"]]
    code, report, err = rename(s3_env, *args, tmp_path=tmp_path)
    assert code == 1, err
    assert_nothing_lost(bigger, planted)
    assert len(conflict_keys(report)) == 2  # one of the artifact twins, one of the logs
    assert report["counts"]["already_moved"] >= 1  # the identical twin finished its move
    before = {kind: list_keys(bigger["ctx"].s3, bigger[kind]) for kind in ("artifacts", "logs")}

    code, again, _ = rename(s3_env, *args, tmp_path=tmp_path)  # the second run changes nothing
    assert code == 1 and conflict_keys(again) == conflict_keys(report)
    assert {kind: list_keys(bigger["ctx"].s3, bigger[kind]) for kind in ("artifacts", "logs")} == before


@pytest.mark.slow
@pytest.mark.s3_servers("seaweedfs")
def test_a_server_made_to_ignore_if_none_match_loses_nothing_either(bigger, s3_env, tmp_path, fault_proxy):
    """SeaweedFS refuses the second copy by itself; behind a proxy that drops the header (and
    signs the request again) it overwrites like moto: the rename's own claims keep the promise."""
    fault_proxy.add("strip_header", operations=("CopyObject", "CompleteMultipartUpload"), header="If-None-Match")
    planted = plant_twins(bigger)
    args = ["--artifacts-bucket", bigger["artifacts"], "--logs-bucket", bigger["logs"], "--dsn", bigger["dsn"],
            "--endpoint-url", fault_proxy.endpoint]
    code, report, err = rename(s3_env, *args, tmp_path=tmp_path)
    assert fault_proxy.fired("strip_header") > 0
    assert not report["capabilities"][bigger["artifacts"]]["conditional_copy"]
    assert code == 1, err
    assert_nothing_lost(bigger, planted)
    assert len(conflict_keys(report)) == 2


@pytest.mark.slow
@pytest.mark.s3_servers("seaweedfs", "moto")
def test_two_legacy_keys_for_one_new_key_in_two_shards_at_once(bigger, s3_env, tmp_path):
    planted = plant_twins(bigger)
    count = 3  # the low workflow falls in shard 0, the high one in shard 2
    procs = [subprocess.Popen(cli_command("s3-rename", "--artifacts-bucket", bigger["artifacts"], "--logs-bucket",
                                   bigger["logs"], "--dsn", bigger["dsn"], "--shard", f"{i}/{count}",
                                   "--report", str(tmp_path / f"shard{i}.json"), "--workers", "8"),
                              env={**os.environ, **s3_env}, stderr=subprocess.PIPE, text=True)
             for i in range(count)]
    codes = []
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, 1), err
        codes.append(proc.returncode)
    assert 1 in codes  # a conflict is reported by a shard
    reports = [json.loads((tmp_path / f"shard{i}.json").read_text()) for i in range(count)]
    # Shards racing for one key keep both (a conflict) until a run finds the copy in place.
    assert sum(len(conflict_keys(r)) for r in reports) >= 2
    s3 = bigger["ctx"].s3
    for kind in ("artifacts", "logs"):
        assert set(planted[kind].values()) <= set(contents(s3, bigger[kind]).values()), kind

    code, report, err = rename(s3_env, "--artifacts-bucket", bigger["artifacts"], "--logs-bucket", bigger["logs"],
                               "--dsn", bigger["dsn"], tmp_path=tmp_path)
    assert code == 1, err
    assert_nothing_lost(bigger, planted)
    assert len(conflict_keys(report)) == 2


@pytest.mark.slow
def test_folder_markers_move_like_any_key(seeded, s3_env, tmp_path, s3_implementation):
    s3 = seeded["ctx"].s3
    workflow, task, _ = tasks_of(seeded["dsn"], unfinished=False)[3]
    markers = {f"{workflow}/{task}/dir/": b"", f"{workflow}/{task}/notes/": b"a key ending in / with bytes",
               f"{workflow}/{task}/a//": b"", f"{workflow}/{task}/dir/inside.txt": b"inside"}
    for key, body in markers.items():
        s3.put_object(Bucket=seeded["artifacts"], Key=key, Body=body)
    before = list_keys(s3, seeded["artifacts"])
    planted = [key for key in before if key.startswith(f"{workflow}/{task}/")]  # as this server keeps them
    assert any(key.endswith("/") for key in planted)
    args = ["--artifacts-bucket", seeded["artifacts"], "--logs-bucket", seeded["logs"], "--dsn", seeded["dsn"]]

    code, report, err = rename(s3_env, *args, tmp_path=tmp_path)
    assert code == 0, err
    after = list_keys(s3, seeded["artifacts"])
    for key in planted:
        new_key = key.split("/", 1)[1]
        assert key not in after and new_key in after, (key, {k: v for k, v in report["counts"].items()},
                                                       report["items"].get("unrecognized"))
        assert after[new_key]["size"] == before[key]["size"]
        if before[key]["size"] and key in markers:
            assert s3.get_object(Bucket=seeded["artifacts"], Key=new_key)["Body"].read() == markers[key]
    assert not [key for key in report["items"].get("unrecognized", []) if task in key]

    code, again, _ = rename(s3_env, *args, tmp_path=tmp_path)
    assert code == 0 and again["counts"].get("moved", 0) == 0
    assert list_keys(s3, seeded["artifacts"]) == after


@pytest.mark.slow
def test_an_object_the_server_refuses_to_copy_is_that_keys_failure_not_an_outage(bigger, s3_env, tmp_path,
                                                                                 s3_implementation):
    """An SSE-C object cannot be copied without its key: one failed key, reported with how to
    move it by hand; everything else moves; no retrying until --retry-deadline."""
    s3 = bigger["ctx"].s3
    workflow, task, _ = tasks_of(bigger["dsn"], unfinished=False)[4]
    secret = f"{workflow}/{task}/secret.bin"
    try:  # botocore encodes the key and adds its MD5
        s3.put_object(Bucket=bigger["artifacts"], Key=secret, Body=b"sealed", SSECustomerAlgorithm="AES256",
                      SSECustomerKey=b"k" * 32)
    except s3.exceptions.ClientError as exc:
        pytest.skip(f"{s3_implementation} does not store SSE-C objects here ({exc})")
    try:
        s3.copy_object(Bucket=bigger["artifacts"], Key="probe-ssec-copy", CopySource={
            "Bucket": bigger["artifacts"], "Key": secret})
        pytest.skip(f"{s3_implementation} copies an SSE-C object without its key: nothing to refuse")
    except s3.exceptions.ClientError:
        pass
    args = ["--artifacts-bucket", bigger["artifacts"], "--logs-bucket", bigger["logs"], "--dsn", bigger["dsn"],
            "--retry-deadline", "60s"]

    code, report, err = rename(s3_env, *args, tmp_path=tmp_path)
    assert code == 1, err
    failed = report["items"]["failed"]
    assert [item["key"] for item in failed] == [secret]
    assert "SSE-C" in failed[0]["reason"] and "aws s3 cp" in failed[0]["reason"]
    assert report["counts"]["moved"] > 100
    assert secret in list_keys(s3, bigger["artifacts"])  # never retried as an outage: exit 1, not 75
