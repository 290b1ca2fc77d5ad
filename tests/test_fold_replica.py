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
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ponos_dev import local, seed

# A primary and a streaming standby of this module's own, and backfills waiting on them: slow.
pytestmark = pytest.mark.slow

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
    fold = _fold(legacy_on_primary, report, "--pause-file", str(pause_file), "--log-format", "json",
                 "--progress-interval", "100ms")
    run = _Run(fold, report, legacy_on_primary)
    try:
        # Held by the pause file: the job says so, before its first batch.
        run.wait_until(lambda: run.messages(f"backfill waiting: paused while {pause_file} exists"),
                       "the job to say it waits on the pause file")
        first = run.hold(pauses=1, waits_ended=0)
        assert first.rows == 0  # nothing backfilled before the first batch
        pause_file.unlink()
        run.wait_until(lambda: len(run.messages("backfill resumed after")) == 1, "the job to resume")
        assert run.resumed_seconds()[0] >= first.seconds - 0.05  # its wait spans the hold we saw (%.1f)
        run.wait_until(lambda: run.rows() > 0, "the first batches after the pause file went")

        fold.send_signal(signal.SIGUSR1)  # pause again, by signal this time
        second = run.hold(pauses=2, waits_ended=1)
        assert 0 < second.rows < run.total
        fold.send_signal(signal.SIGUSR2)
        run.wait_until(lambda: len(run.messages("backfill resumed after")) == 2, "the job to resume after SIGUSR2")
        assert run.resumed_seconds()[1] >= second.seconds - 0.05
        fold.wait(timeout=120)
    finally:
        if fold.poll() is None:
            fold.kill()
            fold.wait()
    assert fold.returncode == 0, _log(report)
    counts = json.loads(report.read_text())["counts"]
    assert counts["backfill_pauses"] == 2
    assert counts["backfill_paused_ms"] >= int(first.seconds * 1000) + int(second.seconds * 1000) - 1
    assert run.rows() == run.total  # every batch held back went after all
    with psycopg.connect(legacy_on_primary) as conn:
        assert conn.execute("SELECT count(*) FROM ponos_task WHERE process_id IS NULL").fetchone()[0] == 0


@dataclass
class _Hold:
    rows: int  # rows backfilled while it held
    seconds: float  # how long we saw it hold


class _Run:
    """A fold running as its own process, watched through its JSON log (its messages and the
    heartbeat's counts) and the rows it has backfilled."""

    HOLD_SECONDS = 2.5  # job time a hold must last: over two of the throttle's 1 s re-checks

    def __init__(self, process: subprocess.Popen, report: Path, dsn: str):
        self.process, self.report, self.dsn = process, report, dsn
        with psycopg.connect(dsn) as conn:
            self.total = conn.execute(
                "SELECT (SELECT count(*) FROM ponos_task WHERE workflow_id IS NOT NULL) + "
                "(SELECT count(*) FROM process_process WHERE workflow_id IS NOT NULL)").fetchone()[0]

    def events(self) -> list[dict]:
        found = []
        for line in _log(self.report).splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                found.append(event)
        return found

    def messages(self, start: str) -> list[str]:
        return [e["message"] for e in self.events() if str(e.get("message", "")).startswith(start)]

    def resumed_seconds(self) -> list[float]:
        return [float(re.search(r"after ([0-9.]+)s", m)[1]) for m in self.messages("backfill resumed after")]

    def progress(self) -> list[dict]:
        return [e for e in self.events() if e.get("event") == "progress"]

    def rows(self) -> int:
        """Rows the backfill has set: started processes, tasks with their process."""
        with psycopg.connect(self.dsn) as conn:
            try:
                return conn.execute("SELECT (SELECT count(process_id) FROM ponos_task) + "
                                    "(SELECT count(started) FROM process_process)").fetchone()[0]
            except psycopg.errors.UndefinedColumn:
                return 0

    def wait_until(self, condition, what: str, timeout: float = 60.0):
        deadline = time.monotonic() + timeout
        while True:
            found = condition()
            if found:
                return found
            if self.process.poll() is not None:
                pytest.fail(f"the fold exited ({self.process.returncode}) while waiting for {what}; "
                            f"its log:\n{_log(self.report)}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; rows backfilled {self.rows()} "
                            f"of {self.total}; its log:\n{_log(self.report)}")
            time.sleep(0.05)

    def hold(self, *, pauses: int, waits_ended: int) -> _Hold:
        """See the throttle hold: the job counts its pause, then its heartbeat goes on for
        HOLD_SECONDS of the job's time with its backfill counts standing still, the rows in the
        database too, and its wait not ended."""
        def backfilled(event: dict) -> int:
            return sum(n for name, n in event["counts"].items() if name.startswith("backfilled_"))

        entered = self.wait_until(
            lambda: next((e for e in self.progress() if e["counts"].get("backfill_pauses", 0) == pauses), None),
            f"the job to count pause {pauses}")
        seen_from = time.monotonic()
        rows = self.rows()
        self.wait_until(lambda: self.progress()[-1]["seconds"] >= entered["seconds"] + self.HOLD_SECONDS,
                        f"{self.HOLD_SECONDS}s of the job's time in pause {pauses}")
        held = [e for e in self.progress() if e["seconds"] >= entered["seconds"]]
        # Its own counts: no batch, no other pause while it waits.
        assert {(e["counts"].get("backfill_pauses"), backfilled(e)) for e in held} \
            == {(pauses, backfilled(entered))}, \
            f"the job's counts moved in pause {pauses}: {[(e['seconds'], e['counts']) for e in held]}"
        assert self.rows() == rows
        assert len(self.messages("backfill resumed after")) == waits_ended and self.process.poll() is None, \
            _log(self.report)  # ...and it still waits, after the rows were read
        return _Hold(rows, time.monotonic() - seen_from)
