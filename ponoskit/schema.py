"""What the database looks like before and after the fold: names shared by every job.

The fold (migrate/db_fold_workflow.py) builds these objects; the cleanup relies on them;
the naive reference fold (:func:`naive_fold`, a benchmark peer and a test shortcut) builds
the same end state the way a framework migration would, in one transaction.
"""

from __future__ import annotations

import psycopg

TASK_PROCESS_INDEX = "ponos_task_process_id"
TASK_PROCESS_FK = "ponos_task_process_id_fk"
TASK_UNIQUE_PROCESS_RUN_SLUG = "unique_process_run_slug"
PROCESS_FARM_FK = "process_process_farm_id_fk"
PROCESS_FARM_INDEX = "process_process_farm_id"

LEGACY, FOLDED, PARTIAL, UNKNOWN = "legacy", "folded", "partial", "unknown"


def column_exists(conn: psycopg.Connection, table: str, column: str) -> bool:
    # pg_attribute, not information_schema: the latter hides columns the role has no rights
    # on, and a legacy schema would look half-folded to an unprivileged role.
    return conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) "
        "AND attname = %s AND attnum > 0 AND NOT attisdropped)", (table, column)).fetchone()[0]


def table_exists(conn: psycopg.Connection, table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0]


def schema_state(conn: psycopg.Connection) -> str:
    """legacy (nothing folded yet), folded (done), partial (a fold under way), unknown."""
    if not table_exists(conn, "ponos_task") or not table_exists(conn, "process_process"):
        return UNKNOWN
    has_workflow_col = column_exists(conn, "ponos_task", "workflow_id")
    has_process_col = column_exists(conn, "ponos_task", "process_id")
    if has_workflow_col and not has_process_col and not column_exists(conn, "process_process", "started"):
        return LEGACY if table_exists(conn, "ponos_workflow") else UNKNOWN
    if has_process_col and not has_workflow_col and not column_exists(conn, "process_process", "workflow_id"):
        return FOLDED
    return PARTIAL


NAIVE_FOLD_SQL = f"""
ALTER TABLE process_process
    ADD COLUMN farm_id uuid NULL
        CONSTRAINT {PROCESS_FARM_FK} REFERENCES ponos_farm (id) DEFERRABLE INITIALLY DEFERRED,
    ADD COLUMN started timestamptz NULL,
    ADD COLUMN finished timestamptz NULL;
UPDATE process_process p
   SET farm_id = w.farm_id, started = w.created, finished = w.finished
  FROM ponos_workflow w WHERE p.workflow_id = w.id;
CREATE INDEX {PROCESS_FARM_INDEX} ON process_process (farm_id);
ALTER TABLE ponos_task ADD COLUMN process_id uuid NULL;
UPDATE ponos_task t SET process_id = p.id FROM process_process p WHERE p.workflow_id = t.workflow_id;
ALTER TABLE ponos_task ALTER COLUMN process_id SET NOT NULL;
ALTER TABLE ponos_task ADD CONSTRAINT {TASK_PROCESS_FK}
    FOREIGN KEY (process_id) REFERENCES process_process (id) DEFERRABLE INITIALLY DEFERRED;
CREATE INDEX {TASK_PROCESS_INDEX} ON ponos_task (process_id);
ALTER TABLE ponos_task ADD CONSTRAINT {TASK_UNIQUE_PROCESS_RUN_SLUG} UNIQUE (process_id, run, slug);
ALTER TABLE ponos_task DROP COLUMN workflow_id;
ALTER TABLE process_process DROP COLUMN workflow_id;
DROP TABLE ponos_workflow;
"""


def naive_fold(conn: psycopg.Connection) -> None:
    """The fold as one framework migration does it: one transaction, locks held throughout.

    Assumes every task's workflow has a process (tasks without one make SET NOT NULL fail).
    """
    with conn.transaction():
        # Legacy FKs are DEFERRABLE INITIALLY DEFERRED: fire pending checks before altering.
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        conn.execute(NAIVE_FOLD_SQL)
