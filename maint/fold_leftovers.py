"""The S3 objects of the tasks ``ponos-migrate db-fold-workflow --orphan-workflows delete`` deleted.

The fold deletes the tasks of workflows no process points at and records each of them, with
its workflow and run, in :data:`TABLE` (migrate/fold/orphans.py creates it; maint never
imports migrate). Their objects are at legacy keys, which the rename never moves for a task
that is gone: ``<workflow>/<task>/...`` (no artifact rows are left, so the prefix is listed)
and ``<workflow>/run_<N>/<task>.log``.

The cleanup hands them to its outbox, a batch per transaction: the outbox targets are
inserted and the recorded rows deleted in the same transaction, so a crash leaves the batch
either handed over or still recorded, never lost, never handed over twice. The outbox then
deletes the objects with the rest (and keeps what S3 refused, as for any target).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import psycopg

from ponoskit import keys
from ponoskit.schema import table_exists

from .outbox import KEY, PREFIX, Target

TABLE = "ponos_fold_deleted_task"

PICK_SQL = (f"SELECT task_id::text, workflow_id::text, run FROM {TABLE} "
            "ORDER BY task_id LIMIT %s FOR UPDATE SKIP LOCKED")
REMOVE_SQL = f"DELETE FROM {TABLE} WHERE task_id = ANY(%s::uuid[])"
PAGE_SQL = f"SELECT task_id::text, workflow_id::text, run FROM {TABLE} WHERE task_id > %s::uuid ORDER BY task_id LIMIT %s"


def present(conn: psycopg.Connection) -> bool:
    return table_exists(conn, TABLE)


def may_hand_over(conn: psycopg.Connection) -> bool:
    """Whether the cleanup's role may read and delete the recorded rows."""
    return conn.execute("SELECT has_table_privilege(%(t)s, 'SELECT') AND has_table_privilege(%(t)s, 'DELETE')",
                        {"t": TABLE}).fetchone()[0]


def recorded(conn: psycopg.Connection) -> int:
    return conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] if present(conn) else 0


def targets_for(rows: Iterable[tuple[str, str, int]], *, artifacts_bucket: str, logs_bucket: str) -> list[Target]:
    """(task, workflow, run) -> the legacy artifacts prefix and the legacy log key."""
    targets = []
    for task_id, workflow_id, run in rows:
        targets.append(Target(artifacts_bucket, keys.legacy_artifact_key(workflow_id, task_id, ""), PREFIX))
        targets.append(Target(logs_bucket, keys.legacy_log_key(workflow_id, run, task_id), KEY))
    return targets


def take_batch(conn: psycopg.Connection, limit: int) -> list[tuple[str, str, int]]:
    """Inside the caller's transaction: lock up to ``limit`` recorded tasks and delete their rows
    (the caller records their targets in the outbox in the same transaction)."""
    rows = conn.execute(PICK_SQL, (limit,)).fetchall()
    if rows:
        conn.execute(REMOVE_SQL, ([task_id for task_id, _, _ in rows],))
    return rows


def iter_recorded(conn: psycopg.Connection, page: int = 1000) -> Iterator[list[tuple[str, str, int]]]:
    """Every recorded task, a page at a time (the dry run; nothing is locked or changed)."""
    after = "00000000-0000-0000-0000-000000000000"
    while True:
        rows = conn.execute(PAGE_SQL, (after, page)).fetchall()
        if not rows:
            return
        yield rows
        after = rows[-1][0]
