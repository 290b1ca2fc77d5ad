"""The cleanup's outbox: S3 work that is owed because database rows are already gone.

A row is written in the same transaction that deletes a task, so the promise to delete the
task's files commits (or rolls back) with the deletion itself. A row is removed only after
S3 confirmed every object it covers is gone. Whatever happens in between (S3 down, SIGKILL),
the next run finds the row and finishes the work first: no object is ever forgotten.

One row is one :class:`Target`: an exact key or a prefix. By default the cleanup records the
keys the database names (each artifact row's key, the task's log: :func:`targets_for_rows`),
deleted without a listing; with ``--list-prefixes`` a task's artifacts prefix and its log
(:func:`targets_for_tasks`), listed first. Rows of either shape, from this run or an older
one, drain the same way, with the same bookkeeping.

A row S3 keeps refusing (a key a bucket policy protects, a server that fails on one key) must
not hold the others up: each failed run counts an attempt on it, and after
:data:`MAX_ATTEMPTS` it is *set aside*: no longer retried, reported on every run (exit 1) until
an operator fixes the cause and runs ``ponos-maint cleanup --retry-set-aside``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

import psycopg

from ponoskit import keys
from ponoskit.schema import column_exists, table_exists

TABLE = "ponos_cleanup_outbox"
KEY, PREFIX = "key", "prefix"

CREATE_SQL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id              bigserial PRIMARY KEY,
    bucket          text NOT NULL,
    key_or_prefix   text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('{KEY}', '{PREFIX}')),
    created         timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    set_aside       timestamptz
)"""
# An outbox created by an earlier release lacks the poison bookkeeping.
UPGRADE_SQL = f"""
ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0,
                    ADD COLUMN IF NOT EXISTS last_error text,
                    ADD COLUMN IF NOT EXISTS set_aside timestamptz"""
MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class Target:
    """Objects to delete in one bucket: the key itself, or every key under a prefix."""

    bucket: str
    key: str
    kind: str
    id: Optional[int] = None  # the outbox row; None for a dry run's would-be targets

    def covers(self, key: str) -> bool:
        return key.startswith(self.key) if self.kind == PREFIX else key == self.key


def targets_for_tasks(task_ids: Iterable, *, artifacts_bucket: str, logs_bucket: str) -> list[Target]:
    """What S3 holds for these tasks, in the layouts keys.py defines: the log, the artifacts."""
    targets = []
    for task_id in task_ids:
        targets.append(Target(logs_bucket, keys.log_key(task_id), KEY))
        targets.append(Target(artifacts_bucket, keys.artifact_prefix(task_id), PREFIX))
    return targets


ARTIFACT_ROWS_SQL = "SELECT task_id::text, path FROM ponos_artifact WHERE task_id = ANY(%s::uuid[]) ORDER BY 1, 2"


def targets_for_rows(conn: psycopg.Connection, task_ids: Iterable, *, artifacts_bucket: str,
                     logs_bucket: str) -> list[Target]:
    """The keys the database names for these tasks (read before their rows go, in the same
    transaction): each artifact row's key and the task's log, in the layouts keys.py defines.
    Objects under a task without a row are the orphan sweep's (``ponos-maint orphans``)."""
    ids = [str(task_id) for task_id in task_ids]
    targets = [Target(logs_bucket, keys.log_key(task_id), KEY) for task_id in ids]
    for task_id, path in conn.execute(ARTIFACT_ROWS_SQL, (ids,)):
        targets.append(Target(artifacts_bucket, keys.artifact_key(task_id, path), KEY))
    return targets


def exists(conn: psycopg.Connection) -> bool:
    return table_exists(conn, TABLE)


def ensure(conn: psycopg.Connection) -> None:
    conn.execute(CREATE_SQL)
    if not _has_bookkeeping(conn):
        conn.execute(UPGRADE_SQL)


def add(conn: psycopg.Connection, targets: Sequence[Target]) -> list[Target]:
    """Insert the targets (inside the caller's transaction); return them with their row ids."""
    if not targets:
        return []
    rows = conn.execute(
        f"INSERT INTO {TABLE} (bucket, key_or_prefix, kind) "
        "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]) "
        "RETURNING id, bucket, key_or_prefix, kind",
        ([t.bucket for t in targets], [t.key for t in targets], [t.kind for t in targets])).fetchall()
    return [Target(bucket, key, kind, row_id) for row_id, bucket, key, kind in rows]


def _has_bookkeeping(conn: psycopg.Connection) -> bool:
    return column_exists(conn, TABLE, "set_aside")


def pending(conn: psycopg.Connection, *, include_set_aside: bool = False) -> tuple[int, int]:
    """(number of rows, highest id) owed by earlier runs, set-aside rows apart."""
    if not exists(conn):
        return 0, 0
    where = "" if include_set_aside or not _has_bookkeeping(conn) else " WHERE set_aside IS NULL"
    count, top = conn.execute(f"SELECT count(*), coalesce(max(id), 0) FROM {TABLE}{where}").fetchone()
    return count, top


def iter_pending(conn: psycopg.Connection, up_to: int, *, chunk: int = 1000,
                 include_set_aside: bool = False) -> Iterator[list[Target]]:
    """Rows up to id ``up_to``, ``chunk`` at a time (keyset pages: memory stays flat)."""
    after = 0
    skip = "" if include_set_aside or not _has_bookkeeping(conn) else " AND set_aside IS NULL"
    while after < up_to:
        rows = conn.execute(
            f"SELECT id, bucket, key_or_prefix, kind FROM {TABLE} WHERE id > %s AND id <= %s{skip} "
            "ORDER BY id LIMIT %s", (after, up_to, chunk)).fetchall()
        if not rows:
            return
        yield [Target(bucket, key, kind, row_id) for row_id, bucket, key, kind in rows]
        after = rows[-1][0]


def remove(conn: psycopg.Connection, ids: Sequence[int]) -> int:
    return conn.execute(f"DELETE FROM {TABLE} WHERE id = ANY(%s)", (list(ids),)).rowcount


def note_failures(conn: psycopg.Connection, failures: dict[int, str], *, max_attempts: int = MAX_ATTEMPTS) -> int:
    """Count one more failed attempt on each row; set aside those past ``max_attempts``.
    Returns how many rows were set aside now."""
    if not failures:
        return 0
    ids = list(failures)
    rows = conn.execute(
        f"UPDATE {TABLE} o SET attempts = o.attempts + 1, last_error = f.error, "
        "set_aside = CASE WHEN o.attempts + 1 >= %s THEN now() END "
        "FROM unnest(%s::bigint[], %s::text[]) f(id, error) WHERE o.id = f.id RETURNING o.set_aside",
        (max_attempts, ids, [failures[i][:500] for i in ids])).fetchall()
    return sum(1 for (aside,) in rows if aside is not None)


def set_aside_rows(conn: psycopg.Connection, *, limit: int = 100) -> tuple[int, list[dict]]:
    """(how many rows are set aside, the first ``limit`` of them) for the report."""
    if not exists(conn) or not _has_bookkeeping(conn):
        return 0, []
    count = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE set_aside IS NOT NULL").fetchone()[0]
    rows = conn.execute(
        f"SELECT bucket, key_or_prefix, kind, attempts, last_error, set_aside FROM {TABLE} "
        "WHERE set_aside IS NOT NULL ORDER BY id LIMIT %s", (limit,)).fetchall()
    return count, [{"bucket": b, "key": k, "kind": kind, "attempts": a, "last_error": e, "set_aside": str(t)}
                   for b, k, kind, a, e, t in rows]


def release_set_aside(conn: psycopg.Connection) -> int:
    """--retry-set-aside: give every set-aside row another chance (attempts start over)."""
    if not exists(conn) or not _has_bookkeeping(conn):
        return 0
    return conn.execute(f"UPDATE {TABLE} SET set_aside = NULL, attempts = 0 WHERE set_aside IS NOT NULL").rowcount
