"""One retry loop for every S3 request a job makes per object, whichever client makes it.

botocore retries a blip a few times on its own and obstore not at all (see
:mod:`ponoskit.connections`); what is still failing comes here. Throttling and transient
failures (5xx, resets, timeouts) are retried with a growing, jittered pause for as long as
``deadline`` seconds of uninterrupted failure, each attempt inside a slot of the run's
:class:`~ponoskit.s3.limiter.AdaptiveLimiter`, so throttling slows every worker down and
never becomes a per-key failure. Past the deadline the run stops with
:class:`~ponoskit.s3.errors.S3TransientError` (exit 75: run again later). Anything else is
the caller's to decide (a 412, a 404, an archived object, a refusal).
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Callable, Optional

from ..waits import Waits
from .errors import THROTTLE_CODES, Kind, S3TransientError, kind_of, one_line
from .limiter import AdaptiveLimiter


class Retrier:
    def __init__(self, limiter: AdaptiveLimiter, *, deadline: float = 900.0, first_pause: float = 0.2,
                 max_pause: float = 20.0, sleep: Callable[[float], Any] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, waits: Optional[Waits] = None):
        self.limiter = limiter
        self.waits = waits  # where the heartbeat sees that the run waits for S3 (ponoskit.waits)
        self.deadline = deadline
        self.first_pause, self.max_pause = first_pause, max_pause
        self._sleep, self._clock = sleep, clock
        # Set when the run stops (a fatal error elsewhere, SIGTERM): nobody waits any more.
        self.stopping = threading.Event()
        self.retries = 0

    def pause(self, attempt: int) -> float:
        return min(self.max_pause, self.first_pause * 2 ** attempt) * random.uniform(0.5, 1.0)

    def call(self, what: str, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)``, retried while it throttles or fails transiently."""
        waiting: list[Optional[int]] = [None]
        try:
            return self._call(what, fn, args, kwargs, waiting)
        finally:
            if self.waits is not None:
                self.waits.end(waiting[0])

    def _call(self, what: str, fn: Callable, args, kwargs, waiting: list):
        first_failure: Optional[float] = None
        attempt = 0
        while True:
            with self.limiter.slot():
                try:
                    result = fn(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - sorted below, re-raised if not ours
                    failure, kind = exc, kind_of(exc)
                    if kind is Kind.THROTTLED:
                        self.limiter.throttled()
                else:
                    self.limiter.success()
                    return result
            if kind not in (Kind.THROTTLED, Kind.TRANSIENT):
                raise failure
            now = self._clock()
            first_failure = now if first_failure is None else first_failure
            if self.stopping.is_set() or now - first_failure >= self.deadline:
                raise S3TransientError(
                    f"{what}: S3 kept failing for {now - first_failure:.0f}s ({one_line(failure)}); "
                    "run again to resume") from None
            self.retries += 1
            self._note_wait(waiting, what, kwargs.get("Bucket") or "", one_line(failure))
            self._sleep(self.pause(attempt))
            attempt += 1


    def _note_wait(self, waiting: list, what: str, bucket: str, error: str) -> None:
        if self.waits is None:
            return
        if waiting[0] is None:
            waiting[0] = self.waits.begin("S3", what, bucket, error, self.deadline)
        else:
            self.waits.update(waiting[0], error)


def observe_throttles(client, limiter: AdaptiveLimiter) -> None:
    """Let botocore's own retries tell the limiter about throttling too (they happen before
    the error, if any, reaches :class:`Retrier`)."""
    def observer(response=None, **_):
        if response is not None:
            http, parsed = response
            code = (parsed or {}).get("Error", {}).get("Code")
            if getattr(http, "status_code", None) in (429, 503) or code in THROTTLE_CODES:
                limiter.throttled()
        return None  # never decides the retry itself

    client.meta.events.register_first("needs-retry.s3", observer, unique_id="ponos-throttle-observer")
