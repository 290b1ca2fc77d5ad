"""s3-rename against S3 as production has it: keys XML cannot carry, writers racing the run,
ETags that are not MD5s, versioning, storage classes, encryption, throttling, outages,
refusals, checkpoints of other runs. On every test S3 server (SeaweedFS and moto), faults
injected by tests/faultproxy.py in front of the real server.
"""

from __future__ import annotations

import json
import os
import threading

import boto3
import psycopg
import pytest
from botocore.config import Config

from tests.helpers import list_keys
from tests.fixtures.rename import assert_moved, expected_moves, rename, state_of, tasks_of

SENTINEL = b"written by the new release after the run began"


def direct_client(s3_env):
    return boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))


# --- keys XML cannot carry ----------------------------------------------------------------

@pytest.mark.slow
def test_a_key_xml_cannot_carry_is_moved_and_strands_nothing(seeded, run):
    s3 = seeded["ctx"].s3
    workflow, task, _ = tasks_of(seeded["dsn"], unfinished=False)[0]
    bell = f"{workflow}/{task}/bell\x07and\rcarriage.txt"
    s3.put_object(Bucket=seeded["artifacts"], Key=bell, Body=b"ring")
    artifacts_before, logs_before = state_of(seeded)
    moves = expected_moves(seeded["dsn"], artifacts_before, logs_before)
    moves["artifacts"][bell] = bell.split("/", 1)[1]

    code, report, stderr = run()

    assert code == 0, (report, stderr)
    assert_moved(artifacts_before, list_keys(s3, seeded["artifacts"]), moves["artifacts"])
    assert_moved(logs_before, list_keys(s3, seeded["logs"]), moves["logs"])
    assert s3.get_object(Bucket=seeded["artifacts"], Key=f"{task}/bell\x07and\rcarriage.txt")["Body"].read() == b"ring"
    again_code, again, _ = run()
    assert again_code == 0 and again["counts"].get("moved", 0) == 0


# --- never overwrite ------------------------------------------------------------------------

@pytest.mark.slow
def test_a_key_written_at_the_new_key_after_the_run_began_is_never_overwritten(seeded, run, fault_proxy, s3_env):
    """A task still running when the new release is deployed writes <task>.log during the rename."""
    workflow, task, task_run = tasks_of(seeded["dsn"], unfinished=False)[0]
    with psycopg.connect(seeded["dsn"], autocommit=True) as conn:
        conn.execute("UPDATE ponos_task SET state = 'running' WHERE id = %s", (task,))
    legacy_log = f"{workflow}/run_{task_run}/{task}.log"
    s3 = seeded["ctx"].s3
    s3.put_object(Bucket=seeded["logs"], Key=legacy_log, Body=b"legacy log")
    direct = direct_client(s3_env)
    # The new release's write lands just before the rename's first request on that key: a
    # HEAD on servers without conditional copies, the copy itself on the others.
    fault_proxy.add("hook", operations=("HeadObject", "CopyObject"), key=f"/{task}.log", times=1,
                    action=lambda: direct.put_object(Bucket=seeded["logs"], Key=f"{task}.log", Body=SENTINEL))

    code, report, _ = run("--endpoint-url", fault_proxy.endpoint)

    assert fault_proxy.fired("hook") == 1
    assert code == 1
    conflicts = {c["key"]: c for c in report["items"]["conflicts"]}
    assert legacy_log in conflicts and "other content" in conflicts[legacy_log]["reason"]
    assert s3.get_object(Bucket=seeded["logs"], Key=f"{task}.log")["Body"].read() == SENTINEL
    assert s3.get_object(Bucket=seeded["logs"], Key=legacy_log)["Body"].read() == b"legacy log"  # both kept
    assert report["counts"].get("failed", 0) == 0


def test_a_destination_whose_objects_all_sit_deeper_is_still_seen(seeded, run):
    """No promise rests on a delimiter listing: a <task>/ folder with only deeper objects counts."""
    s3 = seeded["ctx"].s3
    workflow, task, _ = tasks_of(seeded["dsn"], unfinished=False)[0]
    legacy = f"{workflow}/{task}/deep/nested/only/file.bin"
    s3.put_object(Bucket=seeded["artifacts"], Key=legacy, Body=b"legacy bytes")
    s3.put_object(Bucket=seeded["artifacts"], Key=f"{task}/deep/nested/only/file.bin", Body=b"other bytes!")

    code, report, _ = run()

    assert code == 1
    assert [c["key"] for c in report["items"]["conflicts"]] == [legacy]
    assert s3.get_object(Bucket=seeded["artifacts"], Key=f"{task}/deep/nested/only/file.bin")["Body"].read() \
        == b"other bytes!"


# --- same content, decided by the server's proof or by reading, never guessed ----------------

def _multipart_put(s3, bucket, key, body, part=5 * 1024 ** 2):
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(body), part), 1):
        answer = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=body[start:start + part])
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})


@pytest.mark.parametrize("destination_bytes, read_limit, outcome", [
    ("same", "64MiB", "already_moved"),   # multipart ETag against an MD5: read both, equal: finish the move
    ("same", "1MiB", "conflicts"),        # too big to read, nothing else proves it: never a delete
    ("different", "64MiB", "conflicts"),  # same size, other bytes
], ids=["same-read", "same-too-big", "different"])
@pytest.mark.slow
def test_a_half_done_move_is_finished_only_when_the_content_is_proven_the_same(seeded, run, destination_bytes,
                                                                              read_limit, outcome):
    s3 = seeded["ctx"].s3
    workflow, task, _ = tasks_of(seeded["dsn"], unfinished=False)[0]
    body = os.urandom(6 * 1024 ** 2 + 17)
    source, destination = f"{workflow}/{task}/big/weights.bin", f"{task}/big/weights.bin"
    s3.put_object(Bucket=seeded["artifacts"], Key=source, Body=body)
    other = body if destination_bytes == "same" else body[:-1] + bytes([body[-1] ^ 1])
    _multipart_put(s3, seeded["artifacts"], destination, other)
    assert "-" in s3.head_object(Bucket=seeded["artifacts"], Key=destination)["ETag"]  # not an MD5

    code, report, _ = run("--compare-read-limit", read_limit)

    keys_after = list_keys(s3, seeded["artifacts"])
    assert s3.get_object(Bucket=seeded["artifacts"], Key=destination)["Body"].read() == other  # never overwritten
    if outcome == "already_moved":
        assert code == 0 and report["counts"]["already_moved"] == 1
        assert source not in keys_after
    else:
        assert code == 1 and [c["key"] for c in report["items"]["conflicts"]] == [source]
        assert source in keys_after  # never deleted on a guess


# --- a source rewritten between its copy and its delete ---------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("versioned", [False, True], ids=["unversioned", "versioned"])
def test_a_source_rewritten_between_copy_and_delete_is_never_lost(legacy_dsn, context_factory, make_bucket, s3_env,
                                                                   tmp_path, fault_proxy, versioned):
    from ponos_dev import seed
    ctx = context_factory(legacy_dsn)
    artifacts, logs = make_bucket("artifacts"), make_bucket("logs")
    if versioned:
        ctx.s3.put_bucket_versioning(Bucket=artifacts, VersioningConfiguration={"Status": "Enabled"})
    with psycopg.connect(legacy_dsn, autocommit=True) as conn:
        seed.seed_database(conn, seed.SeedSpec(processes=6, seed=5))
        seed.seed_s3(ctx, conn, artifacts_bucket=artifacts, logs_bucket=logs, seed=5)
    workflow, task, _ = tasks_of(legacy_dsn, unfinished=False)[0]
    source = f"{workflow}/{task}/rewritten.txt"
    ctx.s3.put_object(Bucket=artifacts, Key=source, Body=b"first version")
    direct = direct_client(s3_env)
    # The legacy release rewrites the object once it has been copied, before its delete.
    rewrite = threading.Event()

    def rewrite_source():  # on the first delete after the copy is there (the canaries' deletes come first)
        if rewrite.is_set():
            return
        try:
            direct.head_object(Bucket=artifacts, Key=f"{task}/rewritten.txt")
        except direct.exceptions.ClientError:
            return
        rewrite.set()
        direct.put_object(Bucket=artifacts, Key=source, Body=b"second version, rewritten")
    # Where deletes cannot be conditional (Ceph RGW), the source is looked at (HEAD) right
    # before its delete: the rewrite lands just before that look.
    fault_proxy.add("hook", operations=("DeleteObjects", "DeleteObject"), bucket=artifacts, action=rewrite_source)
    fault_proxy.add("hook", operations=("HeadObject",), bucket=artifacts, key=source, action=rewrite_source)

    code, report, _ = rename(s3_env, "--artifacts-bucket", artifacts, "--dsn", legacy_dsn,
                             "--endpoint-url", fault_proxy.endpoint, tmp_path=tmp_path)

    assert rewrite.is_set()
    new = ctx.s3.get_object(Bucket=artifacts, Key=f"{task}/rewritten.txt")["Body"].read()
    assert new == b"first version"  # the copy holds what was copied
    assert ctx.s3.get_object(Bucket=artifacts, Key=source)["Body"].read() == b"second version, rewritten"
    if not versioned:
        assert code == 1 and source in [c["key"] for c in report["items"]["conflicts"]]
    # Whatever the server, a second run sees two contents for one key: a conflict, both kept.
    code, again, _ = rename(s3_env, "--artifacts-bucket", artifacts, "--dsn", legacy_dsn, tmp_path=tmp_path)
    assert code == 1 and source in [c["key"] for c in again["items"]["conflicts"]]
    if versioned:  # exactly the copied version went: the rewrite is the current one, nothing hidden
        versions = ctx.s3.list_object_versions(Bucket=artifacts, Prefix=source)
        assert [v["IsLatest"] for v in versions.get("Versions", [])] == [True]
        assert not versions.get("DeleteMarkers")


# --- storage classes, tags, headers, encryption ---------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("size, threshold", [(2048, "1GiB"), (6 * 1024 ** 2 + 5, "5MiB")], ids=["copy", "multipart"])
def test_storage_class_tags_headers_and_metadata_survive(seeded, run, size, threshold):
    s3 = seeded["ctx"].s3
    workflow, task, _ = tasks_of(seeded["dsn"], unfinished=False)[0]
    source, destination = f"{workflow}/{task}/kept/everything.bin", f"{task}/kept/everything.bin"
    body = os.urandom(size)
    attributes = dict(ContentType="application/x-weights", CacheControl="max-age=60", ContentDisposition="attachment",
                      ContentEncoding="identity", ContentLanguage="fr", Metadata={"origin": "test", "n": "1"},
                      Tagging="project=arkindex&tier=cold")
    storage_class = "STANDARD_IA"
    try:
        s3.put_object(Bucket=seeded["artifacts"], Key=source, Body=body, StorageClass=storage_class, **attributes)
    except s3.exceptions.ClientError:  # Ceph RGW without placement targets has STANDARD only
        storage_class = None
        s3.put_object(Bucket=seeded["artifacts"], Key=source, Body=body, **attributes)
    before = s3.head_object(Bucket=seeded["artifacts"], Key=source)

    code, report, _ = run("--multipart-threshold", threshold, "--part-size", "5MiB")

    assert code == 0, report
    after = s3.head_object(Bucket=seeded["artifacts"], Key=destination)
    for field in ("ContentType", "CacheControl", "ContentDisposition", "ContentEncoding", "ContentLanguage",
                  "Metadata", "ContentLength"):
        assert after.get(field) == before.get(field), field
    assert after.get("StorageClass") == storage_class  # None: STANDARD, as the source
    tags = s3.get_object_tagging(Bucket=seeded["artifacts"], Key=destination)["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("project", "arkindex"), ("tier", "cold")]
    assert s3.get_object(Bucket=seeded["artifacts"], Key=destination)["Body"].read() == body


def test_archived_objects_are_counted_and_listed_not_failed(seeded, run):
    s3 = seeded["ctx"].s3
    workflow, task, _ = tasks_of(seeded["dsn"], unfinished=False)[0]
    source = f"{workflow}/{task}/cold/archive.tar"
    try:
        s3.put_object(Bucket=seeded["artifacts"], Key=source, Body=b"frozen", StorageClass="GLACIER")
    except s3.exceptions.ClientError as exc:
        pytest.skip(f"this server has no GLACIER class, so nothing is ever archived on it ({exc})")

    code, report, stderr = run()

    assert code == 1  # something in scope is left: said, not hidden
    assert report["counts"]["archived"] == 1 and report["counts"].get("failed", 0) == 0
    assert report["items"]["archived"][0]["key"] == source
    assert "restore" in report["items"]["archived"][0]["reason"]
    assert source in list_keys(s3, seeded["artifacts"])
    assert report["counts"]["moved"] > 0  # the rest moved


def test_a_source_keeps_its_own_kms_key(seeded, run, s3_implementation):
    s3 = seeded["ctx"].s3
    if s3_implementation == "seaweedfs":
        pytest.skip("this SeaweedFS has no KMS configured: SSE-KMS objects cannot be written to it")
    try:
        s3.put_bucket_encryption(Bucket=seeded["artifacts"], ServerSideEncryptionConfiguration={"Rules": [
            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "default-key"}}]})
    except s3.exceptions.ClientError as exc:  # Ceph RGW 16.2: no bucket encryption, no KMS here
        pytest.skip(f"this server takes no KMS default encryption ({exc})")
    workflow, task, _ = tasks_of(seeded["dsn"], unfinished=False)[0]
    source, destination = f"{workflow}/{task}/secret.bin", f"{task}/secret.bin"
    s3.put_object(Bucket=seeded["artifacts"], Key=source, Body=b"classified", ServerSideEncryption="aws:kms",
                  SSEKMSKeyId="arn:aws:kms:us-east-1:123456789012:key/tenant-key")

    code, report, _ = run()

    assert code == 0, report
    head = s3.head_object(Bucket=seeded["artifacts"], Key=destination)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith("tenant-key")


# --- throttling, outages, refusals -------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.s3_servers("seaweedfs")
def test_sustained_slowdown_slows_the_run_and_never_fails_it(seeded, run, fault_proxy):
    artifacts_before, logs_before = state_of(seeded)
    moves = expected_moves(seeded["dsn"], artifacts_before, logs_before)
    fault_proxy.add("slowdown", probability=0.25, operations=("CopyObject", "DeleteObjects", "HeadObject"), after=5)

    code, report, stderr = run("--endpoint-url", fault_proxy.endpoint, "--workers", "16")

    assert fault_proxy.fired("slowdown") > 10
    assert code == 0, (report, stderr)
    assert report["counts"].get("failed", 0) == 0
    assert report["s3"]["s3_throttles"] > 0 and report["s3"]["s3_window_cuts"] > 0
    assert report["s3"]["s3_smallest_window"] < 16
    s3 = seeded["ctx"].s3
    assert_moved(artifacts_before, list_keys(s3, seeded["artifacts"]), moves["artifacts"])
    assert_moved(logs_before, list_keys(s3, seeded["logs"]), moves["logs"])


@pytest.mark.s3_servers("seaweedfs")
@pytest.mark.parametrize("command", ["s3-rename", "verify"])
def test_a_listing_that_keeps_failing_is_one_line_exit_75_and_a_filled_report(seeded, s3_env, tmp_path, fault_proxy,
                                                                              command):
    from click.testing import CliRunner

    from migrate.cli import main
    fault_proxy.add("internal", operations=("ListObjectsV2",), bucket=seeded["logs"])
    report_file = tmp_path / "report.json"
    result = CliRunner().invoke(main, [command, "--endpoint-url", fault_proxy.endpoint, "--artifacts-bucket",
                                       seeded["artifacts"], "--logs-bucket", seeded["logs"], "--dsn", seeded["dsn"],
                                       "--retry-deadline", "2s", "--report", str(report_file)])
    assert result.exit_code == 75, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(lines) == 1 and "InternalError" in lines[0] and "Traceback" not in result.stderr
    report = json.loads(report_file.read_text())
    assert report["errors"] and report["counts"]  # the artifacts bucket was done and counted
    if command == "s3-rename":
        assert report["counts"]["moved"] > 0


@pytest.mark.s3_servers("seaweedfs")
def test_a_run_of_identical_refusals_stops_early_with_the_permission_named(bigger, s3_env, tmp_path, fault_proxy):
    s3 = bigger["ctx"].s3
    before = list_keys(s3, bigger["artifacts"]), list_keys(s3, bigger["logs"])
    # Everything but the preflight's canary copy is refused: as if the policy lacked s3:PutObject
    # on the real prefixes.
    fault_proxy.add("denied", operations=("CopyObject",), skip_key=".ponos-toolkit-canary/")

    code, report, stderr = rename(s3_env, "--artifacts-bucket", bigger["artifacts"], "--logs-bucket", bigger["logs"],
                                  "--dsn", bigger["dsn"], "--endpoint-url", fault_proxy.endpoint, "--workers", "4",
                                  tmp_path=tmp_path)

    assert code == 2
    assert "s3:PutObject" in stderr and "stopped early" in stderr
    assert fault_proxy.fired("denied") < 200  # it stopped: 1,786 keys were in scope
    assert (list_keys(s3, bigger["artifacts"]), list_keys(s3, bigger["logs"])) == before


@pytest.mark.s3_servers("seaweedfs")
def test_a_missing_permission_is_found_on_canaries_before_anything_changes(seeded, run, fault_proxy):
    before = state_of(seeded)
    fault_proxy.add("denied", operations=("PutObject",))

    code, _, stderr = run("--endpoint-url", fault_proxy.endpoint)

    assert code == 2 and "s3:PutObject" in stderr and "nothing of yours was changed" in stderr
    assert state_of(seeded) == before


# --- checkpoints of other runs, and finished ones -----------------------------------------------

@pytest.mark.s3_servers("seaweedfs")
def test_a_checkpoint_of_another_database_is_refused(seeded, run, tmp_path, make_database):
    checkpoint = tmp_path / "rename.checkpoint"
    rehearsal = make_database("legacy")
    code, _, _ = rename_with_dsn(run, rehearsal, "--checkpoint", str(checkpoint))
    assert code == 0 and checkpoint.exists()
    before = state_of(seeded)

    code, _, stderr = run("--checkpoint", str(checkpoint))

    assert code == 2 and "belongs to another run" in stderr and "database" in stderr
    assert state_of(seeded) == before


def rename_with_dsn(run, dsn, *extra):
    # The later --dsn wins: the same buckets, another database (a rehearsal copy).
    return run("--dsn", dsn, *extra)


@pytest.mark.s3_servers("seaweedfs")
def test_a_checkpoint_of_another_endpoint_is_refused(seeded, run, tmp_path, fault_proxy):
    checkpoint = tmp_path / "rename.checkpoint"
    assert run("--checkpoint", str(checkpoint), "--endpoint-url", fault_proxy.endpoint)[0] == 0
    before = state_of(seeded)

    code, _, stderr = run("--checkpoint", str(checkpoint))  # the direct endpoint, not the proxy

    assert code == 2 and "belongs to another run" in stderr and "endpoint" in stderr
    assert state_of(seeded) == before


@pytest.mark.s3_servers("seaweedfs")
@pytest.mark.parametrize("state", [
    {"b": "not an object"}, {"b": {"after": 12}}, {"b": {"after": None, "complete": "yes"}},
    {"b": {"after": None, "started_at": "yesterday"}}, ["a", "list"],
], ids=["entry", "after", "complete", "started", "list"])
@pytest.mark.slow
def test_a_malformed_checkpoint_is_exit_2_without_a_traceback(seeded, run, tmp_path, state):
    checkpoint = tmp_path / "rename.checkpoint"
    assert run("--checkpoint", str(checkpoint))[0] == 0
    identity = json.loads(checkpoint.read_text())["identity"]
    checkpoint.write_text(json.dumps({"identity": identity, "state": state}))
    before = state_of(seeded)

    code, _, stderr = run("--checkpoint", str(checkpoint))

    assert code == 2 and "malformed" in stderr and "Traceback" not in stderr
    assert state_of(seeded) == before


@pytest.mark.slow
def test_a_finished_checkpoint_skips_nothing_written_since(seeded, run, tmp_path):
    checkpoint = tmp_path / "rename.checkpoint"
    assert run("--checkpoint", str(checkpoint))[0] == 0
    s3 = seeded["ctx"].s3
    workflow, task, _ = tasks_of(seeded["dsn"], unfinished=False)[0]
    late = f"{workflow}/{task}/written/after/the/run.txt"
    s3.put_object(Bucket=seeded["artifacts"], Key=late, Body=b"late")

    code, report, _ = run("--checkpoint", str(checkpoint))

    assert code == 0 and report["counts"]["moved"] == 1
    assert late not in list_keys(s3, seeded["artifacts"])
    assert s3.get_object(Bucket=seeded["artifacts"], Key=late.split("/", 1)[1])["Body"].read() == b"late"


# --- where S3 is and who may see it -------------------------------------------------------------

def test_an_endpoint_set_in_the_aws_profile_reaches_both_clients(seeded, s3_env, tmp_path, monkeypatch):
    config = tmp_path / "aws-config"
    config.write_text(f"[profile ponos-test]\nendpoint_url = {s3_env['AWS_ENDPOINT_URL']}\nregion = us-east-1\n"
                      f"aws_access_key_id = {s3_env['AWS_ACCESS_KEY_ID']}\n"
                      f"aws_secret_access_key = {s3_env['AWS_SECRET_ACCESS_KEY']}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    artifacts_before, logs_before = state_of(seeded)
    moves = expected_moves(seeded["dsn"], artifacts_before, logs_before)
    from click.testing import CliRunner

    from migrate.cli import main
    report_file = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["s3-rename", "--profile", "ponos-test", "--artifacts-bucket",
                                       seeded["artifacts"], "--logs-bucket", seeded["logs"], "--dsn", seeded["dsn"],
                                       "--report", str(report_file)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_file.read_text())
    assert report["endpoint"] == s3_env["AWS_ENDPOINT_URL"]
    assert report["capabilities"][seeded["artifacts"]]["obstore_exact"]  # obstore reached it too
    assert_moved(artifacts_before, list_keys(seeded["ctx"].s3, seeded["artifacts"]), moves["artifacts"])


@pytest.mark.s3_servers("seaweedfs")
def test_no_secret_of_the_endpoint_url_in_any_output(seeded, s3_env, tmp_path):
    from click.testing import CliRunner

    from migrate.cli import main
    secret = "t0ps3cr3t-token"
    endpoint = s3_env["AWS_ENDPOINT_URL"].replace("http://", f"http://ponos:{secret}@")
    report_file = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["s3-rename", "--endpoint-url", endpoint, "--artifacts-bucket",
                                       seeded["artifacts"], "--dsn", seeded["dsn"], "--report", str(report_file),
                                       "-v"])
    assert "Traceback" not in result.output
    assert secret not in result.output
    if report_file.exists():
        assert secret not in report_file.read_text()


def test_a_bucket_in_another_region_is_found_and_used(legacy_dsn, context_factory, s3_env, tmp_path,
                                                      s3_implementation):
    import uuid

    from ponos_dev import seed
    ctx = context_factory(legacy_dsn)
    bucket = f"eu-{uuid.uuid4().hex[:16]}"
    try:
        ctx.s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
    except ctx.s3.exceptions.ClientError as exc:  # Ceph RGW: one zonegroup, no other region to ask for
        pytest.skip(f"this server has no region but its own ({exc})")
    with psycopg.connect(legacy_dsn, autocommit=True) as conn:
        seed.seed_database(conn, seed.SeedSpec(processes=4, seed=8))
        seed.seed_s3(ctx, conn, artifacts_bucket=bucket, logs_bucket=bucket, seed=8)
    before = list_keys(ctx.s3, bucket)
    moves = expected_moves(legacy_dsn, before, before)

    code, report, _ = rename(s3_env, "--artifacts-bucket", bucket, "--logs-bucket", bucket, "--dsn", legacy_dsn,
                             tmp_path=tmp_path)

    assert code == 0, report
    if s3_implementation == "moto":  # it keeps regions as AWS does; SeaweedFS has one
        assert report["capabilities"][bucket]["region"] == "eu-west-3"
    assert_moved(before, list_keys(ctx.s3, bucket), {**moves["artifacts"], **moves["logs"]})


@pytest.mark.s3_servers("seaweedfs")
@pytest.mark.parametrize("fault", ["error_200", "truncate"])
def test_a_200_carrying_an_error_or_cut_short_is_retried_not_believed(seeded, run, fault_proxy, fault):
    """A listing answered 200 with an <Error> body, or cut short, would look like the end of
    the bucket; a DeleteObjects answer cut short would hide keys not deleted."""
    artifacts_before, logs_before = state_of(seeded)
    moves = expected_moves(seeded["dsn"], artifacts_before, logs_before)
    fault_proxy.add(fault, operations=("ListObjectsV2", "DeleteObjects"), times=4)

    code, report, stderr = run("--endpoint-url", fault_proxy.endpoint)

    assert fault_proxy.fired(fault) == 4
    assert code == 0, (report, stderr)
    s3 = seeded["ctx"].s3
    assert_moved(artifacts_before, list_keys(s3, seeded["artifacts"]), moves["artifacts"])
    assert_moved(logs_before, list_keys(s3, seeded["logs"]), moves["logs"])


def test_canaries_of_killed_probes_are_swept_once_stale(seeded, run, monkeypatch):
    from datetime import timedelta

    from ponoskit.s3 import capabilities
    s3 = seeded["ctx"].s3
    left = [f"{capabilities.CANARY_PREFIX}killed-run/a", f"{capabilities.CANARY_PREFIX}killed-run/Ünï b.txt"]
    for key in left:
        s3.put_object(Bucket=seeded["artifacts"], Key=key, Body=b"canary of a killed probe")
    assert run("--dry-run")[0] == 0
    assert all(key in list_keys(s3, seeded["artifacts"]) for key in left)  # young: maybe another shard's

    monkeypatch.setattr(capabilities, "CANARY_MAX_AGE", timedelta(0))  # as if ten minutes had passed
    code, report, _ = run()

    assert code == 0, report
    assert not [k for k in list_keys(s3, seeded["artifacts"]) if k.startswith(capabilities.CANARY_PREFIX)]
    assert report["counts"].get("unrecognized", 0) == 4  # the seed's own; canaries are never counted
