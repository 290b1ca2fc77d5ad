"""Operations at production scale: progress while a job runs, a time budget, a dry run's bill,
verify's short transactions. Against the real test servers, slowed down by the fault proxy
where a run must last long enough to be watched."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from ponoskit.cli import _JsonFormatter
from ponoskit.heartbeat import Heartbeat
from ponoskit.metrics import write_textfile
from ponoskit.report import Report
from ponoskit.s3.bill import Bill, parse_prices
from ponoskit.errors import ConfigError
from tests.helpers import list_keys
from tests.fixtures.rename import assert_moved, expected_moves, run_verify, state_of


# --- the heartbeat alone ----------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_progress_line_gives_counts_rate_and_time_left(caplog):
    report = Report("cleanup")
    report.expect("tasks_deleted", total=1000)
    clock = FakeClock()
    heartbeat = Heartbeat(lambda: report, 30, clock=clock)
    report.count("tasks_deleted", 100)
    report._started = time.time() - 10  # ten seconds in
    with caplog.at_level(logging.INFO, logger="ponos.progress"):
        first = heartbeat.beat()
        clock.now += 5
        report.count("tasks_deleted", 100)
        second = heartbeat.beat()
    assert first["done"] == 100 and first["total"] == 1000 and "rate_per_second" not in first
    assert second["rate_per_second"] == 20.0  # 100 more in 5 s
    assert 35 <= second["eta_seconds"] <= 45  # 800 left at 200 in 10 s on average since the start
    assert second["counts"] == {"tasks_deleted": 200}
    line = caplog.records[-1].getMessage()
    assert line.startswith("progress cleanup:") and "tasks deleted 200 of 1,000 (20.0/s)" in line and "about 40s left" in line


def test_a_json_progress_line_carries_the_reports_counts():
    report = Report("s3-rename")
    report.expect("scanned")
    report.count("scanned", 42)
    report.count("moved", 40)
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger("ponos.progress")
    handler = Keep()
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        Heartbeat(lambda: report, 30).beat()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    line = json.loads(_JsonFormatter().format(records[-1]))
    assert line["event"] == "progress" and line["counts"] == {"moved": 40, "scanned": 42}
    assert line["measure"] == "scanned" and line["done"] == 42 and "total" not in line


def test_no_report_yet_means_no_line():
    assert Heartbeat(lambda: None, 30).beat() is None


def test_the_metrics_file_shows_a_running_job_and_carries_the_last_run(tmp_path):
    path = tmp_path / "ponos.prom"
    report = Report("cleanup")
    report.count("tasks_deleted", 5)
    write_textfile(str(path), report.to_dict(), 0)
    finished = path.read_text()
    last_run = re.search(r'ponos_job_last_run_timestamp_seconds\{job="cleanup"\} (\d+)', finished)[1]
    assert 'ponos_job_running{job="cleanup"} 0' in finished

    report.count("tasks_deleted", 7)
    write_textfile(str(path), report.to_dict(), None)  # the heartbeat, mid-run
    running = path.read_text()
    assert 'ponos_job_running{job="cleanup"} 1' in running
    assert "ponos_job_heartbeat_timestamp_seconds" in running
    assert 'ponos_job_items{job="cleanup",item="tasks_deleted"} 12' in running
    assert f'ponos_job_last_run_timestamp_seconds{{job="cleanup"}} {last_run}' in running  # carried
    assert 'ponos_job_exit_code{job="cleanup"} 0' in running  # the last finished run's


# --- progress from a real run ---------------------------------------------------------------

def test_a_slow_rename_logs_progress_lines_as_json(seeded, run, fault_proxy):
    fault_proxy.add("slow", operations=("ListObjectsV2",), seconds=0.4)
    code, report, stderr = run("--endpoint-url", fault_proxy.endpoint, "--progress-interval", "0.2",
                               "--log-format", "json", "--workers", "4")
    assert code == 0, stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    progress = [line for line in lines if line.get("event") == "progress"]
    assert progress, stderr
    assert all(line["job"] == "s3-rename" for line in progress)
    # A line may come before the job names its measure (while its clients start), none after.
    measured = [line for line in progress if "measure" in line]
    assert measured and all(line["measure"] == "scanned" for line in measured)
    assert progress[progress.index(measured[0]):] == measured
    assert progress[-1]["counts"].get("scanned", 0) <= report["counts"]["scanned"]


@pytest.mark.slow
def test_the_metrics_file_says_running_while_a_rename_runs(seeded, fault_proxy, s3_env, tmp_path):
    fault_proxy.add("slow", operations=("ListObjectsV2",), seconds=0.5)
    metrics = tmp_path / "rename.prom"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from migrate.cli import entry; entry()", "s3-rename", "--endpoint-url", fault_proxy.endpoint,
         "--artifacts-bucket", seeded["artifacts"], "--logs-bucket", seeded["logs"], "--dsn", seeded["dsn"],
         "--metrics-file", str(metrics), "--progress-interval", "0.2", "-q"],
        env=s3_env_for(s3_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen_running = False
    while proc.poll() is None:
        if metrics.exists() and 'ponos_job_running{job="s3-rename"} 1' in metrics.read_text():
            seen_running = True
        time.sleep(0.05)
    assert proc.returncode == 0, proc.stderr.read()
    assert seen_running
    assert 'ponos_job_running{job="s3-rename"} 0' in metrics.read_text()


def s3_env_for(s3_env):
    import os
    return {**os.environ, **s3_env}


# --- a time budget -----------------------------------------------------------------------------

@pytest.mark.slow
def test_max_runtime_stops_at_a_page_saves_the_checkpoint_and_a_rerun_finishes(seeded, run, tmp_path):
    s3 = seeded["ctx"].s3
    artifacts_before, logs_before = state_of(seeded)
    moves = expected_moves(seeded["dsn"], artifacts_before, logs_before)
    checkpoint = tmp_path / "rename.checkpoint"

    code, report, stderr = run("--checkpoint", str(checkpoint), "--max-runtime", "1ms")

    assert code == 75, stderr
    assert "--max-runtime" in stderr and "Traceback" not in stderr
    assert report["stopped"] == "max_runtime"
    state = json.loads(checkpoint.read_text())["state"]
    assert not all(bucket.get("complete") for bucket in state.values())
    assert list_keys(s3, seeded["logs"]) == logs_before  # the second bucket is not reached
    assert report["counts"]["moved"] > 0

    code, report, stderr = run("--checkpoint", str(checkpoint))
    assert code == 0, stderr
    assert_moved(artifacts_before, list_keys(s3, seeded["artifacts"]), moves["artifacts"])
    assert_moved(logs_before, list_keys(s3, seeded["logs"]), moves["logs"])
    code, again, _ = run("--checkpoint", str(checkpoint))
    assert code == 0 and again["counts"].get("moved", 0) == 0


def test_max_runtime_without_a_checkpoint_is_bad_usage(seeded, run):
    before = state_of(seeded)
    code, _, stderr = run("--max-runtime", "1h")
    assert code == 2 and "--checkpoint" in stderr
    assert state_of(seeded) == before


# --- a dry run's bill ------------------------------------------------------------------------------

@pytest.mark.parametrize("phase", ["all", "expand"])
def test_a_dry_run_tells_the_bill(seeded, run, phase):
    before = state_of(seeded)
    code, report, stderr = run("--dry-run", "--phase", phase)
    assert code == 0, stderr
    assert state_of(seeded) == before
    bill = report["bill"]
    moves = report["counts"]["would_move"]
    assert bill["requests"]["COPY"] == moves > 0
    assert bill["requests"]["LIST"] >= 2
    sizes = sum(info["size"] for info in [*before[0].values(), *before[1].values()])
    assert 0 < bill["bytes_copied"] <= sizes
    if phase == "expand":
        assert "DELETE" not in bill["requests"] and bill["storage_doubled_bytes"] == bill["bytes_copied"]
    else:
        assert bill["requests"]["DELETE"] >= 1 and bill["storage_doubled_bytes"] == 0
    assert bill["estimated_usd"]["requests"] > 0
    assert "S3 requests: " in stderr and "COPY" in stderr


def test_prices_that_are_not_prices_are_refused(seeded, run):
    before = state_of(seeded)
    code, _, stderr = run("--dry-run", "--prices", "LIST=cheap")
    assert code == 2 and "--prices" in stderr
    assert state_of(seeded) == before


def test_prices_override_the_defaults_and_price_the_bill():
    prices = parse_prices("list=1, COPY=2")
    bill = Bill()
    bill.add("LIST", 1000)
    bill.add("COPY", 500, copied=10)
    assert bill.to_dict(prices)["estimated_usd"]["requests"] == 1000 * 1 / 1000 + 500 * 2 / 1000
    with pytest.raises(ConfigError):
        parse_prices("EGRESS=1")
    with pytest.raises(ConfigError):
        parse_prices("LIST=-1")


# --- verify keeps no transaction open --------------------------------------------------------------

def test_verify_keeps_no_transaction_open_while_it_lists(seeded, run, fault_proxy, s3_env, tmp_path):
    assert run()[0] == 0
    fault_proxy.add("slow", operations=("ListObjectsV2",), seconds=0.5)
    oldest, sessions = [], []
    stop = threading.Event()

    def watch():
        with psycopg.connect(seeded["dsn"], autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute("SELECT count(*), max(extract(epoch FROM now() - xact_start)) "
                                   "FROM pg_stat_activity WHERE application_name = 'ponos-verify'").fetchone()
                sessions.append(row[0])
                if row[1] is not None:
                    oldest.append(float(row[1]))
                time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        env = {"AWS_ENDPOINT_URL": fault_proxy.endpoint}
        result = run_verify(env, tmp_path, "--artifacts-bucket", seeded["artifacts"], "--logs-bucket",
                            seeded["logs"], "--dsn", seeded["dsn"])
    finally:
        stop.set()
        watcher.join()
    assert result[0] == 0, result
    assert fault_proxy.fired("slow") >= 2  # the listing took seconds
    assert max(sessions) >= 1  # the watcher saw verify's sessions
    assert max(oldest, default=0) < 0.4  # no transaction lasted a listing page


# --- SIGTERM --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_stops_a_rename_cleanly_and_it_resumes(seeded, fault_proxy, s3_env, tmp_path, run):
    import signal
    fault_proxy.add("slow", operations=("ListObjectsV2", "CopyObject"), seconds=0.3)
    checkpoint = tmp_path / "rename.checkpoint"
    artifacts_before, logs_before = state_of(seeded)
    moves = expected_moves(seeded["dsn"], artifacts_before, logs_before)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from migrate.cli import entry; entry()", "s3-rename", "--endpoint-url",
         fault_proxy.endpoint, "--artifacts-bucket", seeded["artifacts"], "--logs-bucket", seeded["logs"],
         "--dsn", seeded["dsn"], "--checkpoint", str(checkpoint), "--workers", "2"],
        env=s3_env_for(s3_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while fault_proxy.requests["CopyObject"] < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "Interrupted: run again to resume." in stderr and "Traceback" not in stderr
    assert fault_proxy.requests["CopyObject"] < len(moves["artifacts"]) + len(moves["logs"])  # stopped midway
    code, report, stderr = run("--checkpoint", str(checkpoint))
    assert code == 0, stderr
    assert_moved(artifacts_before, list_keys(seeded["ctx"].s3, seeded["artifacts"]), moves["artifacts"])
    assert_moved(logs_before, list_keys(seeded["ctx"].s3, seeded["logs"]), moves["logs"])


# --- an outage says so ----------------------------------------------------------------------

@pytest.mark.slow
def test_an_outage_is_named_in_the_progress_lines_with_the_time_left(seeded, run, fault_proxy, tmp_path):
    """S3 failing is not a slow run: each line names the request, the bucket, the error and
    when the run gives up; the JSON lines and the metrics file carry the same."""
    fault_proxy.add("internal", operations=("ListObjectsV2",), bucket=seeded["artifacts"],
                    skip_key=".ponos-toolkit-canary")
    metrics = tmp_path / "rename.prom"
    code, report, stderr = run("--endpoint-url", fault_proxy.endpoint, "--progress-interval", "0.5",
                               "--retry-deadline", "4s", "--log-format", "json", "--metrics-file", str(metrics))
    assert code == 75, stderr
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    waiting = [line for line in lines if line.get("event") == "progress" and "waiting" in line]
    assert waiting, stderr
    last = waiting[-1]["waiting"]
    assert last["service"] == "S3" and last["operation"] == "ListObjectsV2" and last["target"] == seeded["artifacts"]
    assert "InternalError" in last["error"] and 0 <= last["gives_up_in_seconds"] <= 4
    assert any(line["waiting"]["gives_up_in_seconds"] > 0 for line in waiting)  # counting down
    assert f"waiting for S3 (ListObjectsV2 on '{seeded['artifacts']}'): " in waiting[-1]["message"]
    assert "giving up in" in waiting[-1]["message"]
    assert report["status"] == "transient"
    assert "ponos_job_waiting_seconds" not in metrics.read_text()  # the run is over: only while running


def test_the_metrics_file_says_how_long_the_run_has_waited(tmp_path):
    report = Report("s3-rename")
    token = report.waits.begin("S3", "ListObjectsV2", "art", "connection refused", deadline=900)
    path = tmp_path / "m.prom"
    beat = Heartbeat(lambda: report, 1.0, str(path)).beat()
    assert beat["waiting"]["operation"] == "ListObjectsV2" and beat["waiting"]["gives_up_in_seconds"] <= 900
    assert re.search(r'^ponos_job_waiting_seconds\{job="s3-rename"\} \d', path.read_text(), re.M)
    report.waits.end(token)
    Heartbeat(lambda: report, 1.0, str(path)).beat()
    assert 'ponos_job_waiting_seconds{job="s3-rename"} 0' in path.read_text()
