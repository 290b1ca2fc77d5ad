"""Statements that take table locks, run so the application never queues behind them for long.

A statement waiting for a lock also blocks every later query on that table, so each attempt runs
under ``lock_timeout`` (short) and, when it times out, gives the application's queries a turn
before it tries again after a growing, jittered pause.

Statements that take only SHARE UPDATE EXCLUSIVE (CREATE/DROP INDEX CONCURRENTLY, VALIDATE
CONSTRAINT) do not conflict with reads or writes, so they wait with a *patient* timeout instead:
CREATE INDEX CONCURRENTLY waits for every older snapshot in the database, and cancelling it
there would throw away its table scans and leave an INVALID index to rebuild.
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, TypeVar

import psycopg
from psycopg import errors as pg_errors

from ponoskit.errors import PonosError
from ponoskit.report import Report

T = TypeVar("T")

# Lock waits that give up (lock_timeout) or lose a deadlock: both are worth another attempt.
RETRYABLE = (pg_errors.LockNotAvailable, pg_errors.DeadlockDetected)


class LockBusy(PonosError):
    """The application held a conflicting lock through every attempt; re-run to resume."""


@dataclass(frozen=True)
class LockPolicy:
    timeout: float = 0.5  # seconds per attempt, for locks that block the application
    patient_timeout: float = 600.0  # seconds per attempt, for locks that block nothing of it
    attempts: int = 20
    first_pause: float = 0.2
    max_pause: float = 15.0

    def pause(self, attempt: int) -> float:
        return min(self.max_pause, self.first_pause * 2 ** attempt) * random.uniform(0.5, 1.5)


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


class Ddl:
    """Runs statements on the job's autocommit connection under the lock policy."""

    def __init__(self, conn: psycopg.Connection, policy: LockPolicy, log: logging.Logger,
                 report: Optional[Report] = None):
        self.conn = conn
        self.policy = policy
        self.log = log
        self.report = report
        # The fold's own statements may legitimately run for minutes (VALIDATE, CONCURRENTLY):
        # a role-level statement_timeout meant for the application must not cancel them.
        conn.execute("SELECT set_config('statement_timeout', '0', false)")
        self._set_lock_timeout(policy.timeout)

    def _set_lock_timeout(self, seconds: float) -> None:
        self.conn.execute("SELECT set_config('lock_timeout', %s, false)", (_ms(seconds),))

    @contextmanager
    def patient(self) -> Iterator[None]:
        """Run the block with the patient lock_timeout (non-blocking lock modes only)."""
        self._set_lock_timeout(self.policy.patient_timeout)
        try:
            yield
        finally:
            if not self.conn.closed:
                self._set_lock_timeout(self.policy.timeout)

    def retry(self, what: str, action: Callable[[], T]) -> T:
        """Run ``action`` until it gets its locks, or raise LockBusy after the last attempt."""
        for attempt in range(self.policy.attempts):
            try:
                return action()
            except RETRYABLE as exc:
                if self.report is not None:
                    self.report.count("lock_retries")
                if attempt + 1 == self.policy.attempts:
                    raise LockBusy(
                        f"{what}: no lock after {self.policy.attempts} attempts "
                        f"({type(exc).__name__}); long transactions hold the tables; run again later "
                        "to resume") from None
                pause = self.policy.pause(attempt)
                self.log.warning("%s: %s, attempt %d/%d, retrying in %.1fs", what,
                                 " ".join(str(exc).split()), attempt + 1, self.policy.attempts, pause)
                time.sleep(pause)
        raise AssertionError("unreachable")

    def execute(self, what: str, sql: str, params=None) -> int:
        """One statement in its own transaction; returns its row count."""
        self.log.debug("%s: %s", what, " ".join(sql.split()))
        return self.retry(what, lambda: self.conn.execute(sql, params).rowcount)

    def transaction(self, what: str, body: Callable[[psycopg.Connection], T]) -> T:
        """``body`` inside one transaction, retried as a whole; one commit per call."""
        def attempt() -> T:
            with self.conn.transaction():
                # Legacy foreign keys are DEFERRABLE INITIALLY DEFERRED: fire their checks per
                # statement, so no trigger event is pending should the block alter a table.
                self.conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
                return body(self.conn)
        return self.retry(what, attempt)
