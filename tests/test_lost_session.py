"""A database session lost mid-run (a failover, a restart, an admin's pg_terminate_backend):
the fold and the cleanup connect again and resume from their last safe point (the fold's step
list, the cleanup's outbox) under --retry-deadline, as the rename and verify do (see
tests/test_exit_codes.py). Each job runs as its own process; the test ends its session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from ponos_dev import seed
from ponoskit import schema
from tests.fixtures.cleanup import expected_state

REPO = Path(__file__).resolve().parent.parent


def _terminate(dsn: str, application: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as admin:
        return admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                             "WHERE application_name = %s AND datname = current_database()",
                             (application,)).fetchone()[0]


def _wait_for(condition, what: str, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"the run ended before {what}: {log.read_text()}"
        assert time.monotonic() < deadline, f"waited {seconds}s for {what}: {log.read_text()}"
        time.sleep(0.05)


def test_the_folds_session_terminated_mid_run_resumes_and_finishes(legacy_dsn, tmp_path):
    with psycopg.connect(legacy_dsn, autocommit=True) as conn:
        seed.seed_database(conn, seed.SeedSpec(processes=200, tasks_per_process=(2, 4), seed=7))
    pause_file, report, log = tmp_path / "pause", tmp_path / "fold.json", tmp_path / "fold.log"
    pause_file.touch()  # held before its first backfill batch: a moment we can cut it at
    args = [sys.executable, "-c", "from migrate.cli import entry; entry()", "db-fold-workflow", "--dsn", legacy_dsn,
            "--phase", "expand", "--batch-size", "50", "--pause-file", str(pause_file), "--retry-deadline", "1m"]
    with open(log, "w") as stderr:
        fold = subprocess.Popen([*args, "--report", str(report)], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=stderr, text=True)
    try:
        _wait_for(lambda: "paused while" in log.read_text(), "the backfill's pause", fold, log)
        assert _terminate(legacy_dsn, "ponos-db-fold-workflow") >= 1
        pause_file.unlink()
        assert fold.wait(timeout=180) == 0, log.read_text()
    finally:
        if fold.poll() is None:
            fold.kill()
    written = json.loads(report.read_text())
    assert written["status"] == "done" and written["counts"]["database_sessions_lost"] >= 1
    assert "the database session was lost" in log.read_text()
    with psycopg.connect(legacy_dsn) as conn:
        assert schema.schema_state(conn) == schema.PARTIAL  # expanded: both shapes
        assert conn.execute("SELECT count(*) FROM ponos_task WHERE process_id IS NULL").fetchone()[0] == 0

    again = subprocess.run([*args, "--report", str(tmp_path / "again.json")], cwd=REPO, capture_output=True,
                           text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    phases = json.loads((tmp_path / "again.json").read_text())["phases"]
    assert [p["name"] for p in phases if p.get("status") == "done"] == ["verify"]  # only the check runs again


@pytest.mark.s3_servers("seaweedfs")  # a database fault: one S3 server is enough
def test_the_cleanups_session_terminated_mid_run_resumes_from_the_outbox(folded, s3_env, fault_proxy, tmp_path):
    # Deletes slowed: batches commit faster than their objects go, so the outbox holds work
    # owed when the session ends, and the resumed run must finish it.
    fault_proxy.add("slow", operations=("DeleteObjects",), seconds=0.2)
    state, listing, due = folded.state(), folded.listing(), folded.due_tasks()
    args = folded.cli_args("--batch-size", "2", "--retry-deadline", "1m")
    args[args.index("--endpoint-url") + 1] = fault_proxy.endpoint
    report, log = tmp_path / "cleanup.json", tmp_path / "cleanup.log"
    command = [sys.executable, "-c", "from maint.cli import entry; entry()", "cleanup", *args]
    with open(log, "w") as stderr:
        cleanup = subprocess.Popen([*command, "--report", str(report)], cwd=REPO, env={**os.environ, **s3_env},
                                   stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    try:
        _wait_for(lambda: fault_proxy.requests["DeleteObjects"] >= 3, "its third DeleteObjects", cleanup, log)
        assert _terminate(folded.dsn, "ponos-cleanup") >= 1
        assert cleanup.wait(timeout=180) == 0, log.read_text()
    finally:
        if cleanup.poll() is None:
            cleanup.kill()
    written = json.loads(report.read_text())
    assert written["status"] == "done" and written["counts"]["database_sessions_lost"] >= 1
    assert folded.state() == expected_state(state, due)
    assert folded.listing() == folded.expected_listing(listing, due)
    assert folded.outbox_rows() == set()

    fault_proxy.clear()
    again = subprocess.run([*command, "--report", str(tmp_path / "again.json")], cwd=REPO,
                           env={**os.environ, **s3_env}, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert not json.loads((tmp_path / "again.json").read_text())["counts"].get("tasks")
