"""What a run is waiting for right now: a service failing, and how long until it gives up.

A job whose S3 or PostgreSQL keeps failing is retried until ``--retry-deadline``; meanwhile its
counts stand still and, without this, its progress lines look like a slow run, not an outage.
The retry loops note here when a request starts failing and when it stops (one entry per
waiting thread); the heartbeat reads the oldest entry into its line, its JSON fields and the
metrics file (``ponos_job_waiting_seconds``):

  waiting for S3 (ListObjectsV2 on 'art'): connection refused for 1m40s; giving up in 13m20s
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class Wait:
    service: str      # S3 or PostgreSQL
    operation: str    # ListObjectsV2, "the page's task lookup"...
    target: str       # a bucket, a database; "" when none
    error: str        # the last failure, one line
    since: float      # monotonic
    deadline: float   # seconds of failure after which the run gives up

    def describe(self, now: float) -> dict:
        waited = now - self.since
        return {"service": self.service, "operation": self.operation, "target": self.target, "error": self.error,
                "seconds": round(waited, 1), "gives_up_in_seconds": round(max(0.0, self.deadline - waited), 1)}


class Waits:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[int, Wait] = {}
        self._ids = itertools.count()

    def begin(self, service: str, operation: str, target: str, error: str, deadline: float) -> int:
        with self._lock:
            token = next(self._ids)
            self._open[token] = Wait(service, operation, target, error, self._clock(), deadline)
            return token

    def update(self, token: int, error: str) -> None:
        with self._lock:
            if token in self._open:
                self._open[token].error = error

    def end(self, token: Optional[int]) -> None:
        if token is not None:
            with self._lock:
                self._open.pop(token, None)

    def oldest(self) -> Optional[dict]:
        """The longest wait going on, described (None when nothing waits)."""
        with self._lock:
            if not self._open:
                return None
            wait = min(self._open.values(), key=lambda w: w.since)
            return wait.describe(self._clock())


def describe_line(waiting: dict) -> str:
    """``waiting for S3 (ListObjectsV2 on 'art'): <error> for 1m40s; giving up in 13m20s``."""
    target = f" on {waiting['target']!r}" if waiting["target"] else ""
    return (f"waiting for {waiting['service']} ({waiting['operation']}{target}): {waiting['error']} for "
            f"{clock_text(waiting['seconds'])}; giving up in {clock_text(waiting['gives_up_in_seconds'])}")


def clock_text(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
