"""ponos-migrate verify against a real PostgreSQL and S3 server."""

from __future__ import annotations

import re
import time
import uuid

import psycopg
import pytest

from ponoskit.keys import is_uuid
from tests.helpers import list_keys
from tests.fixtures.rename import rename, run_verify


def artifact_rows(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT task_id::text, path FROM ponos_artifact ORDER BY id").fetchall()


def test_verify_before_and_after_the_rename(seeded, s3_env, tmp_path):
    buckets = ["--artifacts-bucket", seeded["artifacts"], "--logs-bucket", seeded["logs"], "--dsn", seeded["dsn"]]
    rows = artifact_rows(seeded["dsn"])

    code, before, _ = run_verify(s3_env, tmp_path, *buckets)
    assert code == 1
    assert before["counts"]["missing_artifacts"] == len(rows)
    assert before["counts"]["legacy_left"] == seeded["counts"]["artifacts"] + seeded["counts"]["logs"]

    assert rename(s3_env, *buckets, tmp_path=tmp_path)[0] == 0
    code, after, stderr = run_verify(s3_env, tmp_path, *buckets)
    assert code == 0, stderr
    assert after["counts"]["artifacts_found"] == len(rows)
    assert after["counts"]["logs_found"] == seeded["counts"]["logs"]
    assert after["counts"].get("legacy_left", 0) == after["counts"].get("missing_artifacts", 0) == 0
    assert after["counts"]["unrecognized"] == seeded["counts"]["unrecognized"]
    # Finished tasks without a log are reported, not fatal.
    with psycopg.connect(seeded["dsn"]) as conn:
        finished = {r[0] for r in conn.execute(
            "SELECT id::text FROM ponos_task WHERE state IN ('completed', 'failed', 'error', 'stopped')")}
    logs = {k[:-len(".log")] for k in list_keys(seeded["ctx"].s3, seeded["logs"])}
    assert finished - logs, "the seed leaves some tasks without a log"
    assert sorted(after["items"]["missing_logs"]) == sorted(f"{t}.log" for t in finished - logs)


def test_verify_finds_missing_objects_orphans_and_size_mismatches(seeded, s3_env, tmp_path):
    buckets = ["--artifacts-bucket", seeded["artifacts"], "--logs-bucket", seeded["logs"], "--dsn", seeded["dsn"]]
    assert rename(s3_env, *buckets, tmp_path=tmp_path)[0] == 0
    s3, bucket = seeded["ctx"].s3, seeded["artifacts"]
    (task, path), (task2, path2), *_ = artifact_rows(seeded["dsn"])
    s3.delete_object(Bucket=bucket, Key=f"{task}/{path}")
    s3.put_object(Bucket=bucket, Key=f"{task2}/{path2}", Body=b"x" * 1000)  # the row says otherwise
    orphan = f"{uuid.uuid4()}/left/behind.txt"
    s3.put_object(Bucket=bucket, Key=orphan, Body=b"of a deleted task")

    code, report, _ = run_verify(s3_env, tmp_path, *buckets)
    assert code == 1
    assert report["items"]["missing_artifacts"] == [f"{task}/{path}"]
    assert [m["key"] for m in report["items"]["size_mismatches"]] == [f"{task2}/{path2}"]
    assert report["items"]["orphans"] == [orphan]


def test_verify_one_bucket_for_both(legacy_dsn, context_factory, make_bucket, s3_env, tmp_path):
    from ponos_dev import seed
    ctx = context_factory(legacy_dsn)
    bucket = make_bucket("shared")
    with psycopg.connect(legacy_dsn, autocommit=True) as conn:
        seed.seed_database(conn, seed.SeedSpec(processes=5, seed=5))
        counts = seed.seed_s3(ctx, conn, artifacts_bucket=bucket, logs_bucket=bucket, seed=5)
    args = ["--artifacts-bucket", bucket, "--logs-bucket", bucket, "--dsn", legacy_dsn]
    assert rename(s3_env, *args, tmp_path=tmp_path)[0] == 0
    code, report, _ = run_verify(s3_env, tmp_path, *args)
    assert code == 0
    assert report["counts"]["logs_found"] == counts["logs"]
    assert report["counts"]["artifacts_found"] == len(artifact_rows(legacy_dsn))
    # <task>.log sorts before <task>/... in S3's byte order and after it in SeaweedFS's tree
    # order: either way a log that is there is never reported missing.
    present = set(list_keys(ctx.s3, bucket))
    with psycopg.connect(legacy_dsn) as conn:
        finished = [r[0] for r in conn.execute(
            "SELECT id::text FROM ponos_task WHERE state IN ('completed', 'failed', 'error', 'stopped')")]
    assert sorted(report["items"].get("missing_logs", [])) == sorted(
        f"{t}.log" for t in finished if f"{t}.log" not in present)


def test_verify_bad_input(seeded, s3_env, tmp_path):
    code, _, stderr = run_verify(s3_env, tmp_path, "--dsn", seeded["dsn"])
    assert code == 2 and "--artifacts-bucket" in stderr
    code, _, stderr = run_verify(s3_env, tmp_path, "--dsn", seeded["dsn"], "--logs-bucket", "missing-bucket-x")
    assert code == 2 and "does not exist" in stderr


@pytest.mark.slow
def test_verify_writes_prometheus_metrics(seeded, s3_env, tmp_path):
    metrics = tmp_path / "verify.prom"
    code, report, _ = run_verify(s3_env, tmp_path, "--artifacts-bucket", seeded["artifacts"],
                                 "--dsn", seeded["dsn"], "--metrics-file", str(metrics))
    assert code == 1  # nothing renamed yet
    text = metrics.read_text()
    assert 'ponos_job_exit_code{job="verify"} 1' in text
    assert (f'ponos_job_items{{job="verify",item="legacy_left"}} {report["counts"]["legacy_left"]}') in text
    assert not list(tmp_path.glob(".verify.prom.*"))  # written atomically, no temporary left
    assert "last_success" not in text  # it never succeeded

    args = ["--artifacts-bucket", seeded["artifacts"], "--dsn", seeded["dsn"], "--metrics-file", str(metrics)]
    assert rename(s3_env, *args[:4], tmp_path=tmp_path)[0] == 0
    assert run_verify(s3_env, tmp_path, *args)[0] == 0
    success = re.search(r'last_success_timestamp_seconds\{job="verify"\} (\d+)', metrics.read_text())[1]
    first_key = next(k for k in list_keys(seeded["ctx"].s3, seeded["artifacts"]) if is_uuid(k.split("/")[0]))
    seeded["ctx"].s3.delete_object(Bucket=seeded["artifacts"], Key=first_key)
    time.sleep(1.1)
    assert run_verify(s3_env, tmp_path, *args)[0] == 1
    text = metrics.read_text()
    assert f'ponos_job_last_success_timestamp_seconds{{job="verify"}} {success}' in text  # carried over
    assert 'ponos_job_exit_code{job="verify"} 1' in text
