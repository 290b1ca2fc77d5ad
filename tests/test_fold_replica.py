"""The expand's backfill throttles on a real streaming replica, and pauses when told to.

A primary (pgserver) and a standby made from it with pg_basebackup, streaming; the test
pauses the standby's replay (``pg_wal_replay_pause()``) so it falls behind as the backfill
writes, and the fold, run as its own process with ``--max-replica-lag``, must wait between
batches until replay resumes. The pause file and SIGUSR1/SIGUSR2 stop and restart a running
backfill without killing it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ponos_dev import local, seed

REPO = Path(__file__).resolve().parent.parent


def _bin(name: str) -> str:
    import pgserver
    return str(Path(pgserver.__file__).parent / "pginstall" / "bin" / name)


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    """(primary admin DSN, standby DSN): a streaming standby of a primary of this module's own."""
    root = tmp_path_factory.mktemp("replication")
    with local.postgres(root / "primary") as primary:
        info = conninfo_to_dict(primary)
        user = "pgserver" if os.geteuid() == 0 else None  # pgserver's servers do not run as root
        standby_dir = root / "standby"
        standby_dir.mkdir(mode=0o700)
        if user:
            shutil.chown(standby_dir, user)
            shutil.chown(root, user)
        subprocess.run([_bin("pg_basebackup"), "-h", info["host"], "-U", info["user"], "-D", str(standby_dir),
                        "-R", "-X", "stream"], user=user, check=True, capture_output=True)
        port = local._free_port()
        standby = subprocess.Popen([_bin("postgres"), "-D", str(standby_dir), "-c", f"port={port}",
                                    "-c", f"unix_socket_directories={standby_dir}", "-c", "listen_addresses="],
                                   user=user, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   preexec_fn=local._die_with_parent)
        standby_dsn = f"host={standby_dir} port={port} user={info['user']} dbname=postgres"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with psycopg.connect(standby_dsn, autocommit=True) as conn:
                        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
                    break
                except psycopg.OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            yield primary, standby_dsn
        finally:
            standby.terminate()
            standby.wait(timeout=30)


@pytest.fixture
def legacy_on_primary(replicated):
    primary, _ = replicated
    name = f"fold_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(primary, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(primary, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed.load_legacy_schema(conn)
        seed.seed_database(conn, seed.SeedSpec(processes=1500, tasks_per_process=(3, 8), seed=21))
    yield dsn
    with psycopg.connect(primary, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _fold(dsn: str, report: Path, *args: str) -> subprocess.Popen:
    """The expand as its own process; its log goes to report + '.log'."""
    # Small batches: the backfill lasts seconds, long enough to fall a second behind a paused replica.
    log = open(f"{report}.log", "w")
    return subprocess.Popen([sys.executable, "-c", "from migrate.cli import entry; entry()", "db-fold-workflow",
                             "--dsn", dsn, "--phase", "expand", "--batch-size", "5", "--report", str(report), *args],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, text=True)


def _log(report: Path) -> str:
    return Path(f"{report}.log").read_text()


def _tasks_backfilled(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        try:
            return conn.execute("SELECT count(process_id) FROM ponos_task").fetchone()[0]
        except psycopg.errors.UndefinedColumn:
            return 0


def test_the_backfill_waits_while_a_replica_lags_and_goes_on_when_it_catches_up(replicated, legacy_on_primary,
                                                                                tmp_path):
    _, standby = replicated
    report = tmp_path / "expand.json"
    with psycopg.connect(standby, autocommit=True) as replica:
        replica.execute("SELECT pg_wal_replay_pause()")
        try:
            fold = _fold(legacy_on_primary, report, "--max-replica-lag", "1s")
            deadline = time.monotonic() + 60
            while "backfill waiting" not in _log(report) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)
            held_at = _tasks_backfilled(legacy_on_primary)
            time.sleep(2)
            assert fold.poll() is None, _log(report)
            # Nothing more while it lags (the WAL of the expand's first steps may already hold it
            # before its first batch).
            assert held_at == _tasks_backfilled(legacy_on_primary) < _tasks(legacy_on_primary)
        finally:
            replica.execute("SELECT pg_wal_replay_resume()")
    fold.wait(timeout=120)
    err = _log(report)
    assert fold.returncode == 0, err
    assert "a replica is" in err and "behind" in err  # it said why it waited
    counts = json.loads(report.read_text())["counts"]
    assert counts["backfill_pauses"] >= 1 and counts["backfill_paused_ms"] >= 2000
    with psycopg.connect(legacy_on_primary) as conn:
        assert conn.execute("SELECT count(*) FROM ponos_task WHERE process_id IS NULL").fetchone()[0] == 0


def _tasks(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM ponos_task").fetchone()[0]


def test_an_operator_pauses_and_resumes_a_running_backfill(legacy_on_primary, tmp_path):
    pause_file = tmp_path / "pause"
    pause_file.touch()
    report = tmp_path / "expand.json"
    fold = _fold(legacy_on_primary, report, "--pause-file", str(pause_file))
    time.sleep(3)
    assert fold.poll() is None and _tasks_backfilled(legacy_on_primary) == 0  # paused before the first batch
    pause_file.unlink()
    deadline = time.monotonic() + 30
    while _tasks_backfilled(legacy_on_primary) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    fold.send_signal(signal.SIGUSR1)  # pause again, by signal this time
    time.sleep(1.0)
    held_at = _tasks_backfilled(legacy_on_primary)
    time.sleep(1.5)
    assert _tasks_backfilled(legacy_on_primary) == held_at and fold.poll() is None
    fold.send_signal(signal.SIGUSR2)
    fold.wait(timeout=120)
    assert fold.returncode == 0, _log(report)
    counts = json.loads(report.read_text())["counts"]
    assert counts["backfill_pauses"] >= 2
