"""A bounded batch buffer: items go in one at a time, out in batches.

A batch is flushed when it reaches ``max_size`` items, ``interval`` seconds after its first
item arrived, or on :meth:`close`. Two ways to put an item in:

- :meth:`fire_forget` returns at once (it blocks only while the queue is full: the queue is
  bounded, so a slow sink slows producers down instead of growing memory);
- :meth:`fire_and_wait` returns the item's result or raises its error; :meth:`submit` hands
  back the item's future instead of waiting on it.

No error is lost: a batch that fails raises in every ``fire_and_wait`` caller, and failures of
``fire_forget`` items are raised by :meth:`close` as one :class:`FlushError`.

The flush function receives the list of items and returns None (every item done) or a list of
the same length whose elements are the per-item results; an element that is an exception
instance fails that item only (S3 DeleteObjects answers 200 with per-key errors).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Generic, Optional, Sequence, TypeVar

from .errors import FlushError

T = TypeVar("T")

_CLOSE = object()


class _Callback:
    """What a future is to the flush loop, without a future's lock and condition."""

    __slots__ = ("callback",)

    def __init__(self, callback):
        self.callback = callback

    def set_running_or_notify_cancel(self) -> bool:
        return True

    def set_result(self, result) -> None:
        self.callback(result, None)

    def set_exception(self, error: BaseException) -> None:
        self.callback(None, error)


class BatchBuffer(Generic[T]):
    def __init__(self, name: str, flush: Callable[[list[T]], Optional[Sequence[Any]]], *,
                 max_size: int = 1000, interval: float = 0.5, max_pending: Optional[int] = None):
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.name = name
        self._flush = flush
        self.max_size = max_size
        self.interval = interval
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending or 4 * max_size)
        self._errors: list[BaseException] = []
        self._errors_lock = threading.Lock()
        self._closed = False
        self._put_lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name=f"buffer-{name}", daemon=True)
        self._worker.start()

    # --- producers -------------------------------------------------------------------
    def fire_forget(self, item: T) -> None:
        self._put(item, None)

    def fire_and_wait(self, item: T, timeout: Optional[float] = None) -> Any:
        return self.submit(item).result(timeout)

    def submit(self, item: T) -> Future:
        """Put an item in and get its future: for callers that wait on many items at once."""
        future: Future = Future()
        self._put(item, future)
        return future

    def submit_callback(self, item: T, callback: Callable[[Any, Optional[BaseException]], None]) -> None:
        """Put an item in; ``callback(result, error)`` runs in the buffer's thread once it is
        flushed. No future: for callers that handle items by the million and chain on them."""
        self._put(item, _Callback(callback))

    def _put(self, item: T, future: Optional[Future]) -> None:
        # Under the lock, so no item slips in behind the close marker and is never flushed.
        with self._put_lock:
            if self._closed:
                raise RuntimeError(f"buffer {self.name!r} is closed")
            self._queue.put((item, future))

    # --- consumer --------------------------------------------------------------------
    def _run(self) -> None:
        batch: list[tuple[T, Optional[Future]]] = []
        deadline = 0.0
        while True:
            timeout = max(0.0, deadline - time.monotonic()) if batch else None
            try:
                entry = self._queue.get(timeout=timeout)
            except queue.Empty:
                entry = None  # the interval ran out
            if entry is _CLOSE:
                self._deliver(batch)
                return
            if entry is not None:
                if not batch:
                    deadline = time.monotonic() + self.interval
                batch.append(entry)
                if len(batch) < self.max_size:
                    continue
            self._deliver(batch)
            batch = []

    def _deliver(self, batch: list[tuple[T, Optional[Future]]]) -> None:
        # A caller may have cancelled its future: drop the item (setting a cancelled
        # future's result would raise and kill this thread).
        batch = [(item, f) for item, f in batch if f is None or f.set_running_or_notify_cancel()]
        if not batch:
            return
        items = [item for item, _ in batch]
        try:
            results = self._flush(items)
            if results is None:
                results = [None] * len(items)
            elif len(results) != len(items):
                raise RuntimeError(f"flush returned {len(results)} results for {len(items)} items")
        except BaseException as exc:  # noqa: BLE001 - handed to the callers, never dropped
            results = [exc] * len(items)
        for (_, future), result in zip(batch, results):
            failed = isinstance(result, BaseException)
            if future is None:
                if failed:
                    with self._errors_lock:
                        self._errors.append(result)
            elif failed:
                future.set_exception(result)
            else:
                future.set_result(result)

    # --- lifecycle -------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def errors(self) -> list[BaseException]:
        with self._errors_lock:
            return list(self._errors)

    def close(self) -> None:
        """Flush what is pending, stop the worker, raise the fire_forget failures if any."""
        with self._put_lock:
            closing = not self._closed
            self._closed = True
        if closing:
            self._queue.put(_CLOSE)
            self._worker.join()
        if self._errors:
            raise FlushError(self.name, self.errors)
