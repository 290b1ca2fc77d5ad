"""The run ledger: one row per run of a job, in a small table of the toolkit's own.

``ponos-migrate status`` reads it to say where a migration that takes days stands (which
passes ran, when, how they ended, with which checkpoint), like Django's
``django_migrations`` or alembic's version table. Every job appends its row from one place,
:func:`ponoskit.cli.finish`; a dry run appends nothing, and neither does a run refused or
locked out before it did anything. The ledger survives the fold's contract; drop it once the
migration is over (``DROP SCHEMA ponos_toolkit CASCADE;``).

It lives in a schema of its own, ``ponos_toolkit``, beside the application's: nothing the
application, Django's migrations or a comparison of the Ponos schema sees. Creating it takes
CREATE on the database, once; a role that may only write it needs USAGE on the schema and
INSERT on the table (the id is an identity column: no sequence to grant).

Writing the row never fails the job: a role without the right to create or write it leaves a
warning and ``not recorded: <why>`` in the report's ``ledger``; a database out of reach (the
run's own error says so) leaves only the report's note. No secret is ever written: the DSN is
not among the parameters kept, and every text kept goes through
:func:`ponoskit.connections.redact`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Optional

import psycopg

from .connections import redact, resolve_dsn
from .report import Report

SCHEMA = "ponos_toolkit"
TABLE = f"{SCHEMA}.run"

CREATE_SQL = (f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}", f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job         text NOT NULL,
    phase       text,
    started     timestamptz NOT NULL,
    ended       timestamptz NOT NULL,
    status      text NOT NULL,
    exit_code   integer NOT NULL,
    counts      jsonb NOT NULL DEFAULT '{{}}',
    info        jsonb NOT NULL DEFAULT '{{}}'
)""")
DROP_SQL = f"DROP SCHEMA {SCHEMA} CASCADE"
INSERT_SQL = (f"INSERT INTO {TABLE} (job, phase, started, ended, status, exit_code, counts, info) "
              "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)")
COLUMNS = "job, phase, started, ended, status, exit_code, counts, info"

# The exit of a run that never hangs on a database gone away: a short connect, short statements.
CONNECT_TIMEOUT_SECONDS = 3
STATEMENT_TIMEOUT = "5s"
# Parameters never kept: the DSN may hold a password; the rest are names, paths and numbers.
SECRET_PARAMS = ("dsn",)
PATH_PARAMS = ("checkpoint", "report_path", "pause_file", "workdir")
# What a job's report says that a later status needs (buckets, phase, catch-up, checks).
KEPT_INFO = ("buckets", "phase", "catch_up", "rollback", "already_folded", "schema_state_after", "shard",
             "endpoint", "database", "stopped")
# Commands that only read and tell (status itself) leave no row.
NOT_RECORDED_JOBS = ("status", "demo")
# Statuses of runs that did something; a refused or locked-out run changed nothing.
RECORDED_STATUSES = ("done", "left", "failed", "transient", "stopped", "interrupted", "terminated")


@dataclass(frozen=True)
class Run:
    """One run, as the ledger holds it."""
    job: str
    phase: Optional[str]
    started: datetime
    ended: datetime
    status: str
    exit_code: int
    counts: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> dict[str, Any]:
        return self.info.get("params", {})

    @property
    def buckets(self) -> list[str]:
        return list(self.info.get("buckets") or [])

    def to_dict(self) -> dict[str, Any]:
        return {"job": self.job, "phase": self.phase, "started": self.started.isoformat(),
                "ended": self.ended.isoformat(), "status": self.status, "exit_code": self.exit_code,
                "counts": self.counts, "info": self.info}


def record(params: Mapping[str, Any], report: Report, status: str, exit_code: int, reasons: list[str]) -> Optional[str]:
    """Append the row of a run that has just ended (:func:`ponoskit.cli.finish` calls it); the
    report's ``ledger`` says whether it was. Returns a warning to print, or None."""
    if (params.get("dry_run") or report.job in NOT_RECORDED_JOBS or status not in RECORDED_STATUSES
            or "dsn" not in params or params.get("no_db")):
        return None  # a dry run, a read-only status, nothing done, or no database to write to
    run = run_of(report.job, params, report.to_dict(reasons=reasons), status, exit_code)
    why = append(resolve_dsn(params.get("dsn")), run)
    report.info["ledger"] = "recorded" if why is None else f"not recorded: {why}"
    if why is None or why == UNREACHABLE:
        return None  # out of reach: the run's own line says so already, one line
    return f"the run ledger ({TABLE}) was not written: {why}"


def run_of(job: str, params: Mapping[str, Any], report: dict[str, Any], status: str, exit_code: int) -> Run:
    """The row of a run from its command's parameters and its report (``Report.to_dict()``)."""
    started = datetime.strptime(report["started_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    info = {name: report[name] for name in KEPT_INFO if report.get(name) is not None}
    info["params"] = kept_params(params)
    info["checks"] = [{key: phase.get(key) for key in ("bucket", "final_check", "checked_at")}
                      for phase in report.get("phases", []) if phase.get("name") == "final_check"]
    info["reasons"] = [redact(str(reason)) for reason in report.get("reasons", [])[:5]]
    phase = "rollback" if params.get("rollback") else params.get("phase")
    return Run(job, phase, started, datetime.now(timezone.utc), status, exit_code,
               dict(report.get("counts", {})), info)


def kept_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The command's parameters a later status may repeat: no DSN, texts redacted."""
    kept: dict[str, Any] = {}
    for name, value in params.items():
        if name in SECRET_PARAMS or value is None:
            continue
        if name in PATH_PARAMS and value != "-":
            value = os.path.abspath(value)  # the next command works from any folder
        elif isinstance(value, (list, tuple)):
            value = [redact(str(v)) for v in value]
        elif not isinstance(value, (bool, int, float)):
            value = redact(str(value))
        kept[name] = value
    return kept


UNREACHABLE = "the database could not be reached"


def append(dsn: str, run: Run) -> Optional[str]:
    """Append ``run``; None when recorded, else why not (the caller says so, the job goes on)."""
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS,
                               application_name="ponos-ledger")
    except psycopg.Error:
        return UNREACHABLE
    try:
        with conn:
            conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
            if not exists(conn):
                for statement in CREATE_SQL:
                    conn.execute(statement)
            conn.execute(INSERT_SQL, (run.job, run.phase, run.started, run.ended, run.status, run.exit_code,
                                      json.dumps(run.counts), json.dumps(run.info, default=str)))
    except psycopg.Error as exc:
        return redact(_why(exc))
    return None


def _why(exc: psycopg.Error) -> str:
    if getattr(exc, "sqlstate", None) == "42501":
        return (f"the role may not create or write {TABLE} (grant CREATE on the database once, or USAGE on "
                f"the schema {SCHEMA} and INSERT on the table)")
    first = " ".join(str(exc).split())
    return first[:200] or type(exc).__name__


def exists(conn: psycopg.Connection) -> bool:
    """The ledger is there and this role may look into its schema."""
    return conn.execute(
        "SELECT CASE WHEN to_regnamespace(%s) IS NULL THEN false "
        "WHEN NOT has_schema_privilege(%s, 'USAGE') THEN false "
        "ELSE to_regclass(%s) IS NOT NULL END", (SCHEMA, SCHEMA, TABLE)).fetchone()[0]


def last_runs(conn: psycopg.Connection, job: Optional[str] = None, *, phase: Optional[str] = None,
              limit: int = 50) -> list[Run]:
    """The latest runs, newest first (of one job, of one phase); none without the table."""
    if not exists(conn):
        return []
    where, args = [], []
    if job is not None:
        where.append("job = %s")
        args.append(job)
    if phase is not None:
        where.append("phase = %s")
        args.append(phase)
    sql = (f"SELECT {COLUMNS} FROM {TABLE}" + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY ended DESC, id DESC LIMIT %s")
    return [Run(*row) for row in conn.execute(sql, (*args, limit)).fetchall()]
