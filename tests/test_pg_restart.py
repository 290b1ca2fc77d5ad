"""PostgreSQL restarted under a running job (what a failover or a minor upgrade does): the job
waits, connects again and finishes, under --retry-deadline. A private PostgreSQL per test (the
suite's own is shared by the parallel tests), restarted with ``pg_ctl restart -m fast``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from ponos_dev import local, seed
from tests.fixtures.rename import cli_command

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.s3_servers("seaweedfs"),  # a database fault: one S3 server is enough
              pytest.mark.slow]  # a private PostgreSQL, restarted


def _restart(datadir: Path) -> None:
    from pgserver import _commands
    # As root, pgserver runs PostgreSQL as its own user "pgserver": pg_ctl must be that user too.
    as_user = {"user": "pgserver"} if os.geteuid() == 0 else {}
    _commands.pg_ctl(["-w", "-m", "fast", "restart"], pgdata=datadir, **as_user)


@pytest.fixture
def private_pg(tmp_path):
    datadir = tmp_path / "pg"
    with local.postgres(datadir) as dsn:
        yield dsn, datadir


def test_the_rename_waits_through_a_postgres_restart_and_finishes(private_pg, context_factory, make_bucket, s3_env,
                                                                  fault_proxy, tmp_path):
    dsn, datadir = private_pg
    ctx = context_factory(dsn)
    artifacts, logs = make_bucket("artifacts"), make_bucket("logs")
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed.load_legacy_schema(conn)
        seed.seed_database(conn, seed.SeedSpec(processes=100, artifacts_per_task=(1, 3), seed=5))
        seed.seed_s3(ctx, conn, artifacts_bucket=artifacts, logs_bucket=logs, seed=5)
    fault_proxy.add("slow", operations=("CopyObject",), seconds=0.05)
    args = ["s3-rename", "--artifacts-bucket", artifacts, "--logs-bucket", logs, "--dsn", dsn, "--workers", "4",
            "--checkpoint", str(tmp_path / "rename.checkpoint"), "--retry-deadline", "2m", "--progress-interval", "0.5"]
    report = tmp_path / "rename.json"
    proc = subprocess.Popen(cli_command(*args, "--endpoint-url", fault_proxy.endpoint, "--report", str(report)),
                            cwd=REPO, env={**os.environ, **s3_env}, stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while fault_proxy.requests["CopyObject"] < 40:
        assert proc.poll() is None and time.monotonic() < deadline, "".join(stderr)
        time.sleep(0.05)
    _restart(datadir)
    fault_proxy.clear()  # slowed only until the restart: the rest (and the final check) at full speed
    assert proc.wait(timeout=300) == 0, "".join(stderr)
    reader.join(timeout=10)
    written = json.loads(report.read_text())
    assert written["status"] == "done" and written["counts"]["moved"] > 40 and not written["counts"].get("failed")

    again = subprocess.run(cli_command(*args, "--endpoint-url", fault_proxy.endpoint,
                                       "--report", str(tmp_path / "again.json")),
                           cwd=REPO, env={**os.environ, **s3_env}, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert not json.loads((tmp_path / "again.json").read_text())["counts"].get("moved")


def test_the_fold_resumes_after_a_postgres_restart(private_pg, tmp_path):
    dsn, datadir = private_pg
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed.load_legacy_schema(conn)
        seed.seed_database(conn, seed.SeedSpec(processes=200, tasks_per_process=(2, 4), seed=9))
    pause_file, report, log = tmp_path / "pause", tmp_path / "fold.json", tmp_path / "fold.log"
    pause_file.touch()  # the backfill holds before its first batch: a moment to restart at
    args = [sys.executable, "-c", "from migrate.cli import entry; entry()", "db-fold-workflow", "--dsn", dsn,
            "--batch-size", "50", "--pause-file", str(pause_file), "--retry-deadline", "2m"]
    with open(log, "w") as err:
        fold = subprocess.Popen([*args, "--report", str(report)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while "paused while" not in log.read_text():
            assert fold.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        _restart(datadir)
        pause_file.unlink()
        assert fold.wait(timeout=300) == 0, log.read_text()
    finally:
        if fold.poll() is None:
            fold.kill()
    assert json.loads(report.read_text())["counts"]["database_sessions_lost"] >= 1
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT to_regclass('ponos_workflow') IS NULL").fetchone()[0]  # folded whole
    again = subprocess.run([*args, "--report", str(tmp_path / "again.json")], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again.json").read_text())["already_folded"] is True
