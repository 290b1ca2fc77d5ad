"""ponos-maint cleanup on a real PostgreSQL and a real S3 server (SeaweedFS): what goes, what stays.

Resilience (lock, concurrency, SIGKILL, S3 down, bad input) is in test_cleanup_resilience.py,
the orphan sweep in test_cleanup_orphans.py, fixtures in test_cleanup_fixtures.py.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import psycopg
import pytest

import maint.cleanup
from maint.cli import parse_before, parse_duration
from maint.outbox import Target
from maint.listing_plan import plan_listings
from maint.purge import Purger
from ponoskit import keys
from ponoskit.errors import ConfigError
from tests.conftest import list_keys
from tests.test_cleanup_fixtures import (  # noqa: F401 - fixtures
    expected_state, folded, run_cli, upload)


def test_deletes_exactly_the_due_tasks_their_rows_and_files_and_a_second_run_changes_nothing(folded, run_cli):
    before, listing = folded.state(), folded.listing()
    due = folded.due_tasks()
    assert due and len(due) < len(before["tasks"])

    code, output, report = run_cli("cleanup", *folded.cli_args("--batch-size", "7"))

    assert code == 0, output
    after = folded.state()
    assert after == expected_state(before, due)
    # Spelled out, so a failure says which rule broke:
    assert {t for t, _ in after["tasks"]} == {t for t, _ in before["tasks"]} - due
    assert after["processes"] == before["processes"]
    assert after["workerruns"] == before["workerruns"]
    assert after["workeractivities"] == before["workeractivities"]
    assert {g for g, _ in after["gpus"]} == {g for g, _ in before["gpus"]}  # released, not deleted
    assert any(task in due for _, task in before["gpus"])
    assert not any(a in due or b in due for a, b in after["parents"])
    assert any(a in due and b not in due for a, b in before["parents"])  # the cross links existed
    assert any(b in due and a not in due for a, b in before["parents"])
    # S3: every key the rows of a deleted task named gone (and its log), every other object kept:
    # an object without a row under a deleted task too (the orphan sweep's), and nothing listed.
    expected = folded.expected_listing(listing, due)
    assert folded.listing() == expected
    strays = {k for k in expected["artifacts"] if k.split("/", 1)[0] in due}
    assert strays and not strays & folded.registered
    gone = sum(len(listing[b]) - len(expected[b]) for b in listing)
    counts = report["counts"]
    assert counts["tasks"] == len(due)
    assert counts["processes"] == len({p for t, p in before["tasks"] if t in due})
    assert counts["artifacts"] == len(before["artifacts"]) - len(after["artifacts"])
    assert gone > 0 and counts["s3_objects"] == gone
    assert counts.get("s3_listings", 0) == 0
    # No LIST but the permission preflight's (its check and the stale-canary sweep, per bucket).
    assert report["s3_requests"]["LIST"] == 2 * 2
    assert folded.listing(canaries=True) == expected  # the canaries were deleted too
    assert report["status"] == "done" and report["exit_code"] == 0
    assert folded.outbox_rows() == set()

    code, output, report = run_cli("cleanup", *folded.cli_args())

    assert code == 0, output
    assert folded.state() == after
    assert folded.listing() == expected
    assert report["counts"].get("tasks", 0) == 0 and report["counts"].get("s3_objects", 0) == 0


def test_unfinished_process_kept_and_reported(folded, run_cli):
    stuck_tasks = {t for t, p in folded.state()["tasks"] if p == folded.stuck_process}
    assert stuck_tasks

    code, output, report = run_cli("cleanup", *folded.cli_args())

    assert code == 0, output
    remaining = {t for t, _ in folded.state()["tasks"]}
    assert stuck_tasks <= remaining
    assert report["items"]["processes_skipped_unfinished"] == [folded.stuck_process]
    assert report["counts"]["processes_skipped_unfinished"] == 1
    assert folded.stuck_process in output
    listing = folded.listing()
    assert all(keys.log_key(t) in listing["logs"] for t in stuck_tasks)


def test_dry_run_changes_nothing_and_counts_what_the_real_run_deletes(folded, run_cli):
    state, listing = folded.state(), folded.listing()
    due = folded.due_tasks()

    code, output, planned = run_cli("cleanup", "--dry-run", *folded.cli_args())

    assert code == 0, output
    assert folded.state() == state
    assert folded.listing() == listing
    with psycopg.connect(folded.dsn) as conn:  # not even the outbox table
        assert conn.execute("SELECT to_regclass('ponos_cleanup_outbox')").fetchone()[0] is None
    assert planned["dry_run"] is True
    assert planned["counts"]["tasks"] == len(due)
    expected = folded.expected_listing(listing, due)
    assert planned["counts"]["s3_objects"] == sum(len(listing[b]) - len(expected[b]) for b in listing)

    code, output, done = run_cli("cleanup", *folded.cli_args("--batch-size", "5"))

    assert code == 0, output
    for name in ("processes", "tasks", "artifacts", "task_parents", "gpus_released", "s3_objects", "s3_bytes"):
        assert planned["counts"].get(name, 0) == done["counts"].get(name, 0), name


def test_before_replaces_now(folded, run_cli):
    before = folded.now - timedelta(days=12)
    due_then = folded.due_tasks(before)
    due_now = folded.due_tasks()
    assert due_then and due_then < due_now  # the option must make a difference here
    state, listing = folded.state(), folded.listing()

    code, output, report = run_cli("cleanup", *folded.cli_args("--before", before.isoformat()))

    assert code == 0, output
    assert folded.state() == expected_state(state, due_then)
    assert folded.listing() == folded.expected_listing(listing, due_then)
    assert report["before"] == before.isoformat()


def test_max_runtime_stops_between_batches_and_a_rerun_finishes(folded, run_cli, monkeypatch):
    # A fake clock makes "three batches fit in the runtime" exact: one tick per check.
    ticks = iter(range(10_000))
    state, listing = folded.state(), folded.listing()
    due = folded.due_tasks()
    assert len(due) > 6

    with monkeypatch.context() as patch:
        patch.setattr(maint.cleanup, "_clock", lambda: float(next(ticks)))
        code, output, report = run_cli("cleanup", *folded.cli_args("--batch-size", "2", "--max-runtime", "3.5"))

    assert code == 75, output  # stopped at its bound, the same code as the rename's: run again
    assert "--max-runtime" in output and report["status"] == "stopped"
    gone = {t for t, _ in state["tasks"]} - {t for t, _ in folded.state()["tasks"]}
    assert len(gone) == 6 and gone <= due
    # Whole batches only: rows and files of every deleted task are gone, nothing owed.
    assert folded.state() == expected_state(state, gone)
    assert folded.listing() == folded.expected_listing(listing, gone)
    assert folded.outbox_rows() == set()

    code, output, _ = run_cli("cleanup", *folded.cli_args("--batch-size", "2", "--max-runtime", "10m"))

    assert code == 0, output
    assert folded.state() == expected_state(state, due)
    assert folded.listing() == folded.expected_listing(listing, due)


def test_task_locked_by_another_transaction_is_skipped_and_reported(folded, run_cli):
    due = sorted(folded.due_tasks())
    locked = due[len(due) // 2]
    state = folded.state()
    with psycopg.connect(folded.dsn) as holder:
        holder.execute("SELECT 1 FROM ponos_task WHERE id = %s FOR UPDATE", (locked,))

        code, output, report = run_cli("cleanup", *folded.cli_args("--batch-size", "3"))

        assert code == 1, output
        assert report["counts"]["tasks_left_locked"] == 1
        assert {t for t, _ in folded.state()["tasks"]} & set(due) == {locked}
    code, output, _ = run_cli("cleanup", *folded.cli_args())
    assert code == 0, output
    assert folded.state() == expected_state(state, set(due))


def test_dense_batch_lists_by_shared_prefix_and_deletes_exactly_its_targets(
        context_factory, make_bucket, make_database):
    """One bucket for logs and artifacts, foreign keys around and between the targets."""
    ctx = context_factory(make_database(None))
    bucket = make_bucket("dense")
    tasks = sorted(str(uuid.uuid4()) for _ in range(80))
    targeted = tasks[20:70]
    objects = [keys.artifact_key(t, name) for t in tasks for name in ("a.txt", "b/c.txt", "z z/%41+#?.bin")]
    objects += [keys.log_key(t) for t in tasks]
    objects += [keys.log_key(t) + ".old" for t in targeted]  # not the log: stays
    objects += [keys.artifact_prefix(targeted[5])]  # a folder marker under a target: goes
    upload(ctx, [(bucket, key) for key in objects])
    targets = [Target(bucket, keys.artifact_prefix(t), "prefix") for t in targeted]
    targets += [Target(bucket, keys.log_key(t), "key") for t in targeted]
    purger = Purger(ctx, count_only=False)

    purger.submit(targets, dense=True)
    purger.close()

    gone = {key for key in objects if any(target.covers(key) for target in targets)}
    assert set(list_keys(ctx.s3, bucket)) == set(objects) - gone
    assert ctx.report.counts["s3_objects"] == len(gone) == 4 * len(targeted) + 1
    assert ctx.report.counts["s3_listings"] < len(targets) / 2  # shared prefixes, not one per target


def test_listing_plan_covers_every_target_once_and_keeps_edges_narrow():
    keys_ = sorted(str(uuid.uuid4()) + suffix for _ in range(300) for suffix in (".log", "/"))
    plan = list(plan_listings(keys_, dense=True))
    served = [k for _, group in plan for k in group]
    assert sorted(served) == keys_
    assert all(k.startswith(prefix) for prefix, group in plan for k in group)
    assert plan[0][1] == [keys_[0]] and plan[-1][1] == [keys_[-1]]  # edges listed alone
    assert len(plan) < len(keys_) / 4
    assert list(plan_listings(keys_[:5], dense=False)) == [(k, [k]) for k in keys_[:5]]


@pytest.mark.parametrize("text, seconds", [("600", 600), ("10m", 600), ("1h30m", 5400), ("7d", 604800),
                                           ("0.5s", 0.5)])
def test_durations(text, seconds):
    assert parse_duration("--max-runtime", text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "m", "1h 3", "-5"])
def test_bad_durations(text):
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration("--grace", text)


def test_before_parsing():
    assert parse_before("2024-05-01T00:00:00Z").isoformat() == "2024-05-01T00:00:00+00:00"
    assert parse_before("2024-05-01").isoformat() == "2024-05-01T00:00:00+00:00"  # no offset: UTC
    assert parse_before("2024-05-01T02:00:00+02:00").utcoffset() == timedelta(hours=2)
    with pytest.raises(ConfigError, match="ISO 8601"):
        parse_before("yesterday")

