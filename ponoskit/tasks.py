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
