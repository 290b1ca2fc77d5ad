"""A fixed pool of threads running callables: a ThreadPoolExecutor without a future per task.

The rename submits one task per object, by the million; the futures it needs are its own
(settled after the delete), so the executor's would be a lock and a condition per object for
nothing. Exceptions are the task's own business: a task that raises is a bug, logged.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

_STOP = object()
log = logging.getLogger("ponoskit.workers")


class WorkerPool:
    def __init__(self, size: int, name: str):
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(size)]
        for thread in self._threads:
            thread.start()

    def submit(self, task: Callable[[], None]) -> None:
        self._tasks.put(task)

    def _run(self) -> None:
        while True:
            task = self._tasks.get()
            if task is _STOP:
                return
            try:
                task()
            except BaseException:  # noqa: BLE001 - keep the thread: the pool must not shrink
                log.exception("a worker task raised")

    def close(self) -> None:
        """Finish the queued tasks, then stop every thread."""
        for _ in self._threads:
            self._tasks.put(_STOP)
        for thread in self._threads:
            thread.join()
