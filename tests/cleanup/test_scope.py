"""ponos-maint cleanup: what goes and what stays (due tasks, their rows and files; an unfinished
process; --before, also in the future) and the run's bounds (--max-runtime, --max-tasks, a task
locked by another transaction, the progress count). Real PostgreSQL and S3 server.

The topics of tests/cleanup/: test_scope.py (this), test_dry_run.py (the dry run and its bill),
test_s3.py (the S3 side: the keys rows name or --list-prefixes, the outbox, keys S3 refuses,
--max-rps, the permission preflight), test_resilience.py (the lock, concurrent runs, SIGKILL,
SIGTERM, S3 down, bad input), test_orphans.py (the orphan sweep), test_fold_leftovers.py (the
objects of the tasks db-fold-workflow deleted). Fixtures: tests/fixtures/cleanup.py.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

import maint.cleanup
from ponoskit import keys
from ponoskit.budget import RuntimeBudget
from ponoskit.report import Report
from tests.fixtures.cleanup import expected_state, later, no_outbox, one_error_line


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
        fake_clock = lambda: float(next(ticks))  # noqa: E731
        patch.setattr(maint.cleanup, "RuntimeBudget", lambda seconds, clock: RuntimeBudget(seconds, clock=fake_clock))
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


def test_max_tasks_deletes_at_most_n_reports_what_is_left_exits_1_and_the_next_run_goes_on(folded, run_cli):
    state, listing, due = folded.state(), folded.listing(), folded.due_tasks()
    assert len(due) > 7
    first = set(sorted(due)[:5])  # tasks go in id order

    code, output, planned = run_cli("cleanup", "--dry-run", *folded.cli_args("--max-tasks", "5"))

    assert code == 0, output
    assert planned["counts"]["tasks"] == 5 and folded.state() == state
    assert planned["counts"]["tasks_left_due"] == len(due) - 5

    code, output, report = run_cli("cleanup", *folded.cli_args("--batch-size", "2", "--max-tasks", "5"))

    assert code == 75, output  # stopped at its bound: run again
    assert report["status"] == "stopped" and "--max-tasks (5) reached" in output
    assert report["counts"]["tasks"] == 5
    assert report["counts"]["tasks_left_due"] == len(due) - 5
    assert f"{len(due) - 5} due task(s) left" in output
    assert folded.state() == expected_state(state, first)
    assert folded.listing() == folded.expected_listing(listing, first)
    assert folded.outbox_rows() == set()
    for name in ("tasks", "artifacts", "task_parents", "gpus_released", "s3_objects"):
        assert planned["counts"].get(name, 0) == report["counts"].get(name, 0), name

    code, output, report = run_cli("cleanup", *folded.cli_args("--max-tasks", str(len(due) - 5)))

    assert code == 0, output  # exactly what was left: nothing in scope is left
    assert folded.state() == expected_state(state, due)
    assert folded.listing() == folded.expected_listing(listing, due)


@pytest.mark.parametrize("command", ["cleanup", "orphans"])
def test_before_in_the_future_is_refused_unless_allowed(folded, run_cli, command):
    state, listing = folded.state(), folded.listing()
    future = later(folded.now, hours=1)

    code, output, report = run_cli(command, "-q", *folded.cli_args("--before", future))

    assert code == 2
    line = one_error_line(output)
    assert "is in the future" in line and "--allow-future-before" in line
    assert folded.state() == state and folded.listing() == listing and no_outbox(folded)

    code, output, report = run_cli(command, "--dry-run", *folded.cli_args("--before", future, "--allow-future-before"))

    assert code == 0, output
    assert "is in the future" in output  # still said, as a warning


def test_progress_names_the_count_and_the_total(folded, run_cli, monkeypatch):
    expected: list[tuple] = []
    original = Report.expect
    monkeypatch.setattr(Report, "expect", lambda self, name, total=None: (expected.append((name, total)),
                                                                          original(self, name, total))[1])
    due = folded.due_tasks()

    code, output, report = run_cli("cleanup", *folded.cli_args("--max-tasks", "3"))
    assert code == 75, output  # stopped at its bound
    assert expected == [("tasks", 3)] and report["counts"]["tasks"] == 3

    expected.clear()
    code, output, report = run_cli("cleanup", "--orphans", "--grace", "0s", *folded.cli_args())
    assert code == 0, output
    assert expected == [("tasks", len(due) - 3), ("orphan_objects_scanned", None)]
    assert report["counts"]["tasks"] == len(due) - 3 and report["counts"]["orphan_objects_scanned"] > 0
