"""Between two backfill batches: wait while a replica lags, or while an operator says pause.

A backfill writes as fast as the primary takes it; streaming replicas replay that WAL
behind it, and a replica that falls minutes behind serves stale reads (or, with
``hot_standby_feedback``, holds vacuum back). With ``--max-replica-lag``, before each batch
the fold reads ``pg_stat_replication`` on the primary and waits while any replica's replay lag
(or, when it has not replayed recent WAL at all, the time since it last did) is above the
limit. An operator pauses a run without killing it: ``--pause-file`` (while that file exists)
or ``kill -USR1`` (pause) / ``kill -USR2`` (resume). Each wait is logged (once a minute) and
counted in the report.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Callable, Optional

import psycopg

from ponoskit.errors import ConfigError

# The lag of each replica: replay_lag when the replica reports it; when it is behind the
# primary's WAL but has no recent lag sample (its replay is paused or stuck), how long ago
# the primary last heard of a replay, which keeps growing while it stays behind.
LAG_SQL = """
SELECT coalesce(max(CASE
         WHEN pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) > 0 AND replay_lag IS NULL
           THEN extract(epoch FROM now() - reply_time)
         ELSE extract(epoch FROM coalesce(replay_lag, interval '0')) END), 0)::float8,
       count(*)
  FROM pg_stat_replication"""
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

    def check(self) -> None:
        """Refuse now what would make the lag unreadable later (exit 2)."""
        if self.max_lag is not None and not self.conn.execute(CAN_READ_SQL).fetchone()[0]:
            raise ConfigError("--max-replica-lag: the role cannot read replication lag (grant it pg_monitor or "
                              "pg_read_all_stats); nothing changed")

    def install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGUSR1, lambda *_: self.paused_by_signal.set())
        signal.signal(signal.SIGUSR2, lambda *_: self.paused_by_signal.clear())

    def lag(self) -> float:
        return self.conn.execute(LAG_SQL).fetchone()[0]

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
