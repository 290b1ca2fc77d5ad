"""The cleanup's outbox: S3 work that is owed because database rows are already gone.

A row is written in the same transaction that deletes a task, so the promise to delete the
task's files commits (or rolls back) with the deletion itself. A row is removed only after
S3 confirmed every object it covers is gone. Whatever happens in between (S3 down, SIGKILL),
the next run finds the row and finishes the work first: no object is ever forgotten.

One row is one :class:`Target`: an exact key (a task's log) or a prefix (a task's artifacts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

import psycopg

from ponoskit import keys

TABLE = "ponos_cleanup_outbox"
KEY, PREFIX = "key", "prefix"

CREATE_SQL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id              bigserial PRIMARY KEY,
    bucket          text NOT NULL,
    key_or_prefix   text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('{KEY}', '{PREFIX}')),
    created         timestamptz NOT NULL DEFAULT now()
)"""


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


def exists(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()[0]


def ensure(conn: psycopg.Connection) -> None:
    conn.execute(CREATE_SQL)


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


def pending(conn: psycopg.Connection) -> tuple[int, int]:
    """(number of rows, highest id) owed by earlier runs."""
    if not exists(conn):
        return 0, 0
    count, top = conn.execute(f"SELECT count(*), coalesce(max(id), 0) FROM {TABLE}").fetchone()
    return count, top


def iter_pending(conn: psycopg.Connection, up_to: int, *, chunk: int = 1000) -> Iterator[list[Target]]:
    """Rows up to id ``up_to``, ``chunk`` at a time (keyset pages: memory stays flat)."""
    after = 0
    while after < up_to:
        rows = conn.execute(
            f"SELECT id, bucket, key_or_prefix, kind FROM {TABLE} WHERE id > %s AND id <= %s "
            "ORDER BY id LIMIT %s", (after, up_to, chunk)).fetchall()
        if not rows:
            return
        yield [Target(bucket, key, kind, row_id) for row_id, bucket, key, kind in rows]
        after = rows[-1][0]


def remove(conn: psycopg.Connection, ids: Sequence[int]) -> int:
    return conn.execute(f"DELETE FROM {TABLE} WHERE id = ANY(%s)", (list(ids),)).rowcount
