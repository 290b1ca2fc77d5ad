"""One table of exit codes, kept by every command: the README's, ponoskit.runtime's, the code's."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from maint.cli import main as maint_main
from migrate.cli import main as migrate_main
from ponoskit.runtime import EXIT_CODES, Status
from tests.fixtures.rename import cli_command

README = Path(__file__).resolve().parent.parent / "README.md"
SECRET = "pw-s3cr3t-75"


def test_the_readme_table_is_the_runtime_table():
    rows = re.findall(r"^\| `(\w+)` \| (\d+) \|", README.read_text(), flags=re.MULTILINE)
    assert {status: int(code) for status, code in rows} == {s.value: code for s, code in EXIT_CODES.items()}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


COMMANDS = {  # every command that reaches PostgreSQL, with its buckets
    "s3-rename": (migrate_main, ["s3-rename", "--artifacts-bucket", "{a}", "--logs-bucket", "{l}"]),
    "verify": (migrate_main, ["verify", "--artifacts-bucket", "{a}", "--logs-bucket", "{l}"]),
    "db-fold-workflow": (migrate_main, ["db-fold-workflow"]),
    "cleanup": (maint_main, ["cleanup", "--artifacts-bucket", "{a}", "--logs-bucket", "{l}"]),
    "orphans": (maint_main, ["orphans", "--artifacts-bucket", "{a}", "--logs-bucket", "{l}"]),
}


def invoke(group, args, tmp_path):
    report = tmp_path / f"report-{time.monotonic_ns()}.json"
    result = CliRunner().invoke(group, [*args, "--report", str(report)], catch_exceptions=False)
    return result.exit_code, result.output, json.loads(report.read_text()) if report.exists() else None


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_postgresql_out_of_reach_is_transient_for_every_command(command, seeded, s3_env, tmp_path):
    group, args = COMMANDS[command]
    args = [a.format(a=seeded["artifacts"], l=seeded["logs"]) for a in args]
    dsn = f"postgresql://ponos:{SECRET}@127.0.0.1:{_closed_port()}/ponos"
    code, output, report = invoke(group, [*args, "--dsn", dsn, "--endpoint-url", s3_env["AWS_ENDPOINT_URL"]]
                                  if command != "db-fold-workflow" else [*args, "--dsn", dsn], tmp_path)
    assert code == EXIT_CODES[Status.TRANSIENT] == 75, output
    assert [line for line in output.splitlines() if line.strip()][-1].startswith("Error: ")
    assert SECRET not in output
    if report is not None:
        assert report["status"] == "transient" and report["exit_code"] == 75 and SECRET not in json.dumps(report)


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - {"db-fold-workflow"}))
def test_a_missing_bucket_is_refused_for_every_command(command, seeded, s3_env, tmp_path):
    group, args = COMMANDS[command]
    args = [a.format(a="no-such-bucket-for-ponos", l=seeded["logs"]) for a in args]
    code, output, report = invoke(group, [*args, "--dsn", seeded["dsn"], "--endpoint-url",
                                          s3_env["AWS_ENDPOINT_URL"]], tmp_path)
    assert code == EXIT_CODES[Status.REFUSED] == 2, output
    if report is not None:
        assert report["status"] == "refused" and report["exit_code"] == 2


@pytest.mark.slow
@pytest.mark.s3_servers("seaweedfs")
def test_the_renames_database_session_terminated_mid_run_reconnects_and_finishes(bigger, s3_env, tmp_path,
                                                                                 fault_proxy):
    """What a failover or an admin's pg_terminate_backend does to the rename: it connects again
    and carries on (it was exit 1); the same command again changes nothing."""
    fault_proxy.add("slow", operations=("CopyObject",), seconds=0.05)
    report = tmp_path / "rename.json"
    args = ["s3-rename", "--artifacts-bucket", bigger["artifacts"], "--logs-bucket", bigger["logs"],
            "--dsn", bigger["dsn"], "--checkpoint", str(tmp_path / "rename.checkpoint"), "--workers", "4",
            "--progress-interval", "0"]
    proc = subprocess.Popen(cli_command(*args, "--endpoint-url", fault_proxy.endpoint, "--report", str(report)),
                            env={**os.environ, **s3_env}, stderr=subprocess.PIPE, text=True)
    with psycopg.connect(bigger["dsn"], autocommit=True) as admin:
        deadline = time.monotonic() + 60
        while fault_proxy.requests["CopyObject"] < 50:
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be cut"
            time.sleep(0.05)
        killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE application_name = 'ponos-s3-rename' AND datname = current_database()"
                               ).fetchone()[0]
    assert killed >= 1
    fault_proxy.clear()  # the copies were slowed only until the cut: the rest may run at full speed
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    written = json.loads(report.read_text())
    assert written["exit_code"] == 0 and written["status"] == "done"
    assert written["counts"]["moved"] > 50 and not written["counts"].get("failed")

    fault_proxy.clear()  # the same endpoint: the checkpoint belongs to it
    rerun = subprocess.run(cli_command(*args, "--endpoint-url", fault_proxy.endpoint,
                                "--report", str(tmp_path / "again.json")),
                           env={**os.environ, **s3_env}, stderr=subprocess.PIPE, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["status"] == "done" and not again["counts"].get("moved")


@pytest.mark.slow
@pytest.mark.s3_servers("seaweedfs")
def test_a_database_that_stays_away_is_transient_past_the_deadline(bigger, s3_env, tmp_path, fault_proxy):
    """Every new session refused (a failover that does not end): the rename waits, says so,
    and stops with 75 at --retry-deadline, its checkpoint kept for the next run."""
    fault_proxy.add("slow", operations=("CopyObject",), seconds=0.05)
    report = tmp_path / "rename.json"
    proc = subprocess.Popen(cli_command("s3-rename", "--artifacts-bucket", bigger["artifacts"], "--logs-bucket",
                                 bigger["logs"], "--dsn", bigger["dsn"], "--checkpoint", str(tmp_path / "c"),
                                 "--workers", "4", "--retry-deadline", "3s", "--progress-interval", "0.5",
                                 "--endpoint-url", fault_proxy.endpoint, "--report", str(report)),
                            env={**os.environ, **s3_env}, stderr=subprocess.PIPE, text=True)
    dbname = conninfo_to_dict(bigger["dsn"])["dbname"]
    with psycopg.connect(make_conninfo(bigger["dsn"], dbname="postgres"), autocommit=True) as admin:
        deadline = time.monotonic() + 60
        while fault_proxy.requests["CopyObject"] < 30:
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be cut"
            time.sleep(0.05)
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        try:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'ponos-s3-rename' AND datname = %s", (dbname,))
            fault_proxy.clear()  # slowed only until the cut: the copies in flight settle at once
            _, err = proc.communicate(timeout=120)
        finally:
            admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
    assert proc.returncode == 75, err
    assert "waiting for PostgreSQL" in err and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("Error: ")][0].count("PostgreSQL") >= 1
    assert json.loads(report.read_text())["status"] == "transient"
