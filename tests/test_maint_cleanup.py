"""ponos-maint cleanup and orphans: --max-tasks, a --before in the future, --max-rps, the keys rows
name vs --list-prefixes, an older run's outbox, the permission preflight, the dry run's bill,
and the progress count. Real PostgreSQL and S3 (the fault proxy where a fault is needed).
"""

from __future__ import annotations

import time

import psycopg
import pytest

from maint import outbox
from ponoskit import keys, tasks
from ponoskit.report import Report
from tests.test_cleanup_fixtures import expected_state, folded, later, run_cli  # noqa: F401 - fixtures


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    return lines[0]


def _through(folded, proxy, *extra: str) -> list[str]:
    args = folded.cli_args(*extra)
    args[args.index("--endpoint-url") + 1] = proxy.endpoint
    return args


def _no_outbox(folded) -> bool:
    with psycopg.connect(folded.dsn) as conn:
        return conn.execute("SELECT to_regclass('ponos_cleanup_outbox')").fetchone()[0] is None


# --- 1. --max-tasks -----------------------------------------------------------------------

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


# --- 2. --before in the future ---------------------------------------------------------------

@pytest.mark.parametrize("command", ["cleanup", "orphans"])
def test_before_in_the_future_is_refused_unless_allowed(folded, run_cli, command):
    state, listing = folded.state(), folded.listing()
    future = later(folded.now, hours=1)

    code, output, report = run_cli(command, "-q", *folded.cli_args("--before", future))

    assert code == 2
    line = _one_error_line(output)
    assert "is in the future" in line and "--allow-future-before" in line
    assert folded.state() == state and folded.listing() == listing and _no_outbox(folded)

    code, output, report = run_cli(command, "--dry-run", *folded.cli_args("--before", future, "--allow-future-before"))

    assert code == 0, output
    assert "is in the future" in output  # still said, as a warning


# --- 3. --max-rps ----------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["cleanup", "orphans"])
def test_max_rps_keeps_the_request_rate_under_the_ceiling(folded, run_cli, fault_proxy, command):
    if command == "orphans":  # tasks gone behind S3's back: one listing per task's entry
        with psycopg.connect(folded.dsn, autocommit=True) as conn, conn.transaction():
            tasks.delete_tasks(conn, sorted(folded.due_tasks()))
    sent: list[float] = []
    fault_proxy.add("hook", operations=("ListObjectsV2",), action=lambda: sent.append(time.monotonic()))
    extra = ("--list-prefixes", "--batch-size", "3") if command == "cleanup" else ("--grace", "0s")
    rps = 40

    code, output, report = run_cli(command, "--dry-run", *_through(folded, fault_proxy, "--max-rps", str(rps), *extra))

    assert code == 0, output
    assert len(sent) >= 20, "enough requests to see a rate"
    assert sent[-1] - sent[0] >= 0.9 * (len(sent) - 1) / rps
    busiest = max(sum(1 for t in sent if start <= t < start + 1.0) for start in sent)
    assert busiest <= rps + 1


# --- 4. the keys rows name, --list-prefixes, an older run's outbox ----------------------------

def test_list_prefixes_lists_and_deletes_objects_without_rows_too(folded, run_cli):
    state, listing, due = folded.state(), folded.listing(), folded.due_tasks()

    code, output, report = run_cli("cleanup", *folded.cli_args("--list-prefixes", "--batch-size", "7"))

    assert code == 0, output
    assert folded.state() == expected_state(state, due)
    expected = folded.expected_listing(listing, due, prefixes=True)
    assert folded.listing() == expected
    assert expected != folded.expected_listing(listing, due)  # objects without rows were there, and went
    assert report["counts"]["s3_listings"] > 0 and report["s3_requests"]["LIST"] > 2 * 2
    assert report["counts"]["s3_objects"] == sum(len(listing[b]) - len(expected[b]) for b in listing)
    assert folded.outbox_rows() == set()


def test_an_outbox_written_by_an_older_run_still_drains(folded, run_cli):
    """Prefix targets (what earlier releases wrote) and key targets, owed for tasks already gone."""
    state, listing, due = folded.state(), folded.listing(), folded.due_tasks()
    older, newer = sorted(due)[:2], sorted(due)[2:4]
    with psycopg.connect(folded.dsn, autocommit=True) as conn:
        outbox.ensure(conn)
        with conn.transaction():
            owed = outbox.targets_for_tasks(older, artifacts_bucket=folded.artifacts, logs_bucket=folded.logs)
            owed += outbox.targets_for_rows(conn, newer, artifacts_bucket=folded.artifacts, logs_bucket=folded.logs)
            tasks.delete_tasks(conn, [*older, *newer])
            outbox.add(conn, owed)
    assert {kind for _, _, kind in folded.outbox_rows()} == {outbox.KEY, outbox.PREFIX}

    code, output, report = run_cli("cleanup", *folded.cli_args())

    assert code == 0, output
    assert report["counts"]["outbox_rows_pending_at_start"] == len(owed)
    assert folded.outbox_rows() == set()
    assert folded.state() == expected_state(state, due)
    # The older run's prefixes were listed (objects without rows went); the rest, keys only.
    expected = folded.expected_listing(listing, due)
    prefixed = folded.expected_listing(listing, set(older), prefixes=True)
    assert folded.listing() == {role: {k: v for k, v in expected[role].items() if k in prefixed[role]}
                                for role in expected}


# --- 5. the permission preflight ------------------------------------------------------------

@pytest.mark.parametrize("command", ["cleanup", "orphans"])
def test_a_refused_delete_is_found_by_the_canary_exit_2_before_any_change(folded, run_cli, fault_proxy, command):
    state, listing = folded.state(), folded.listing()
    fault_proxy.add("denied", operations=("DeleteObject", "DeleteObjects"), bucket=folded.logs)

    code, output, report = run_cli(command, "-q", *_through(folded, fault_proxy))

    assert code == 2, output
    line = _one_error_line(output)
    assert "s3:DeleteObject" in line and folded.logs in line
    assert fault_proxy.fired("denied") >= 1
    assert folded.state() == state and _no_outbox(folded)
    assert folded.listing() == listing
    canaries = [k for objects in folded.listing(canaries=True).values() for k in objects if keys.is_canary(k)]
    assert len(canaries) == 1  # the one it could not delete (a later run sweeps it, once stale)
    assert report["status"] == "refused"


def test_a_dry_run_checks_listing_only_and_names_a_missing_s3_listbucket(folded, run_cli, fault_proxy):
    code, output, report = run_cli("cleanup", "--dry-run", *_through(folded, fault_proxy))
    assert code == 0, output
    assert fault_proxy.requests["PutObject"] == 0
    assert fault_proxy.requests["DeleteObject"] == fault_proxy.requests["DeleteObjects"] == 0

    fault_proxy.add("denied", operations=("ListObjectsV2",), bucket=folded.artifacts)
    code, output, report = run_cli("cleanup", "-q", "--dry-run", *_through(folded, fault_proxy))

    assert code == 2, output
    line = _one_error_line(output)
    assert "s3:ListBucket" in line and folded.artifacts in line


def test_a_refused_canary_put_is_no_reason_to_stop_a_job_that_never_writes(folded, run_cli, fault_proxy):
    state, listing, due = folded.state(), folded.listing(), folded.due_tasks()
    fault_proxy.add("denied", operations=("PutObject",))

    code, output, report = run_cli("cleanup", *_through(folded, fault_proxy))

    assert code == 0, output
    assert fault_proxy.fired("denied") == 2  # one canary per bucket
    assert all("s3:PutObject refused" in " ".join(p["notes"]) for p in report["s3_permissions"].values())
    assert fault_proxy.requests["DeleteObject"] >= 2  # the delete was checked all the same
    assert folded.state() == expected_state(state, due)
    assert folded.listing() == folded.expected_listing(listing, due)


# --- 6. the dry run's bill ------------------------------------------------------------------

@pytest.mark.parametrize("mode", [(), ("--list-prefixes",)])
def test_dry_run_bills_the_requests_the_real_run_makes(folded, run_cli, mode):
    code, output, dry = run_cli("cleanup", "--dry-run", *folded.cli_args("--prices", "LIST=1,DELETE=0.5", *mode))

    assert code == 0, output
    bill = dry["bill"]
    assert "S3 requests: LIST" in output and "in requests" in output  # the one summary line
    assert bill["prices"]["LIST"] == 1.0 and bill["prices"]["DELETE"] == 0.5
    expected_usd = sum(n * bill["prices"][kind] / 1000 for kind, n in bill["requests"].items())
    assert bill["estimated_usd"]["requests"] == round(expected_usd, 4) > 0

    code, output, real = run_cli("cleanup", *folded.cli_args(*mode))

    assert code == 0, output
    sent = real["s3_requests"]
    for kind in ("LIST", "PUT", "HEAD", "GET"):
        assert bill["requests"].get(kind, 0) == sent.get(kind, 0), kind
    # DeleteObjects batches depend on timing (a buffer flushes after 0.1 s too): estimated.
    assert sent["DELETE"] / 2 <= bill["requests"]["DELETE"] <= 2 * sent["DELETE"]


def test_orphans_dry_run_bill_and_bad_prices(folded, run_cli):
    code, output, dry = run_cli("orphans", "--dry-run", *folded.cli_args("--grace", "0s"))
    assert code == 0, output
    assert dry["bill"]["requests"]["LIST"] >= 2 and "S3 requests:" in output

    for command in ("cleanup", "orphans"):
        code, output, _ = run_cli(command, "-q", "--dry-run", *folded.cli_args("--prices", "LIST=cheap"))
        assert code == 2
        assert "--prices" in _one_error_line(output)


# --- 9. progress ----------------------------------------------------------------------------

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
