"""What the database looks like before and after the fold: names shared by every job.

The fold (migrate/db_fold_workflow.py) builds these objects; the cleanup relies on them;
the naive reference fold (ponos_dev.naive_fold, a benchmark peer and a test shortcut) builds
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
