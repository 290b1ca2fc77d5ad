"""Is this a real PostgreSQL session? PgBouncer in transaction mode gives each transaction
whichever server connection is free, and what the fold and the cleanup hold per session goes
astray: an advisory lock (one run at a time), a ``lock_timeout`` set once. They refuse such a
connection (exit 2) instead of running without their guarantees.

The check: set a session setting and read it back, with the backend's pid, over a few
separate transactions. A session keeps both; a transaction pool, serving other clients in
between, sooner or later hands over another backend. A pool with nobody else on it can hide
this (the README says to connect directly, or through PgBouncer in session mode).
"""

from __future__ import annotations

import psycopg

from .errors import ConfigError

PROBES = 5


def require_session(conn: psycopg.Connection) -> None:
    if not conn.autocommit:
        return  # inside one transaction every statement is on one backend: nothing to learn
    marker = f"probe-{id(conn)}"
    first = conn.execute("SELECT pg_backend_pid(), set_config('ponos.session_check', %s, false)",
                         (marker,)).fetchone()[0]
    for _ in range(PROBES):
        pid, seen = conn.execute("SELECT pg_backend_pid(), current_setting('ponos.session_check', true)").fetchone()
        if pid != first or seen != marker:
            raise ConfigError("the connection does not keep a session (PgBouncer in transaction mode?): the job "
                              "needs session advisory locks and session settings; connect to PostgreSQL directly "
                              "or through a session pool; nothing changed")
