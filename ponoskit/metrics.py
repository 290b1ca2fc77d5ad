"""Prometheus textfile output: a cron job's last run, for node_exporter's textfile collector.

``--metrics-file /var/lib/node_exporter/textfile/ponos_cleanup.prom`` leaves, after every run,
gauges an alert can watch: when the job last succeeded (carried over failed runs), when it
last ran, how long it took, its exit code, and every count of its report. The file is written to a temporary name and renamed, as the collector
requires, so it never reads half a file.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Optional


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _metric_name(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", text)


def _previous_success(path: Path, job: str) -> Optional[str]:
    """The last success time the file already holds, carried over a failed run."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(rf'^ponos_job_last_success_timestamp_seconds{{job="{re.escape(job)}"}} (\S+)$', text, re.M)
    return match[1] if match else None


def render(report: dict[str, Any], exit_code: int, last_success: Optional[str] = None) -> str:
    job = _label(report["job"])
    if exit_code == 0:
        last_success = f"{time.time():.0f}"
    lines = []
    if last_success is not None:
        lines += [
            "# HELP ponos_job_last_success_timestamp_seconds When the job last finished everything due (Unix time).",
            "# TYPE ponos_job_last_success_timestamp_seconds gauge",
            f'ponos_job_last_success_timestamp_seconds{{job="{job}"}} {last_success}',
        ]
    lines += [
        "# HELP ponos_job_last_run_timestamp_seconds When the job last finished (Unix time).",
        "# TYPE ponos_job_last_run_timestamp_seconds gauge",
        f'ponos_job_last_run_timestamp_seconds{{job="{job}"}} {time.time():.0f}',
        "# HELP ponos_job_duration_seconds How long the last run took.",
        "# TYPE ponos_job_duration_seconds gauge",
        f'ponos_job_duration_seconds{{job="{job}"}} {report["seconds"]}',
        "# HELP ponos_job_exit_code Exit code of the last run (0 done, 1 incomplete, 2 config, 3 locked).",
        "# TYPE ponos_job_exit_code gauge",
        f'ponos_job_exit_code{{job="{job}"}} {exit_code}',
        "# HELP ponos_job_items Counts of the last run's report, by item.",
        "# TYPE ponos_job_items gauge",
    ]
    for name, value in sorted(report["counts"].items()):
        lines.append(f'ponos_job_items{{job="{job}",item="{_label(_metric_name(name))}"}} {value}')
    return "\n".join(lines) + "\n"


def write_textfile(path: str, report: dict[str, Any], exit_code: int) -> None:
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent if str(target.parent) else ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(render(report, exit_code, _previous_success(target, _label(report["job"]))))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
