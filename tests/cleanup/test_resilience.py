"""ponos-maint cleanup under trouble: the lock, concurrent runs, SIGKILL, SIGTERM, S3 down, bad input.

Crash and concurrency tests run the console script in a subprocess, as cron would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from datetime import datetime, timezone

import psycopg
import pytest

from maint.cleanup import LOCK_KEY
from ponoskit.keys import CANARY_PREFIX
from ponos_dev.seed import SeedSpec, seed_database
from tests.fixtures.cleanup import expected_state, maint_command, make_folded, one_error_line


@pytest.fixture
def bigger_folded(make_database, context_factory, make_bucket):
    """Enough due tasks that a run with --batch-size 1 lasts long enough to be interrupted."""
    return make_folded(make_database, context_factory, make_bucket,
                       SeedSpec(processes=70, seed=9, now=datetime.now(timezone.utc)))


def _remaining(folded) -> set[str]:
    with psycopg.connect(folded.dsn) as conn:
        return {r[0] for r in conn.execute("SELECT id::text FROM ponos_task").fetchall()}


def _assert_finished(folded, state, listing, due) -> None:
    assert folded.state() == expected_state(state, due)
    assert folded.listing() == folded.expected_listing(listing, due)
    assert folded.outbox_rows() == set()


def _interrupt_mid_run(folded, sig: int) -> tuple[subprocess.CompletedProcess, int]:
    """Start a run, send ``sig`` once a few batches committed; return it and the due tasks left then."""
    due = folded.due_tasks()
    proc = subprocess.Popen([*maint_command(), "cleanup", *folded.cli_args("--batch-size", "1")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(due & _remaining(folded)) > len(due) - 3:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    left = len(due & _remaining(folded))
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), left


def test_lock_held_by_another_run_exits_3_and_changes_nothing(folded, run_cli):
    state, listing = folded.state(), folded.listing()
    with psycopg.connect(folded.dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))

        code, output, report = run_cli("cleanup", *folded.cli_args())

    assert code == 3, output
    assert "another ponos-maint cleanup is running" in output
    assert report["status"] == "locked" and report["exit_code"] == 3
    assert folded.state() == state and folded.listing() == listing


def test_two_concurrent_runs(folded):
    state, listing, due = folded.state(), folded.listing(), folded.due_tasks()
    command = [*maint_command(), "cleanup", *folded.cli_args("--batch-size", "1")]

    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=120), run.communicate()[1]) for run in runs]

    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 3]), results
    for code, err in results:
        if code == 3:
            assert "another ponos-maint cleanup is running" in err
    _assert_finished(folded, state, listing, due)


def test_sigkill_mid_run_then_rerun_finishes_with_nothing_orphaned(bigger_folded, run_cli):
    state, listing, due = bigger_folded.state(), bigger_folded.listing(), bigger_folded.due_tasks()

    killed, left = _interrupt_mid_run(bigger_folded, signal.SIGKILL)

    assert killed.returncode == -signal.SIGKILL
    assert left > 0, "the kill must land before the run finished"
    deleted = due - _remaining(bigger_folded)
    # Every task already gone either has its files gone or its targets still in the outbox.
    owed = {(b, k) for b, k, _ in bigger_folded.outbox_rows()}
    expected_gone = bigger_folded.expected_listing(listing, deleted)
    for role, bucket in (("artifacts", bigger_folded.artifacts), ("logs", bigger_folded.logs)):
        for key in set(bigger_folded.listing()[role]) - set(expected_gone[role]):
            assert any(bucket == b and key.startswith(k) for b, k in owed), key

    code, output, report = run_cli("cleanup", *bigger_folded.cli_args())

    assert code == 0, output
    assert report["counts"]["outbox_rows_pending_at_start"] == len(owed)
    _assert_finished(bigger_folded, state, listing, due)


def test_sigterm_stops_between_batches_then_rerun_finishes(bigger_folded, run_cli):
    state, listing, due = bigger_folded.state(), bigger_folded.listing(), bigger_folded.due_tasks()

    stopped, left = _interrupt_mid_run(bigger_folded, signal.SIGTERM)

    assert stopped.returncode == 143, stopped.stderr  # as every job stopped by SIGTERM
    assert "stopped by a signal" in stopped.stderr
    assert left > 0
    gone = due - _remaining(bigger_folded)
    assert bigger_folded.state() == expected_state(state, gone)  # whole batches only
    assert bigger_folded.listing() == bigger_folded.expected_listing(listing, gone)  # their files too
    assert bigger_folded.outbox_rows() == set()

    code, output, _ = run_cli("cleanup", *bigger_folded.cli_args())

    assert code == 0, output
    _assert_finished(bigger_folded, state, listing, due)


def test_s3_failing_after_commit_keeps_keys_in_outbox_then_next_run_deletes_them(folded, run_cli, fault_proxy):
    state, listing, due = folded.state(), folded.listing(), folded.due_tasks()
    owed_by_due = folded.owed_rows(due)  # the keys the rows name, read before they go
    # S3 answers its preflight (the canaries), then every listing and delete fails (500) past the retries.
    fault_proxy.add("internal", operations=("ListObjectsV2", "DeleteObjects", "DeleteObject"),
                    skip_key=CANARY_PREFIX)
    args = folded.cli_args("--batch-size", "3", "--retry-deadline", "1s", "--s3-max-attempts", "2")
    args[args.index("--endpoint-url") + 1] = fault_proxy.endpoint
    code, output, report = run_cli("cleanup", *args)

    assert fault_proxy.fired("internal") > 0
    assert code == 75, output  # transient: run again later
    assert report["status"] == "transient"
    assert any("InternalError" in e for e in report["errors"])
    deleted = due - _remaining(folded)
    assert deleted, "at least the first batch committed"
    assert folded.state() == expected_state(state, deleted)  # DB rows gone...
    assert folded.listing() == listing  # ...objects all still there...
    owed = {row for row in owed_by_due if row[1][:36] in deleted}
    assert folded.outbox_rows() == owed  # ...and owed

    code, output, report = run_cli("cleanup", *folded.cli_args())

    assert code == 0, output
    assert report["counts"]["outbox_rows_pending_at_start"] == len(owed)
    _assert_finished(folded, state, listing, due)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_bad_input_or_unreachable_service_is_one_line_changes_nothing_and_shows_no_password(folded, run_cli,
                                                                                           monkeypatch):
    state, listing = folded.state(), folded.listing()
    secret = "pw-s3cr3t-9f2"
    unreachable_db = f"postgresql://cleaner:{secret}@127.0.0.1:{_closed_port()}/ponos"
    monkeypatch.delenv("PONOS_ARTIFACTS_BUCKET", raising=False)
    s3_down = folded.cli_args("--s3-max-attempts", "1")
    s3_down[s3_down.index("--endpoint-url") + 1] = f"http://127.0.0.1:{_closed_port()}"
    cases = [  # nobody answering may be a failover: 75, run again later; the rest is configuration
        (s3_down, "cannot reach S3", 75),
        (folded.cli_args("--before", "last tuesday"), "is not an ISO 8601 timestamp", 2),
        (folded.cli_args("--max-runtime", "ten minutes"), "is not a duration", 2),
        (folded.cli_args("--grace", "1 week"), "is not a duration", 2),
        (folded.cli_args("--artifacts-bucket", "no-such-bucket-for-ponos"), "does not exist", 2),
        (["--dsn", unreachable_db, *folded.cli_args()[2:]], "cannot connect to PostgreSQL", 75),
        (["--logs-bucket", folded.logs], "--artifacts-bucket and --logs-bucket are required", 2),
    ]
    for args, message, exit_code in cases:
        code, output, report = run_cli("cleanup", "-q", *args)

        assert code == exit_code, (args, output)
        assert message in one_error_line(output)
        assert secret not in output and secret not in str(report)
        if report is not None:  # written once the job started
            assert report["status"] == {2: "refused", 75: "transient"}[exit_code]
            assert report["exit_code"] == exit_code
    assert folded.state() == state and folded.listing() == listing
    assert folded.outbox_rows() == set()


def test_legacy_schema_is_refused(make_database, make_bucket, run_cli, s3_env):
    dsn = make_database("legacy")
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed_database(conn, SeedSpec(processes=4, seed=2))
        before = conn.execute("SELECT count(*) FROM ponos_task").fetchone()[0]

    code, output, _ = run_cli("cleanup", "-q", "--dsn", dsn, "--artifacts-bucket", make_bucket("a"),
                              "--logs-bucket", make_bucket("l"), "--endpoint-url", s3_env["AWS_ENDPOINT_URL"])

    assert code == 2
    assert "schema is legacy, not folded" in one_error_line(output)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM ponos_task").fetchone()[0] == before
        assert conn.execute("SELECT to_regclass('ponos_cleanup_outbox')").fetchone()[0] is None


def test_console_script_is_installed():
    assert os.path.basename(maint_command()[0]) == "ponos-maint"
