"""Between two backfill batches: wait while a replica lags, or while an operator says pause.

A backfill writes as fast as the primary takes it; streaming replicas replay that WAL
behind it, and a replica that falls minutes behind serves stale reads (or, with
``hot_standby_feedback``, holds vacuum back). With ``--max-replica-lag``, before each batch
the fold reads ``pg_stat_replication`` on the primary and waits while any replica is more
than the limit behind. ``replay_lag`` alone is not enough: a replica whose replay is paused or
stuck keeps showing the last lag it measured. So the throttle also remembers when the
primary's WAL reached which position (it samples it before each batch): a replica whose
replay position is still before the WAL written at time T is at least ``now - T`` behind. An operator pauses a run without killing it: ``--pause-file`` (while that file exists)
or ``kill -USR1`` (pause) / ``kill -USR2`` (resume). Each wait is logged (once a minute) and
counted in the report.
"""

from __future__ import annotations

import contextlib

import os
import signal
import threading
import time
from collections import deque
from typing import Callable, Iterator, Optional

import psycopg

from ponoskit.errors import ConfigError

NOW_SQL = "SELECT pg_current_wal_lsn()::text"
REPLICAS_SQL = """SELECT replay_lsn::text, coalesce(extract(epoch FROM replay_lag), 0)::float8
  FROM pg_stat_replication WHERE replay_lsn IS NOT NULL"""
HISTORY_SECONDS = 3600.0
CAN_READ_SQL = "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER') OR " \
               "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"


class Throttle:
    def __init__(self, conn: psycopg.Connection, *, max_lag: Optional[float], pause_file: Optional[str], log,
                 report, poll: float = 1.0, sleep: Callable[[float], None] = time.sleep):
        self.conn, self.max_lag, self.pause_file = conn, max_lag, pause_file
        self.log, self.report = log, report
        self.poll, self._sleep = poll, sleep
        self.paused_by_signal = threading.Event()
        self._last_log = 0.0
        self._history: deque[tuple[float, int]] = deque()  # (monotonic time, primary WAL position)

    def check(self) -> None:
        """Refuse now what would make the lag unreadable later (exit 2); start the WAL history."""
        if self.max_lag is None:
            return
        if not self.conn.execute(CAN_READ_SQL).fetchone()[0]:
            raise ConfigError("--max-replica-lag: the role cannot read replication lag (grant it pg_monitor or "
                              "pg_read_all_stats); nothing changed")
        self.lag()

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """While the steps run, SIGUSR1 pauses and SIGUSR2 resumes; what was there before is
        put back after (an in-process caller keeps its own handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {number: signal.getsignal(number) for number in (signal.SIGUSR1, signal.SIGUSR2)}
        signal.signal(signal.SIGUSR1, lambda *_: self.paused_by_signal.set())
        signal.signal(signal.SIGUSR2, lambda *_: self.paused_by_signal.clear())
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def lag(self) -> float:
        """Seconds the most lagging replica is behind (0 without replicas)."""
        now = time.monotonic()
        self._history.append((now, _lsn(self.conn.execute(NOW_SQL).fetchone()[0])))
        while self._history and self._history[0][0] < now - HISTORY_SECONDS:
            self._history.popleft()
        worst = 0.0
        for replay, replay_lag in self.conn.execute(REPLICAS_SQL).fetchall():
            replayed = _lsn(replay)
            behind_since = next((at for at, lsn in self._history if lsn > replayed), None)
            worst = max(worst, replay_lag, now - behind_since if behind_since is not None else 0.0)
        return worst

    def reason(self) -> Optional[str]:
        if self.paused_by_signal.is_set():
            return "paused by SIGUSR1 (kill -USR2 resumes)"
        if self.pause_file and os.path.exists(self.pause_file):
            return f"paused while {self.pause_file} exists"
        if self.max_lag is not None:
            lag = self.lag()
            if lag > self.max_lag:
                return f"a replica is {lag:.1f}s behind (--max-replica-lag {self.max_lag:g}s)"
        return None

    def wait(self) -> None:
        started = None
        while True:
            reason = self.reason()
            if reason is None:
                break
            now = time.monotonic()
            if started is None:
                started = now
                self.report.count("backfill_pauses")
            if now - self._last_log >= 60:
                self._last_log = now
                self.log.warning("backfill waiting: %s", reason)
            self._sleep(self.poll)
        if started is not None:
            waited = time.monotonic() - started
            self.report.count("backfill_paused_ms", int(waited * 1000))
            self.log.info("backfill resumed after %.1fs", waited)


def _lsn(text: str) -> int:
    """A WAL position (X/Y) as a number."""
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)
