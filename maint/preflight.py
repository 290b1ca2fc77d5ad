"""Checks every maintenance job makes before it changes anything."""

from __future__ import annotations

import hashlib

import psycopg

from ponoskit import connections, schema
from ponoskit.errors import ConfigError, PonosError, TransientError


def lock_key(name: str) -> int:
    """A stable advisory-lock key per job (a signed 64-bit int, as pg_try_advisory_lock wants)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def require_folded(conn: psycopg.Connection) -> None:
    state = schema.schema_state(conn)
    if state == schema.FOLDED:
        return
    hints = {
        schema.LEGACY: "the workflow fold has not run yet: run `ponos-migrate db-fold-workflow` first",
        schema.PARTIAL: "a workflow fold is under way: run the cleanup once it has finished",
        schema.UNKNOWN: "this database has no Ponos tables (wrong --dsn?)",
    }
    raise ConfigError(f"schema is {state}, not folded: {hints.get(state, '')}".rstrip(": "))


def check_buckets(ctx, *buckets: str) -> None:
    for bucket in dict.fromkeys(buckets):
        connections.check_bucket(ctx.s3, bucket)


def database_error(exc: psycopg.Error) -> PonosError:
    """A PostgreSQL failure in the middle of a run: what was committed stays, the rest is left.

    A lost connection (a failover, a restart) is transient (exit 75); anything else is 1.
    """
    first_line = connections.redact(" ".join(str(exc).split()) or type(exc).__name__)
    if isinstance(exc, psycopg.OperationalError) and not isinstance(exc, psycopg.errors.QueryCanceled):
        return TransientError(f"database unavailable, run again to finish: {first_line}")
    return PonosError(f"database error, run again to finish: {first_line}")
