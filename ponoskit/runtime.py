"""What every job's run ends as, and the one place that turns it into an exit code.

Every job returns a :class:`JobResult` or raises; :func:`result_of` sorts what it raised into
the same statuses, whichever service failed (S3 or PostgreSQL) and however. The README's
exit-code table is :data:`EXIT_CODES`:

  done         0   a final check found nothing in scope left
  left         1   the job ran, something is left (conflicts, failures...: see the report)
  failed       1   an error nobody expected (a bug): one line, the report says what
  refused      2   bad usage, configuration or a missing right, found before any change
  locked       3   another run holds the job's lock
  transient    75  S3 or PostgreSQL kept failing past --retry-deadline: run again, it resumes
  stopped      75  --max-runtime reached, progress saved: run again, it resumes
  interrupted  130 Ctrl-C: run again, it resumes
  terminated   143 SIGTERM (a pod deleted, systemd stopping the unit): run again, it resumes
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional

import psycopg

from .connections import redact
from .errors import AlreadyRunning, ConfigError, OutOfTime, PonosError, TransientError
from .s3.errors import Kind as S3Kind
from .s3.errors import kind_of as s3_kind_of


class Status(enum.Enum):
    DONE = "done"
    LEFT = "left"
    FAILED = "failed"
    REFUSED = "refused"
    LOCKED = "locked"
    TRANSIENT = "transient"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"
    TERMINATED = "terminated"


EXIT_CODES = {Status.DONE: 0, Status.LEFT: 1, Status.FAILED: 1, Status.REFUSED: 2, Status.LOCKED: 3,
              Status.TRANSIENT: 75, Status.STOPPED: 75, Status.INTERRUPTED: 130, Status.TERMINATED: 143}


@dataclass
class JobResult:
    status: Status
    reasons: list[str] = field(default_factory=list)

    @classmethod
    def finished(cls, left: list[str], *, transient: bool = False, stopped: str = "",
                 terminated: bool = False) -> "JobResult":
        """Done when nothing is left. Else: transient when what is left is left because a
        service kept failing; terminated or stopped (--max-runtime, --max-tasks) when that is
        the only reason; left otherwise."""
        if not left:
            return cls(Status.DONE)
        if transient:
            return cls(Status.TRANSIENT, list(left))
        if terminated:
            return cls(Status.TERMINATED, list(left))
        if stopped and list(left) == [stopped]:
            return cls(Status.STOPPED, list(left))
        return cls(Status.LEFT, list(left))

    @property
    def done(self) -> bool:
        return self.status is Status.DONE

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


# PostgreSQL: the connection went away (a failover, an admin's pg_terminate_backend, a
# restart) or the server cannot serve now. Class 08 (connection), 57P0x (shutdown), 53
# (insufficient resources), 40001/40P01 (serialization, deadlock), 55P03 (lock not available).
_PG_TRANSIENT_CLASSES = ("08", "53", "57P", "40001", "40P01", "55P03", "58")
_PG_REFUSED_CLASSES = ("28", "42501", "3D000", "42P01", "42703")  # auth, privilege, no database/table/column


def pg_is_transient(exc: BaseException) -> bool:
    """A PostgreSQL failure that another attempt, or another run, may not meet."""
    if not isinstance(exc, psycopg.Error):
        return False
    if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
        return True  # no answer at all: connection refused, reset, closed
    return bool(exc.sqlstate) and exc.sqlstate.startswith(_PG_TRANSIENT_CLASSES)


# The session is gone (what a failover, a restart or pg_terminate_backend do) or cannot be had.
_PG_LOST_CLASSES = ("08", "57P01", "57P02", "57P03")


def pg_connection_lost(exc: BaseException) -> Optional[BaseException]:
    """The PostgreSQL error behind ``exc`` if it says the session was lost, else None: looked
    for in what ``exc`` was raised from or during, and in the errors a post-commit hook or a
    buffer collected (a lost session surfaces wrapped as often as bare)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        error = todo.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, psycopg.Error) and (
                (isinstance(error, psycopg.OperationalError) and error.sqlstate is None)
                or (error.sqlstate or "").startswith(_PG_LOST_CLASSES)):
            return error
        todo += [error.__cause__, error.__context__, *getattr(error, "errors", ())]
    return None


class DatabaseFailed(PonosError):
    """A PostgreSQL failure in the middle of a run: what committed stays, a re-run resumes from there."""


class DatabaseErrors:
    """A context manager that turns a PostgreSQL error into a typed error naming where the
    job was (``during``, which the job may change as it goes): a missing privilege is
    configuration (2), a lost connection transient (75), the rest a failure (1). The one
    translator of every job's database errors."""

    def __init__(self, during: str):
        self.during = during

    def __enter__(self) -> "DatabaseErrors":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if isinstance(exc, psycopg.Error):
            raise database_error(exc, self.during) from exc
        return False


def database_error(exc: psycopg.Error, during: str) -> PonosError:
    message = redact(one_line(exc))
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return ConfigError(f"{during}: missing privilege: {message}")
    if pg_is_transient(exc):  # a cancelled statement (57014) is not: it is a failure
        return TransientError(f"{during}: database unavailable ({message}); what committed stays, "
                              "run again to resume")
    return DatabaseFailed(f"{during} failed: {message}; what committed stays, run again to resume")


def result_of(exc: BaseException) -> JobResult:
    """The status of a run that ended by raising ``exc`` (the taxonomy, once for every job)."""
    # Our own messages are written to be read whole; a foreign one may be a page long.
    reason = " ".join(str(exc).split()) if isinstance(exc, PonosError) else one_line(exc)
    if isinstance(exc, KeyboardInterrupt):
        terminated = type(exc).__name__ == "Terminated"  # ponoskit.cli's SIGTERM
        return JobResult(Status.TERMINATED if terminated else Status.INTERRUPTED, ["interrupted: run again to resume"])
    if isinstance(exc, OutOfTime):
        return JobResult(Status.STOPPED, [reason])
    if isinstance(exc, AlreadyRunning):
        return JobResult(Status.LOCKED, [reason])
    if isinstance(exc, ConfigError):
        return JobResult(Status.REFUSED, [reason])
    if isinstance(exc, TransientError):
        return JobResult(Status.TRANSIENT, [reason])
    if isinstance(exc, PonosError):
        return JobResult(Status.FAILED if exc.exit_code == 1 else _status_of_code(exc.exit_code), [reason])
    if isinstance(exc, psycopg.Error):
        if pg_is_transient(exc):
            return JobResult(Status.TRANSIENT, [f"PostgreSQL: {reason}; run again to resume"])
        if exc.sqlstate and exc.sqlstate.startswith(_PG_REFUSED_CLASSES):
            return JobResult(Status.REFUSED, [f"PostgreSQL: {reason}"])
        return JobResult(Status.FAILED, [f"PostgreSQL: {reason}"])
    kind = s3_kind_of(exc)
    if kind in (S3Kind.THROTTLED, S3Kind.TRANSIENT):
        return JobResult(Status.TRANSIENT, [f"S3: {reason}; run again to resume"])
    if kind is S3Kind.PERMISSION:
        return JobResult(Status.REFUSED, [f"S3: {reason}"])
    return JobResult(Status.FAILED, [f"{type(exc).__name__}: {reason}"])


def _status_of_code(code: int) -> Status:
    return next((status for status, value in EXIT_CODES.items() if value == code), Status.FAILED)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."
