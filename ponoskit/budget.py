"""A run's time budget (``--max-runtime``): checked at safe points, never mid-operation."""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional


class RuntimeBudget:
    def __init__(self, seconds: Optional[float], clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self._clock = clock
        self._started = clock()

    def spent(self) -> bool:
        """True once the run has used its budget (never without one)."""
        return self.seconds is not None and self._clock() - self._started >= self.seconds

    def __str__(self) -> str:
        return "no limit" if self.seconds is None else f"{self.seconds:g}s"


def why_stop(stop: Optional[threading.Event], budget: RuntimeBudget) -> str:
    """At a safe point (between batches, pages): '' to go on, else why the job stops here."""
    if stop is not None and stop.is_set():
        return "stopped by a signal"
    if budget.spent():
        return f"--max-runtime ({budget}) reached"
    return ""
