"""``--orphan-workflows delete``: delete the tasks of workflows no process points at, never silently.

Each batch records the tasks it deletes, with their artifact paths, in an outbox table
(:data:`OUTBOX`) in the same transaction as the DELETE: a SIGKILL between the commit and the
report loses nothing, since every run reports the outbox's content again. The report lists each
deleted task's S3 keys in both layouts (the fold usually runs before the S3 rename).

``ponos-maint cleanup`` deletes those files: each run hands the recorded tasks to its own
outbox (their legacy keys: ``<workflow>/<task>/`` listed, ``<workflow>/run_<N>/<task>.log``)
and deletes their rows here in the same transaction (maint/fold_leftovers.py, which names
this table on its own: maint never imports migrate). Once it is empty, the table may go.
"""

from __future__ import annotations

from typing import Callable, Iterable

import psycopg

from ponoskit import keys
from ponoskit.report import Report
from ponoskit.tasks import DELETE_TASKS_SQL
from ponoskit.tasks import delete_tasks as delete_tasks_and_rows

from .catalog import table_exists
from .ddl import Ddl

OUTBOX = "ponos_fold_deleted_task"

CREATE_OUTBOX_SQL = f"""CREATE TABLE IF NOT EXISTS {OUTBOX} (
    task_id         uuid PRIMARY KEY,
    workflow_id     uuid NOT NULL,
    run             integer NOT NULL,
    artifact_paths  text[] NOT NULL,
    deleted_at      timestamptz NOT NULL DEFAULT now()
)"""

# Re-checks the orphan condition: a task whose process appeared since the preflight is kept.
RECORD_BATCH_SQL = f"""INSERT INTO {OUTBOX} (task_id, workflow_id, run, artifact_paths)
SELECT t.id, t.workflow_id, t.run,
       coalesce(array_agg(a.path ORDER BY a.path) FILTER (WHERE a.path IS NOT NULL), '{{}}')
  FROM ponos_task t LEFT JOIN ponos_artifact a ON a.task_id = t.id
 WHERE t.id = ANY(%(ids)s::uuid[])
   AND NOT EXISTS (SELECT 1 FROM process_process p WHERE p.workflow_id = t.workflow_id)
 GROUP BY t.id
ON CONFLICT (task_id) DO NOTHING
RETURNING task_id"""

def plan_sql() -> list[str]:
    return [CREATE_OUTBOX_SQL, RECORD_BATCH_SQL, *DELETE_TASKS_SQL.values()]


def delete_tasks(ddl: Ddl, task_ids: list[str], batch_size: int,
                 on_batch: Callable[[int], None] = lambda n: None) -> int:
    """Delete the given orphan tasks with their artifacts and parent links; return how many."""
    ddl.execute(f"create {OUTBOX}", CREATE_OUTBOX_SQL)
    deleted = 0
    for start in range(0, len(task_ids), batch_size):
        batch = task_ids[start:start + batch_size]

        def delete_batch(conn: psycopg.Connection) -> int:
            recorded = [row[0] for row in conn.execute(RECORD_BATCH_SQL, {"ids": batch})]
            delete_tasks_and_rows(conn, recorded)
            return len(recorded)

        done = ddl.transaction("delete orphan tasks", delete_batch)
        deleted += done
        on_batch(done)
    return deleted


def report_deleted(conn: psycopg.Connection, report: Report) -> int:
    """List every task the outbox holds, with its S3 keys in both layouts; return the count."""
    if not table_exists(conn, OUTBOX):
        return 0
    rows = conn.execute(f"SELECT task_id::text, workflow_id::text, run, artifact_paths, deleted_at "
                        f"FROM {OUTBOX} ORDER BY task_id").fetchall()
    for task_id, workflow_id, run, paths, deleted_at in rows:
        report.add("deleted_orphan_tasks", _s3_record(task_id, workflow_id, run, paths, deleted_at))
    return len(rows)


def _s3_record(task_id: str, workflow_id: str, run: int, paths: Iterable[str], deleted_at) -> dict:
    return {
        "task_id": task_id,
        "workflow_id": workflow_id,
        "deleted_at": deleted_at,
        # Where the files are before the S3 rename (legacy) and after it (new); the prefixes also
        # catch files the database never knew.
        "artifacts": {"legacy_prefix": keys.legacy_artifact_key(workflow_id, task_id, ""),
                      "prefix": keys.artifact_prefix(task_id),
                      "legacy_keys": [keys.legacy_artifact_key(workflow_id, task_id, p) for p in paths],
                      "keys": [keys.artifact_key(task_id, p) for p in paths]},
        "log": {"legacy_key": keys.legacy_log_key(workflow_id, run, task_id), "key": keys.log_key(task_id)},
    }
