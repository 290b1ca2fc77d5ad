"""What a step of the fold is, and the two DDL moves most steps make and unmake.

A step has a ``plan`` (what --dry-run prints: SQL and row counts), ``pending`` (the catalog
check that makes a re-run safe: is it done?) and ``run`` (do it); a step the expand adds also
knows how to take itself away again (``undo_pending`` and ``undo``), which is what the
rollback runs, in reverse order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from psycopg import errors as pg_errors

from . import catalog, consistency
from .job import Job


@dataclass
class Plan:
    step: str
    pending: bool
    sql: list[str] = field(default_factory=list)
    rows: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.step, "pending": self.pending, "rows": self.rows, "sql": self.sql}


class Step:
    name = ""

    def applies(self, job: Job) -> bool:
        return True

    def pending(self, job: Job) -> bool:
        raise NotImplementedError

    def sql(self, job: Job) -> list[str]:
        return []

    def rows(self, job: Job) -> Optional[int]:
        return None

    def plan(self, job: Job) -> Plan:
        pending = self.pending(job)
        return Plan(self.name, pending, self.sql(job), self.rows(job) if pending else 0)

    def run(self, job: Job, record: dict[str, Any]) -> None:
        raise NotImplementedError

    # --- the way back (rollback) ------------------------------------------------------
    def undo_pending(self, job: Job) -> bool:
        """Whether something of this step is there to take away (False: nothing to undo)."""
        return False

    def undo_sql(self, job: Job) -> list[str]:
        return []

    def undo(self, job: Job, record: dict[str, Any]) -> None:
        for statement in self.undo_sql(job):
            job.ddl.execute(f"undo {self.name}", statement)

    def undo_plan(self, job: Job) -> Plan:
        pending = self.undo_pending(job)
        return Plan(f"undo {self.name}", pending, self.undo_sql(job) if pending else [])


def ensure_index(job: Job, name: str, create_sql: str) -> None:
    """CREATE INDEX CONCURRENTLY, first dropping an INVALID leftover of an interrupted build."""
    def attempt() -> None:
        found = catalog.index(job.conn, name)
        if found is not None and found.valid:
            return
        if found is not None:
            job.ctx.log.warning("index %s is INVALID (an interrupted concurrent build): rebuilding it", name)
            job.conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        job.conn.execute(create_sql)

    with job.ddl.patient():
        job.ddl.retry(f"create index {name}", attempt)


def drop_index(job: Job, name: str) -> None:
    """DROP INDEX CONCURRENTLY: writes go on meanwhile."""
    with job.ddl.patient():
        job.ddl.execute(f"drop index {name}", f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


def ensure_constraint(job: Job, table: str, name: str, definition: str) -> None:
    """ADD CONSTRAINT ... NOT VALID (a short lock), then VALIDATE (no lock the application minds)."""
    found = catalog.constraint(job.conn, table, name)
    if found is None:
        job.ddl.execute(f"add {name}", f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition} NOT VALID")
    if found is None or not found.validated:
        try:
            with job.ddl.patient():
                job.ddl.execute(f"validate {name}", f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")
        except (pg_errors.CheckViolation, pg_errors.ForeignKeyViolation) as exc:
            raise consistency.VerificationFailed(
                f"{name} does not hold: {' '.join(str(exc).split())}; fix those rows and run again") from None


def add_constraint_sql(table: str, name: str, definition: str) -> list[str]:
    return [f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition} NOT VALID",
            f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}"]
