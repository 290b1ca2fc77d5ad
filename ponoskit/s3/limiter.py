"""How many S3 requests a run keeps in flight: a window that AWS's throttling moves (AIMD).

AWS answers 503 SlowDown while it repartitions a prefix under load. Retrying each request on
its own keeps the pressure up; TCP's answer works better: every success widens the window a
little (additive increase, about +1 per window of successes), a throttle halves it
(multiplicative decrease, at most once per ``cooldown`` so one burst of 503s counts once).
One limiter serves every worker of a run, boto3 and obstore paths alike, so the whole run
slows down instead of each worker failing on its own. ``max_rps`` adds a ceiling on requests
per second for buckets that production traffic also uses.

Slots go first come, first served: a released slot is handed to the longest waiter, so 64 busy
copy workers never starve the one thread that lists the next page or flushes the deletes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from typing import Callable, Iterator, Optional


class AdaptiveLimiter:
    def __init__(self, maximum: int, *, minimum: int = 1, cooldown: float = 1.0,
                 max_rps: Optional[float] = None, clock: Callable[[], float] = time.monotonic):
        if maximum < 1 or minimum < 1 or minimum > maximum:
            raise ValueError("need 1 <= minimum <= maximum")
        self.maximum, self.minimum = maximum, minimum
        self.cooldown = cooldown
        self.max_rps = max_rps
        self._clock = clock
        self._window = float(maximum)
        self._in_use = 0
        self._cond = threading.Lock()
        self._waiters: deque[threading.Event] = deque()
        self._last_cut = float("-inf")
        self._next_start = 0.0  # the rate ceiling's schedule
        self.throttles = 0  # throttle answers seen
        self.cuts = 0  # times the window was halved
        self.smallest_window = maximum

    @property
    def window(self) -> int:
        return max(self.minimum, int(self._window))

    def acquire(self) -> None:
        with self._cond:
            if self._in_use < self.window and not self._waiters:
                self._in_use += 1
                waiter = None
            else:
                waiter = threading.Event()
                self._waiters.append(waiter)
        if waiter is not None:
            waiter.wait()  # the slot is ours once set: _grant counted it
        with self._cond:
            wait = self._rate_wait()
        if wait > 0:
            time.sleep(wait)

    def _grant(self) -> None:
        """Hand free slots to the longest waiters (called under the lock)."""
        while self._waiters and self._in_use < self.window:
            self._in_use += 1
            self._waiters.popleft().set()

    def _rate_wait(self) -> float:
        """With max_rps, when this request may start (called under the lock)."""
        if not self.max_rps:
            return 0.0
        now = self._clock()
        start = max(now, self._next_start)
        self._next_start = start + 1.0 / self.max_rps
        return start - now

    def release(self) -> None:
        with self._cond:
            self._in_use -= 1
            self._grant()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def success(self) -> None:
        with self._cond:
            before = self.window
            self._window = min(float(self.maximum), self._window + 1.0 / self._window)
            if self.window > before:
                self._grant()

    def throttled(self) -> None:
        """S3 said slow down: halve the window, once per cooldown."""
        with self._cond:
            self.throttles += 1
            now = self._clock()
            if now - self._last_cut < self.cooldown:
                return
            self._last_cut = now
            self._window = max(float(self.minimum), self._window / 2)
            self.cuts += 1
            self.smallest_window = min(self.smallest_window, self.window)

    def stats(self) -> dict[str, int]:
        return {"s3_throttles": self.throttles, "s3_window_cuts": self.cuts,
                "s3_smallest_window": self.smallest_window}
