"""Prometheus textfile output: a cron job's last run, for node_exporter's textfile collector.

``--metrics-file /var/lib/node_exporter/textfile/ponos_cleanup.prom`` leaves, after every run,
gauges an alert can watch: when the job last succeeded (carried over failed runs), when it
last ran, how long it took, its exit code, and every count of its report. While a run goes on,
the heartbeat (ponoskit.heartbeat) rewrites the file at every progress line: ``ponos_job_running``
is 1, ``ponos_job_heartbeat_timestamp_seconds`` moves, the counts grow, and the last run's time
and exit code are carried over until this one ends. The file is written to a temporary name
and renamed, as the collector requires, so it never reads half a file.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Optional


_CARRIED = {"last_success": "ponos_job_last_success_timestamp_seconds",
            "last_run": "ponos_job_last_run_timestamp_seconds", "exit_code": "ponos_job_exit_code"}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _metric_name(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", text)


def _previous(path: Path, job: str) -> dict[str, str]:
    """The values the file already holds and a run carries over (a last success over a failed
    run; the last run's time and exit code while this one goes on), from one read."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    found = {}
    for key, metric in _CARRIED.items():
        match = re.search(rf'^{metric}{{job="{re.escape(job)}"}} (\S+)$', text, re.M)
        if match:
            found[key] = match[1]
    return found


def _gauge(name: str, help_text: str, job: str, value: Any) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f'{name}{{job="{job}"}} {value}']


def render(report: dict[str, Any], exit_code: Optional[int], previous: Optional[dict[str, str]] = None) -> str:
    """The textfile; ``exit_code`` None while the run goes on (the heartbeat's rewrite)."""
    job = _label(report["job"])
    previous = dict(previous or {})
    now = f"{time.time():.0f}"
    if exit_code == 0:
        previous["last_success"] = now
    if exit_code is not None:
        previous["last_run"], previous["exit_code"] = now, str(exit_code)
    lines = []
    if "last_success" in previous:
        lines += _gauge("ponos_job_last_success_timestamp_seconds",
                        "When the job last finished everything due (Unix time).", job, previous["last_success"])
    if "last_run" in previous:
        lines += _gauge("ponos_job_last_run_timestamp_seconds", "When the job last finished (Unix time).",
                        job, previous["last_run"])
    if "exit_code" in previous:
        lines += _gauge("ponos_job_exit_code",
                        "Exit code of the last run (0 done, 1 left or failed, 2 refused, 3 locked, 75 transient or stopped, 130/143 interrupted).",
                        job, previous["exit_code"])
    lines += _gauge("ponos_job_running", "1 while a run goes on (the heartbeat rewrites this file), 0 after.",
                    job, 0 if exit_code is not None else 1)
    if exit_code is None:
        lines += _gauge("ponos_job_heartbeat_timestamp_seconds",
                        "When the running job last wrote its progress (Unix time): a stuck run stops it.", job, now)
    if exit_code is None:
        lines += _gauge("ponos_job_waiting_seconds",
                        "How long the run has been waiting for a failing S3 or PostgreSQL (0: not waiting).",
                        job, report.get("waiting_seconds", 0))
    lines += _gauge("ponos_job_duration_seconds", "How long the last run took (this run so far while running).",
                    job, report["seconds"])
    lines += ["# HELP ponos_job_items Counts of the last run's report, by item.",
              "# TYPE ponos_job_items gauge"]
    for name, value in sorted(report["counts"].items()):
        lines.append(f'ponos_job_items{{job="{job}",item="{_label(_metric_name(name))}"}} {value}')
    return "\n".join(lines) + "\n"


def write_textfile(path: str, report: dict[str, Any], exit_code: Optional[int]) -> None:
    target = Path(path)
    previous = _previous(target, _label(report["job"]))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent if str(target.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(render(report, exit_code, previous))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
