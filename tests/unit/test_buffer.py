"""ponoskit/buffer.py: BatchBuffer (size and time flushes, per-item results and errors, bounded queue),
and the Context draining its buffers. No server.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError, wait as wait_futures

import pytest

from ponoskit.buffer import BatchBuffer
from ponoskit.context import Context
from ponoskit.errors import FlushError, PonosError


class Recorder:
    """A flush function that records its batches and answers per item with ``answer``."""

    def __init__(self, answer=None):
        self.batches: list[list] = []
        self.answer = answer
        self.lock = threading.Lock()

    def __call__(self, items):
        with self.lock:
            self.batches.append(list(items))
        if self.answer is None:
            return None
        return [self.answer(item) for item in items]


@pytest.fixture
def buffers():
    """Buffers created by a test; closed (errors ignored) at teardown so no thread leaks."""
    made = []

    def make(*args, **kwargs):
        buf = BatchBuffer(*args, **kwargs)
        made.append(buf)
        return buf

    yield make
    for buf in made:
        try:
            buf.close()
        except FlushError:
            pass


def test_buffer_flushes_at_max_size(buffers):
    flush = Recorder()
    buf = buffers("size", flush, max_size=3, interval=60)
    futures = [buf.submit(i) for i in range(3)]
    done, pending = wait_futures(futures, timeout=5)  # long before the 60 s interval
    assert not pending
    assert flush.batches == [[0, 1, 2]]


def test_buffer_splits_into_batches_of_max_size_in_order(buffers):
    flush = Recorder()
    buf = buffers("split", flush, max_size=10, interval=60)
    for i in range(25):
        buf.fire_forget(i)
    buf.close()  # the last, partial batch goes out on close
    assert [len(b) for b in flush.batches] == [10, 10, 5]
    assert [i for b in flush.batches for i in b] == list(range(25))


def test_buffer_flushes_after_interval(buffers):
    flush = Recorder(answer=lambda item: item.upper())
    interval = 0.2
    buf = buffers("interval", flush, max_size=1000, interval=interval)
    start = time.monotonic()
    assert buf.fire_and_wait("x", timeout=5) == "X"
    elapsed = time.monotonic() - start
    assert interval * 0.9 <= elapsed < 5
    assert flush.batches == [["x"]]


def test_buffer_close_flushes_pending_items_at_once(buffers):
    flush = Recorder()
    buf = buffers("close", flush, max_size=1000, interval=60)
    for i in range(5):
        buf.fire_forget(i)
    start = time.monotonic()
    buf.close()
    assert time.monotonic() - start < 5  # did not wait for the 60 s interval
    assert flush.batches == [[0, 1, 2, 3, 4]]


def test_fire_and_wait_returns_each_items_result(buffers):
    buf = buffers("results", Recorder(answer=lambda item: item * 10), max_size=4, interval=0.05)
    futures = [buf.submit(i) for i in range(10)]
    assert [f.result(timeout=5) for f in futures] == [i * 10 for i in range(10)]
    assert buf.fire_and_wait(7, timeout=5) == 70


def test_flush_returning_none_resolves_every_item_with_none(buffers):
    buf = buffers("none", Recorder(), max_size=2, interval=0.05)
    assert [f.result(timeout=5) for f in [buf.submit(1), buf.submit(2), buf.submit(3)]] == [None] * 3


def test_exception_instance_fails_only_its_item(buffers):
    def answer(item):
        return ValueError(f"bad {item}") if item % 3 == 0 else f"ok {item}"

    buf = buffers("per-item", Recorder(answer=answer), max_size=6, interval=60)
    futures = {i: buf.submit(i) for i in range(6)}
    for i, future in futures.items():
        if i % 3 == 0:
            with pytest.raises(ValueError, match=f"bad {i}"):
                future.result(timeout=5)
        else:
            assert future.result(timeout=5) == f"ok {i}"
    buf.close()  # no fire_forget item failed: nothing to raise


def test_flush_that_raises_fails_every_caller_of_its_batch_and_only_that_batch(buffers):
    seen = []

    def flush(items):
        seen.append(list(items))
        if "bad" in items:
            raise ConnectionError("whole request failed")
        return [f"ok {item}" for item in items]

    buf = buffers("raises", flush, max_size=3, interval=60)
    first = [buf.submit(x) for x in ("a", "bad", "c")]
    for future in first:
        with pytest.raises(ConnectionError, match="whole request failed"):
            future.result(timeout=5)
    # The worker survives a failed batch.
    second = [buf.submit(x) for x in ("d", "e", "f")]
    assert [f.result(timeout=5) for f in second] == ["ok d", "ok e", "ok f"]
    assert seen == [["a", "bad", "c"], ["d", "e", "f"]]


def test_fire_and_wait_raises_its_items_error(buffers):
    buf = buffers("wait-error", Recorder(answer=lambda item: KeyError(item)), max_size=1, interval=60)
    with pytest.raises(KeyError):
        buf.fire_and_wait("k", timeout=5)


def test_fire_forget_errors_are_raised_at_close(buffers):
    def answer(item):
        return RuntimeError(f"lost {item}") if item in (2, 5) else None

    buf = buffers("forget", Recorder(answer=answer), max_size=2, interval=0.01)
    for i in range(7):
        buf.fire_forget(i)
    time.sleep(0.2)  # the failing batches are long flushed before close: still not lost
    with pytest.raises(FlushError) as info:
        buf.close()
    err = info.value
    assert isinstance(err, PonosError)
    assert err.buffer_name == "forget"
    assert sorted(str(e) for e in err.errors) == ["lost 2", "lost 5"]
    assert "forget" in str(err)


def test_fire_forget_error_of_a_raising_flush_is_raised_at_close(buffers):
    def flush(items):
        raise OSError("disk full")

    buf = buffers("forget-raise", flush, max_size=10, interval=60)
    buf.fire_forget("a")
    buf.fire_forget("b")
    with pytest.raises(FlushError) as info:
        buf.close()
    assert len(info.value.errors) == 2 and all(isinstance(e, OSError) for e in info.value.errors)


def test_close_does_not_reraise_errors_already_handed_to_waiters(buffers):
    buf = buffers("waited", Recorder(answer=lambda item: ValueError(item)), max_size=1, interval=60)
    with pytest.raises(ValueError):
        buf.fire_and_wait("x", timeout=5)
    buf.close()  # the caller got its error; close has nothing to add


def test_flush_with_wrong_number_of_results_fails_the_batch(buffers):
    buf = buffers("short", lambda items: ["only one"], max_size=3, interval=60)
    futures = [buf.submit(i) for i in range(3)]
    # None of them is reported as a success: each fails with the batch's error, which says why.
    for future in futures:
        with pytest.raises(RuntimeError, match=r"^flush returned 1 results for 3 items$"):
            future.result(timeout=5)


def test_submit_returns_futures(buffers):
    buf = buffers("submit", Recorder(answer=lambda item: -item), max_size=100, interval=0.05)
    futures = [buf.submit(i) for i in range(50)]
    done, pending = wait_futures(futures, timeout=5)
    assert not pending
    assert [f.result() for f in futures] == [-i for i in range(50)]


def test_fire_and_wait_times_out_while_the_flush_is_stuck(buffers):
    release = threading.Event()
    buf = buffers("stuck", lambda items: release.wait(10) and None, max_size=1, interval=60)
    try:
        with pytest.raises(TimeoutError):
            buf.fire_and_wait("x", timeout=0.1)
    finally:
        release.set()


def test_queue_is_bounded_so_a_slow_flush_blocks_producers(buffers):
    release = threading.Event()
    flushed = []

    def slow_flush(items):
        release.wait(10)
        flushed.extend(items)

    max_size, max_pending, total = 2, 3, 40
    buf = buffers("slow", slow_flush, max_size=max_size, interval=0.01, max_pending=max_pending)
    put = []

    def producer():
        for i in range(total):
            buf.fire_forget(i)
            put.append(i)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        # Held at most: one batch inside the flush + a full queue. The producer waits.
        assert thread.is_alive(), "producer ran through: the queue is not bounded"
        assert 1 <= len(put) <= max_size + max_pending, len(put)
        stalled_at = len(put)
        time.sleep(0.2)
        assert len(put) == stalled_at  # still blocked, not slowly leaking
    finally:
        release.set()
    thread.join(5)
    assert not thread.is_alive()
    buf.close()
    assert flushed == list(range(total))


def test_closed_buffer_rejects_puts(buffers):
    flush = Recorder()
    buf = buffers("closed", flush, max_size=10, interval=60)
    buf.fire_forget(1)
    buf.close()
    for put in (buf.fire_forget, buf.fire_and_wait, buf.submit):
        with pytest.raises(RuntimeError):
            put(2)
    assert flush.batches == [[1]]
    buf.close()  # closing twice is harmless


def test_buffer_rejects_empty_batches():
    with pytest.raises(ValueError):
        BatchBuffer("zero", lambda items: None, max_size=0)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_cancelled_future_does_not_kill_the_buffer(buffers):
    buf = buffers("cancel", Recorder(answer=lambda item: item), max_size=100, interval=0.2)
    cancelled = buf.submit("a")
    assert cancelled.cancel()
    assert buf.fire_and_wait("b", timeout=1) == "b"
    assert buf.fire_and_wait("c", timeout=1) == "c"
    with pytest.raises(CancelledError):
        cancelled.result(timeout=0)


def test_context_drains_every_buffer_on_close():
    ctx = Context(job="unit", use_db=False)
    ok, bad = Recorder(), Recorder(answer=lambda item: RuntimeError(item))
    first = ctx.buffer("bad", bad, max_size=100, interval=60)
    second = ctx.buffer("ok", ok, max_size=100, interval=60)
    assert ctx.buffer("ok", Recorder()) is second  # created once, tracked by name
    first.fire_forget("x")
    second.fire_forget("y")
    with pytest.raises(FlushError) as info:
        ctx.close()
    assert info.value.buffer_name == "bad"
    assert ok.batches == [["y"]]  # drained although the first buffer failed
    with pytest.raises(RuntimeError):
        second.fire_forget("z")
