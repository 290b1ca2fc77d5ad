"""Which UUIDs are task ids: the database question every S3 job asks, one page of keys at a time.

Task ids survive the fold and workflow ids do not, so this one query settles the key layouts
before and after the fold alike.
"""

from __future__ import annotations

from typing import Iterable

import psycopg

from . import keys

# Ponos task states (ponos.models.State): a finished task will not write again.
FINISHED_STATES = ("completed", "failed", "error", "stopped")
UNFINISHED_STATES = ("unscheduled", "pending", "running", "stopping")


def existing_task_ids(conn: psycopg.Connection, candidates: Iterable[str]) -> set[str]:
    """The lower-case ids among ``candidates`` that are rows of ``ponos_task``."""
    ids = sorted(set(candidates))
    if not ids:
        return set()
    rows = conn.execute("SELECT id::text FROM ponos_task WHERE id = ANY(%s::uuid[])", (ids,))
    return {row[0] for row in rows}


def known_tasks_of_keys(conn: psycopg.Connection, object_keys: Iterable[str]) -> set[str]:
    """The task ids, among the UUIDs of ``object_keys``, for :func:`ponoskit.keys.classify`."""
    return existing_task_ids(conn, (task for key in object_keys for task in keys.task_ids_in(key)))


def task_states_of_keys(conn: psycopg.Connection, object_keys: Iterable[str]) -> dict[str, str]:
    """Task id -> state, for the task ids among the UUIDs of ``object_keys``.

    A dict answers :func:`ponoskit.keys.classify`'s "is it a task?" like a set, and says
    whether the task is still running (it may still write new keys).
    """
    ids = sorted({task for key in object_keys for task in keys.task_ids_in(key)})
    if not ids:
        return {}
    rows = conn.execute("SELECT id::text, state FROM ponos_task WHERE id = ANY(%s::uuid[])", (ids,))
    return dict(rows.fetchall())


# What deleting tasks means, in the caller's transaction: their artifact rows and parent links
# (both directions) go; a GPU they held is released, not deleted; processes stay.
DELETE_TASKS_SQL = {
    "gpus_released": "UPDATE ponos_gpu SET task_id = NULL WHERE task_id = ANY(%(ids)s::uuid[])",
    "task_parents": "DELETE FROM ponos_task_parents "
                    "WHERE from_task_id = ANY(%(ids)s::uuid[]) OR to_task_id = ANY(%(ids)s::uuid[])",
    "artifacts": "DELETE FROM ponos_artifact WHERE task_id = ANY(%(ids)s::uuid[])",
    "tasks": "DELETE FROM ponos_task WHERE id = ANY(%(ids)s::uuid[])",
}


def delete_tasks(conn: psycopg.Connection, task_ids: Iterable) -> dict[str, int]:
    """Delete tasks with their dependent rows; return the row counts by kind."""
    ids = list(task_ids)
    return {name: conn.execute(sql, {"ids": ids}).rowcount for name, sql in DELETE_TASKS_SQL.items()}


def legacy_places(conn: psycopg.Connection, task_ids: Iterable[str]) -> dict[str, tuple[str, int]]:
    """Task id -> (workflow id, run): where its objects live in the legacy layout. Only while
    ``ponos_task.workflow_id`` exists (before the fold's contract)."""
    ids = sorted(set(task_ids))
    if not ids:
        return {}
    rows = conn.execute("SELECT id::text, workflow_id::text, run FROM ponos_task "
                        "WHERE id = ANY(%s::uuid[]) AND workflow_id IS NOT NULL", (ids,))
    return {task: (workflow, run) for task, workflow, run in rows}
