"""Progress while a job runs: a line in the log and a fresh metrics file at an interval.

A rename in a pod, a backfill over hours, a cleanup under cron: none has a terminal, and a
log that stays silent until the end cannot tell a slow run from a stuck one. Every
``--progress-interval`` seconds (default 30, 0 for none) a daemon thread reads the run's
report, the same counts its final report will hold, and

* logs one line: time elapsed, the counts so far, the rate of the job's progress count (the
  one it named with ``Report.expect``) and, when the job knows how many to expect, the time
  left; with ``--log-format json`` the line is one JSON object carrying the counts;
* rewrites the ``--metrics-file`` textfile (atomically, as node_exporter needs) with
  ``ponos_job_running 1``, the heartbeat's time and the counts, so an alert sees a stuck run.

The thread only reads the report (under its lock): a job knows nothing of it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

from .metrics import write_textfile
from .report import Report
from .waits import describe_line

log = logging.getLogger("ponos.progress")
DEFAULT_INTERVAL = 30.0


class Heartbeat:
    def __init__(self, find_report: Callable[[], Optional[Report]], interval: float,
                 metrics_path: Optional[str] = None, clock: Callable[[], float] = time.monotonic):
        self.find_report = find_report  # the job creates its report after the heartbeat starts
        self.interval = interval
        self.metrics_path = metrics_path
        self._clock = clock
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._last: Optional[tuple[float, int]] = None  # (when, progress count) at the last beat

    def start(self) -> "Heartbeat":
        if self.interval > 0:
            self._thread = threading.Thread(target=self._loop, name="ponos-heartbeat", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - progress must never break the job
                log.debug("progress line failed: %s", exc)

    def beat(self) -> Optional[dict[str, Any]]:
        """One progress line and metrics file now; returns what the line carried."""
        report = self.find_report()
        if report is None:
            return None
        snapshot = report.to_dict()
        progress = self._progress(report, snapshot)
        waiting = report.waits.oldest()
        if waiting is not None:
            progress["waiting"] = waiting
        snapshot["waiting_seconds"] = waiting["seconds"] if waiting else 0
        log.info(_text(snapshot, progress), extra={"progress": progress})
        if self.metrics_path:
            try:
                write_textfile(self.metrics_path, snapshot, None)
            except OSError as exc:
                log.warning("cannot write --metrics-file %s: %s", self.metrics_path, exc)
        return progress

    def _progress(self, report: Report, snapshot: dict[str, Any]) -> dict[str, Any]:
        now = self._clock()
        fields: dict[str, Any] = {"event": "progress", "job": snapshot["job"], "seconds": snapshot["seconds"],
                                  "counts": snapshot["counts"]}
        name, total = report.progress_count, report.progress_total
        if name is None:
            return fields
        done = snapshot["counts"].get(name, 0)
        fields.update(measure=name, done=done)
        if self._last is not None and now > self._last[0]:
            fields["rate_per_second"] = round((done - self._last[1]) / (now - self._last[0]), 1)
        self._last = (now, done)
        average = done / snapshot["seconds"] if snapshot["seconds"] > 0 else 0.0
        if total is not None:
            fields["total"] = total
            if average > 0:
                fields["eta_seconds"] = round(max(0, total - done) / average)
        return fields


def _text(snapshot: dict[str, Any], progress: dict[str, Any]) -> str:
    parts = [f"progress {snapshot['job']}: {_clock_text(snapshot['seconds'])} elapsed"]
    if "done" in progress:
        measured = f"{progress['done']:,}" + (f" of {progress['total']:,}" if "total" in progress else "")
        rate = f" ({progress['rate_per_second']:,}/s)" if "rate_per_second" in progress else ""
        parts.append(f"{progress['measure'].replace('_', ' ')} {measured}{rate}")
    if "eta_seconds" in progress:
        parts.append(f"about {_clock_text(progress['eta_seconds'])} left")
    others = ", ".join(f"{name.replace('_', ' ')} {value:,}" for name, value in snapshot["counts"].items()
                       if value and name != progress.get("measure"))
    if others or len(parts) == 1:
        parts.append(others or "nothing counted yet")
    if "waiting" in progress:
        parts.append(describe_line(progress["waiting"]))
    return "; ".join(parts)


def _clock_text(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
