"""ponoskit/s3/limiter.py: the AIMD window, --max-rps, first-come-first-served slots. No server."""

from __future__ import annotations

import threading
import time

from ponoskit.s3.limiter import AdaptiveLimiter
from tests.unit.helpers import Clock


def test_a_throttle_halves_the_window_once_per_cooldown_and_successes_widen_it():
    clock = Clock()
    limiter = AdaptiveLimiter(64, cooldown=1.0, clock=clock)
    for _ in range(20):  # one burst of 503s counts once
        limiter.throttled()
    assert limiter.window == 32 and limiter.throttles == 20 and limiter.cuts == 1
    clock.now = 2.0
    limiter.throttled()
    assert limiter.window == 16 and limiter.smallest_window == 16
    for _ in range(16 * 3):
        limiter.success()
    assert 18 <= limiter.window <= 20  # about +1 per window of successes
    for _ in range(100):
        clock.now += 2
        limiter.throttled()
    assert limiter.window == 1  # never below the minimum


def test_the_window_bounds_concurrency_across_threads():
    limiter = AdaptiveLimiter(4)
    limiter._window = 2.0
    inside, peak, lock = [0], [0], threading.Lock()

    def work():
        with limiter.slot():
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= 1
    threads = [threading.Thread(target=work) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 2


def test_max_rps_spaces_requests_out():
    limiter = AdaptiveLimiter(8, max_rps=50)
    started = time.monotonic()
    for _ in range(11):
        with limiter.slot():
            pass
    assert time.monotonic() - started >= 0.19  # 10 intervals of 20 ms


def test_slots_go_first_come_first_served_so_busy_workers_never_starve_another_thread():
    limiter = AdaptiveLimiter(2)
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            with limiter.slot():
                time.sleep(0.001)
    workers = [threading.Thread(target=busy) for _ in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(0.05)
    started = time.monotonic()
    with limiter.slot():
        waited = time.monotonic() - started
    stop.set()
    for worker in workers:
        worker.join()
    assert waited < 0.5  # a few milliseconds: it was next in line
