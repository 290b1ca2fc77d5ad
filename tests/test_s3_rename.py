"""s3-rename against a real S3 server (SeaweedFS, or PONOS_TEST_S3_ENDPOINT) and a real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess

import psycopg
import pytest
from click.testing import CliRunner

from migrate.cli import main
from tests.fixtures.rename import assert_moved, cli_command, expected_moves, rename
from tests.helpers import list_keys

SENTINEL = b"not a copy of the source"


def test_rename_moves_every_legacy_key_and_second_run_changes_nothing(seeded, run):
    s3 = seeded["ctx"].s3
    artifacts_before, logs_before = list_keys(s3, seeded["artifacts"]), list_keys(s3, seeded["logs"])
    moves = expected_moves(seeded["dsn"], artifacts_before, logs_before)
    assert moves["artifacts"] and moves["logs"]

    code, report, _ = run()
    assert code == 0, report
    artifacts_after, logs_after = list_keys(s3, seeded["artifacts"]), list_keys(s3, seeded["logs"])
    assert_moved(artifacts_before, artifacts_after, moves["artifacts"])
    assert_moved(logs_before, logs_after, moves["logs"])
    assert report["counts"]["moved"] == len(moves["artifacts"]) + len(moves["logs"])
    assert report["counts"].get("conflicts", 0) == report["counts"].get("failed", 0) == 0
    assert sorted(report["items"]["unrecognized"]) == sorted(
        k for k in artifacts_before if k in ("README", "tmp/scratch.txt", "tmp/", "backup-2021/notes.md"))

    code, again, _ = run()
    assert code == 0
    assert again["counts"].get("moved", 0) == 0 and again["counts"].get("already_moved", 0) == 0
    assert again["counts"]["new_layout"] == len(moves["artifacts"]) + len(moves["logs"])
    assert list_keys(s3, seeded["artifacts"]) == artifacts_after
    assert list_keys(s3, seeded["logs"]) == logs_after


def test_content_type_and_metadata_survive(seeded, run):
    s3 = seeded["ctx"].s3
    with psycopg.connect(seeded["dsn"]) as conn:
        rows = conn.execute("SELECT t.workflow_id, t.id, a.path, a.content_type FROM ponos_artifact a "
                            "JOIN ponos_task t ON t.id = a.task_id ORDER BY a.id LIMIT 10").fetchall()
    before = {(task, path): s3.get_object(Bucket=seeded["artifacts"], Key=f"{wf}/{task}/{path}")
              for wf, task, path, _ in rows}
    assert run()[0] == 0
    for wf, task, path, content_type in rows:
        moved = s3.get_object(Bucket=seeded["artifacts"], Key=f"{task}/{path}")
        assert moved["ContentType"] == content_type == before[(task, path)]["ContentType"]
        assert moved["Metadata"] == before[(task, path)]["Metadata"] == {"seeded-by": "ponos-toolkit"}
        assert moved["Body"].read() == before[(task, path)]["Body"].read()


def test_same_bucket_for_artifacts_and_logs(legacy_dsn, context_factory, make_bucket, s3_env, tmp_path):
    from ponos_dev import seed
    ctx = context_factory(legacy_dsn)
    bucket = make_bucket("shared")
    with psycopg.connect(legacy_dsn, autocommit=True) as conn:
        seed.seed_database(conn, seed.SeedSpec(processes=6, seed=3))
        seed.seed_s3(ctx, conn, artifacts_bucket=bucket, logs_bucket=bucket, seed=3)
    before = list_keys(ctx.s3, bucket)
    moves = expected_moves(legacy_dsn, before, before)
    code, report, _ = rename(s3_env, "--artifacts-bucket", bucket, "--logs-bucket", bucket,
                             "--dsn", legacy_dsn, tmp_path=tmp_path)
    assert code == 0
    assert_moved(before, list_keys(ctx.s3, bucket), {**moves["artifacts"], **moves["logs"]})
    assert report["buckets"] == [bucket]
    code, report, _ = rename(s3_env, "--artifacts-bucket", bucket, "--logs-bucket", bucket,
                             "--dsn", legacy_dsn, tmp_path=tmp_path)
    assert code == 0 and report["counts"].get("moved", 0) == 0


def _a_task(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT t.workflow_id::text, t.id::text, a.path FROM ponos_artifact a "
                            "JOIN ponos_task t ON t.id = a.task_id ORDER BY a.id LIMIT 2").fetchall()


def test_new_layout_key_under_uuid_folder_is_never_moved(seeded, run):
    s3, bucket = seeded["ctx"].s3, seeded["artifacts"]
    (_, task, _), (_, other_task, _) = _a_task(seeded["dsn"])
    # Shaped like <workflow>/<task>/<path> but its first UUID is a task: new layout.
    tricky = f"{task}/{other_task}/model.bin"
    s3.put_object(Bucket=bucket, Key=tricky, Body=b"weights")
    assert run()[0] == 0
    assert s3.get_object(Bucket=bucket, Key=tricky)["Body"].read() == b"weights"
    assert not any(key.startswith(f"{other_task}/model.bin") for key in list_keys(s3, bucket))


def test_half_done_move_is_completed_and_conflict_is_kept(seeded, run):
    s3, bucket = seeded["ctx"].s3, seeded["artifacts"]
    (wf1, task1, path1), (wf2, task2, path2) = _a_task(seeded["dsn"])
    half_done_source, conflict_source = f"{wf1}/{task1}/{path1}", f"{wf2}/{task2}/{path2}"
    s3.copy_object(Bucket=bucket, Key=f"{task1}/{path1}", CopySource={"Bucket": bucket, "Key": half_done_source})
    s3.put_object(Bucket=bucket, Key=f"{task2}/{path2}", Body=SENTINEL)

    code, report, stderr = run()
    assert code == 1
    assert report["counts"]["already_moved"] == 1
    assert [c["key"] for c in report["items"]["conflicts"]] == [conflict_source]
    keys_after = list_keys(s3, bucket)
    assert half_done_source not in keys_after and f"{task1}/{path1}" in keys_after
    assert conflict_source in keys_after  # source kept
    assert s3.get_object(Bucket=bucket, Key=f"{task2}/{path2}")["Body"].read() == SENTINEL  # never overwritten

    # Still a conflict on the next run, and nothing else changes.
    code, again, _ = run()
    assert code == 1 and [c["key"] for c in again["items"]["conflicts"]] == [conflict_source]
    assert again["counts"].get("moved", 0) == 0
    assert list_keys(s3, bucket) == keys_after


@pytest.mark.slow
def test_multipart_copy_above_threshold(seeded, run):
    s3, bucket = seeded["ctx"].s3, seeded["artifacts"]
    (wf, task, _), _ = _a_task(seeded["dsn"])
    body = os.urandom(11 * 1024 ** 2 + 123)
    source = f"{wf}/{task}/big/model weights.bin"
    s3.put_object(Bucket=bucket, Key=source, Body=body, ContentType="application/x-big",
                  Metadata={"origin": "test"})
    code, report, _ = run("--multipart-threshold", "1MiB", "--part-size", "5MiB")
    assert code == 0, report
    moved = s3.get_object(Bucket=bucket, Key=f"{task}/big/model weights.bin")
    assert moved["ContentType"] == "application/x-big" and moved["Metadata"] == {"origin": "test"}
    assert moved["ETag"].strip('"').endswith("-3")  # copied in three parts
    assert moved["Body"].read() == body
    assert source not in list_keys(s3, bucket)
    # A re-run must see the multipart copy as the finished move, not a conflict.
    assert run("--multipart-threshold", "1MiB")[0] == 0


def test_dry_run_changes_nothing_and_predicts_the_run(seeded, run):
    s3 = seeded["ctx"].s3
    before = (list_keys(s3, seeded["artifacts"]), list_keys(s3, seeded["logs"]))
    code, planned, _ = run("--dry-run")
    assert code == 0
    assert (list_keys(s3, seeded["artifacts"]), list_keys(s3, seeded["logs"])) == before
    code, done, _ = run()
    assert code == 0
    assert planned["counts"]["would_move"] == done["counts"]["moved"] > 0


def test_no_db_moves_logs_and_reports_undecided_artifacts(seeded, run, s3_env, tmp_path):
    s3 = seeded["ctx"].s3
    artifacts_before, logs_before = list_keys(s3, seeded["artifacts"]), list_keys(s3, seeded["logs"])
    moves = expected_moves(seeded["dsn"], artifacts_before, logs_before)
    code, report, _ = rename(s3_env, "--artifacts-bucket", seeded["artifacts"], "--logs-bucket", seeded["logs"],
                             "--no-db", tmp_path=tmp_path)
    assert code == 1  # it could not decide every key: not done
    assert report["counts"]["undecided"] == len(moves["artifacts"])
    assert list_keys(s3, seeded["artifacts"]) == artifacts_before
    assert_moved(logs_before, list_keys(s3, seeded["logs"]), moves["logs"])


@pytest.mark.slow
def test_failed_deletes_are_reported_and_completed_on_rerun(seeded, run, monkeypatch):
    from ponoskit.s3 import delete

    real = delete.delete_objects

    def refuse_some(client, bucket, refs, **kwargs):
        keys = [r.key for r in refs]
        results = real(client, bucket, [r for r in refs if "#" not in r.key], **kwargs)
        refused = iter(delete.ObjectDeleteError(bucket, k, "AccessDenied", "no") for k in keys if "#" in k)
        done = iter(results)
        return [next(refused) if "#" in k else next(done) for k in keys]

    monkeypatch.setattr(delete, "delete_objects", refuse_some)
    code, report, _ = run()
    assert code == 1
    failed = [f["key"] for f in report["items"]["failed"]]
    assert failed and all("#" in key for key in failed)
    assert all(key in list_keys(seeded["ctx"].s3, seeded["artifacts"]) for key in failed)

    monkeypatch.setattr(delete, "delete_objects", real)
    code, again, _ = run()
    assert code == 0 and again["counts"]["already_moved"] == len(failed)
    assert not set(failed) & set(list_keys(seeded["ctx"].s3, seeded["artifacts"]))


@pytest.mark.parametrize("args, message, exit_code", [
    ([], "--artifacts-bucket", 2),
    (["--artifacts-bucket", "no-such-bucket-here"], "does not exist", 2),
    (["--artifacts-bucket", "{bucket}", "--shard", "3/3"], "--shard", 2),
    (["--artifacts-bucket", "{bucket}", "--multipart-threshold", "lots"], "size", 2),
    (["--artifacts-bucket", "{bucket}", "--report", "{tmp}/no/such/folder/r.json"], "does not exist", 2),
    (["--artifacts-bucket", "{bucket}", "--checkpoint", "{tmp}/missing/ck.json"], "does not exist", 2),
    (["--artifacts-bucket", "{bucket}", "--metrics-file", "{tmp}/missing/m.prom"], "does not exist", 2),
    (["--artifacts-bucket", "{bucket}", "--report", "{tmp}"], "is a folder", 2),
    # Nobody answers (a failover looks like this): transient, run again later.
    (["--artifacts-bucket", "{bucket}", "--dsn", "postgresql://ponos:s3cr3t-pw@127.0.0.1:1/x"], "cannot connect", 75),
], ids=["no-bucket", "missing-bucket", "shard", "size", "report-folder", "checkpoint-folder", "metrics-folder",
        "report-is-folder", "db-unreachable"])
@pytest.mark.slow
def test_bad_input_is_one_line_and_changes_nothing(seeded, s3_env, tmp_path, args, message, exit_code):
    s3 = seeded["ctx"].s3
    before = list_keys(s3, seeded["artifacts"]), list_keys(s3, seeded["logs"])
    args = [a.replace("{bucket}", seeded["artifacts"]).replace("{tmp}", str(tmp_path)) for a in args]
    if "--dsn" not in args:
        args += ["--dsn", seeded["dsn"]]
    if "--report" in args:
        result = CliRunner().invoke(main, ["s3-rename", "--endpoint-url", s3_env["AWS_ENDPOINT_URL"], *args])
        code, stderr = result.exit_code, result.stderr
    else:
        code, _, stderr = rename(s3_env, *args, tmp_path=tmp_path)
    assert code == exit_code
    assert message in stderr
    assert "s3cr3t-pw" not in stderr
    assert len([line for line in stderr.splitlines() if line.strip()]) <= 3  # click usage + one error line
    assert "Traceback" not in stderr
    assert (list_keys(s3, seeded["artifacts"]), list_keys(s3, seeded["logs"])) == before


def test_checkpoint_of_another_run_is_refused(seeded, run, tmp_path):
    checkpoint = tmp_path / "ck.json"
    assert run("--checkpoint", str(checkpoint), "--dry-run")[0] == 0
    checkpoint.write_text(json.dumps({"identity": {"job": "s3-rename", "buckets": ["other"]}, "state": {}}))
    code, _, stderr = run("--checkpoint", str(checkpoint))
    assert code == 2 and "another run" in stderr


# --- several processes -------------------------------------------------------------------

@pytest.mark.slow
def test_shards_in_parallel_handle_each_key_once(bigger, s3_env, tmp_path):
    s3 = bigger["ctx"].s3
    artifacts_before, logs_before = list_keys(s3, bigger["artifacts"]), list_keys(s3, bigger["logs"])
    moves = expected_moves(bigger["dsn"], artifacts_before, logs_before)
    count = 3
    procs = [subprocess.Popen(cli_command("s3-rename", "--artifacts-bucket", bigger["artifacts"], "--logs-bucket",
                                   bigger["logs"], "--dsn", bigger["dsn"], "--shard", f"{i}/{count}",
                                   "--report", str(tmp_path / f"shard{i}.json"), "--workers", "8"),
                              env={**os.environ, **s3_env}, stderr=subprocess.PIPE, text=True)
             for i in range(count)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    reports = [json.loads((tmp_path / f"shard{i}.json").read_text()) for i in range(count)]
    # A shard also lists new keys that other shards wrote into its range; every original key
    # (all legacy or unrecognized here) was seen by exactly one shard.
    assert sum(r["counts"]["scanned"] - r["counts"].get("new_layout", 0) for r in reports) \
        == len(artifacts_before) + len(logs_before)
    assert sum(r["counts"]["moved"] for r in reports) == len(moves["artifacts"]) + len(moves["logs"])
    assert all(r["counts"]["moved"] > 0 for r in reports)
    assert all(r["counts"].get("already_moved", 0) == 0 for r in reports)
    assert_moved(artifacts_before, list_keys(s3, bigger["artifacts"]), moves["artifacts"])
    assert_moved(logs_before, list_keys(s3, bigger["logs"]), moves["logs"])
