"""The S3 objects of the tasks ``db-fold-workflow --orphans delete`` deleted: ``ponos-maint cleanup``
hands them to its outbox (rows gone in the same transaction) and deletes them, once.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest
from click.testing import CliRunner

import maint.outbox
from maint import fold_leftovers
from migrate.cli import main as migrate_main
from migrate.fold import orphans as fold_orphans
from ponoskit import keys
from ponos_dev import seed
from ponoskit.keys import CANARY_PREFIX
from tests.fixtures.cleanup import upload
from tests.fixtures.fold import make_orphans
from tests.helpers import list_keys

LONG_AGO = "2000-01-01T00:00:00Z"  # no task is due then: only the fold's leftovers are in scope


def test_the_table_is_the_one_the_fold_writes():
    assert fold_leftovers.TABLE == fold_orphans.OUTBOX  # maint names it on its own (it never imports migrate)


def test_after_a_real_fold_the_cleanup_deletes_exactly_the_deleted_tasks_legacy_objects(make_seeded, run_cli):
    world = make_seeded(seed.SeedSpec(processes=20, seed=3))
    dsn, ctx, artifacts, logs = world["dsn"], world["ctx"], world["artifacts"], world["logs"]
    orphans = make_orphans(dsn)
    result = CliRunner().invoke(migrate_main, ["db-fold-workflow", "--dsn", dsn, "--orphan-workflows", "delete"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    before = {"artifacts": set(list_keys(ctx.s3, artifacts)), "logs": set(list_keys(ctx.s3, logs))}
    workflow = str(orphans["workflow"])
    leftovers = {
        "artifacts": {k for k in before["artifacts"]
                      if any(k.startswith(keys.legacy_artifact_key(workflow, t, "")) for t in orphans["tasks"])},
        "logs": {keys.legacy_log_key(workflow, run, t) for t, run in orphans["tasks"].items()} & before["logs"],
    }
    assert leftovers["artifacts"] and leftovers["logs"]
    args = ["--dsn", dsn, "--artifacts-bucket", artifacts, "--logs-bucket", logs,
            "--endpoint-url", ctx.s3_settings.endpoint_url, "--before", LONG_AGO]

    code, output, planned = run_cli("cleanup", "--dry-run", *args)

    assert code == 0, output
    assert planned["counts"]["fold_deleted_tasks"] == len(orphans["tasks"])
    # Listed artifacts, and every log key (named: S3 cannot say in advance whether it exists).
    assert planned["counts"]["s3_objects"] == len(leftovers["artifacts"]) + len(orphans["tasks"])
    with psycopg.connect(dsn) as conn:
        assert fold_leftovers.recorded(conn) == len(orphans["tasks"])  # the dry run changed nothing

    code, output, report = run_cli("cleanup", *args)

    assert code == 0, output
    assert report["counts"]["fold_deleted_tasks_handed_over"] == len(orphans["tasks"])
    after = {"artifacts": set(list_keys(ctx.s3, artifacts)), "logs": set(list_keys(ctx.s3, logs))}
    assert after == {role: before[role] - leftovers[role] for role in before}  # nothing else
    with psycopg.connect(dsn) as conn:
        assert fold_leftovers.recorded(conn) == 0
        assert conn.execute("SELECT count(*) FROM ponos_cleanup_outbox").fetchone()[0] == 0

    code, output, report = run_cli("cleanup", *args)

    assert code == 0, output
    assert report["counts"].get("fold_deleted_tasks_handed_over", 0) == 0
    assert report["counts"].get("s3_objects", 0) == 0


@pytest.fixture
def recorded(folded):
    """Three tasks the fold deleted, recorded, with their objects at legacy keys; a neighbour
    under the same workflow that was not recorded (not the cleanup's to delete)."""
    workflow = str(uuid.uuid4())
    rows = [(str(uuid.uuid4()), workflow, run) for run in (1, 2, 3)]
    with psycopg.connect(folded.dsn, autocommit=True) as conn:
        conn.execute(fold_orphans.CREATE_OUTBOX_SQL)
        conn.execute(f"INSERT INTO {fold_leftovers.TABLE} (task_id, workflow_id, run, artifact_paths) "
                     "SELECT t, w, r, '{}' FROM unnest(%s::uuid[], %s::uuid[], %s::int[]) x(t, w, r)",
                     ([t for t, _, _ in rows], [w for _, w, _ in rows], [r for _, _, r in rows]))
    objects = {(folded.artifacts, keys.legacy_artifact_key(workflow, task, path))
               for task, _, _ in rows for path in ("a.txt", "deep/er/b z.bin")}
    objects |= {(folded.logs, keys.legacy_log_key(workflow, run, task)) for task, _, run in rows}
    neighbour = (folded.artifacts, keys.legacy_artifact_key(workflow, uuid.uuid4(), "kept.txt"))
    upload(folded.ctx, [*objects, neighbour])
    return rows, objects, neighbour


def _present(folded, objects) -> set:
    listing = folded.listing()
    names = {folded.artifacts: "artifacts", folded.logs: "logs"}
    return {(bucket, key) for bucket, key in objects if key in listing[names[bucket]]}


def _recorded_count(folded) -> int:
    with psycopg.connect(folded.dsn) as conn:
        return fold_leftovers.recorded(conn)


def test_a_crash_inside_the_hand_over_loses_nothing(folded, recorded, run_cli, monkeypatch):
    rows, objects, neighbour = recorded
    real_add = maint.outbox.add

    def add_then_crash(conn, targets):
        real_add(conn, targets)  # the targets are in, the recorded rows deleted: then the process dies
        raise RuntimeError("killed before the commit")

    with monkeypatch.context() as patch:
        patch.setattr(maint.outbox, "add", add_then_crash)
        code, output, _ = run_cli("cleanup", *folded.cli_args("--before", LONG_AGO))

    assert code == 1 and "killed before the commit" in output
    assert _recorded_count(folded) == len(rows)  # rolled back: still recorded ...
    assert folded.outbox_rows() == set()  # ... and not handed over
    assert _present(folded, objects | {neighbour}) == objects | {neighbour}

    code, output, report = run_cli("cleanup", *folded.cli_args("--before", LONG_AGO))

    assert code == 0, output
    assert report["counts"]["fold_deleted_tasks_handed_over"] == len(rows)
    assert _present(folded, objects | {neighbour}) == {neighbour}
    assert _recorded_count(folded) == 0 and folded.outbox_rows() == set()


def test_s3_failing_after_the_hand_over_keeps_the_targets_in_the_outbox_once(folded, recorded, run_cli, fault_proxy):
    rows, objects, neighbour = recorded
    fault_proxy.add("internal", operations=("ListObjectsV2", "DeleteObjects", "DeleteObject"), skip_key=CANARY_PREFIX)
    args = folded.cli_args("--before", LONG_AGO, "--retry-deadline", "1s", "--s3-max-attempts", "2")
    args[args.index("--endpoint-url") + 1] = fault_proxy.endpoint

    code, output, report = run_cli("cleanup", *args)

    assert code == 75, output
    assert report["counts"]["fold_deleted_tasks_handed_over"] == len(rows)
    assert _recorded_count(folded) == 0
    owed = {(t.bucket, t.key, t.kind) for t in fold_leftovers.targets_for(
        rows, artifacts_bucket=folded.artifacts, logs_bucket=folded.logs)}
    assert folded.outbox_rows() == owed  # a legacy prefix and a legacy log key per task
    assert _present(folded, objects) == objects

    code, output, report = run_cli("cleanup", *folded.cli_args("--before", LONG_AGO))

    assert code == 0, output
    assert report["counts"]["outbox_rows_pending_at_start"] == len(owed)
    assert report["counts"].get("fold_deleted_tasks_handed_over", 0) == 0  # not handed over twice
    assert report["counts"]["s3_objects"] == len(objects)
    assert _present(folded, objects | {neighbour}) == {neighbour}
    assert folded.outbox_rows() == set()
