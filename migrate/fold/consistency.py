"""Before anything is dropped: do the new columns say what the old ones said?

Read-only. Every task's ``process_id`` must be the process of its old workflow, every process
must carry its workflow's farm, start and end (NULL without one), counts must agree, and
every constraint and index the folded schema relies on must exist and be valid.
"""

from __future__ import annotations

import psycopg

from ponoskit import schema
from ponoskit.errors import Refused
from ponoskit.report import SHOWN_IDS

from . import catalog
from .backfill import PROCESSES, TASKS, WORKFLOW_MAPPING



class VerificationFailed(Refused):
    """The new columns disagree with the old ones; nothing was dropped."""


# One pass over each table: its counts, and how many rows disagree with their source.
TASK_COUNTS_SQL = """SELECT count(*), count(t.process_id), count(p.id),
       count(*) FILTER (WHERE t.process_id IS DISTINCT FROM p.id)
  FROM ponos_task t LEFT JOIN process_process p ON p.workflow_id = t.workflow_id"""
PROCESS_COUNTS_SQL = """SELECT count(*), count(p.started), count(p.workflow_id),
       count(*) FILTER (WHERE (p.farm_id, p.started, p.finished) IS DISTINCT FROM (w.farm_id, w.created, w.finished))
  FROM process_process p LEFT JOIN ponos_workflow w ON w.id = p.workflow_id"""
MAPPING_COUNTS_SQL = """SELECT count(*) FILTER (WHERE w.process_id IS DISTINCT FROM p.id)
  FROM ponos_workflow w LEFT JOIN process_process p ON p.workflow_id = w.id"""


def check(conn: psycopg.Connection, *, keep_mapping: bool) -> dict[str, int]:
    problems: list[str] = []
    tasks, with_process, reachable, wrong_tasks = conn.execute(TASK_COUNTS_SQL).fetchone()
    processes, started, with_workflow, wrong_processes = conn.execute(PROCESS_COUNTS_SQL).fetchone()
    wrong_mapping = conn.execute(MAPPING_COUNTS_SQL).fetchone()[0] if keep_mapping else 0
    for wrong, name, backfill in (
            (wrong_tasks, "tasks whose process_id is not their workflow's process", TASKS),
            (wrong_processes, "processes whose farm/started/finished differ from their workflow", PROCESSES),
            (wrong_mapping, "kept workflows not pointing at their process", WORKFLOW_MAPPING)):
        if wrong:
            ids = [str(row[0]) for row in conn.execute(backfill.stragglers_sql, {"limit": SHOWN_IDS})]
            problems.append(f"{wrong} {name}: {', '.join(ids)}{' ...' if wrong > SHOWN_IDS else ''}")
    if not tasks == with_process == reachable:
        problems.append(f"task counts differ: {tasks} tasks, {with_process} with process_id, "
                        f"{reachable} reachable through a workflow")
    if started != with_workflow:
        problems.append(f"{with_workflow} processes have a workflow but {started} have started set")
    problems.extend(schema_problems(conn))
    if problems:
        raise VerificationFailed("verification failed, nothing dropped: " + "; ".join(problems))
    return {"tasks": tasks, "tasks_with_process": with_process, "tasks_of_started_processes": reachable,
            "processes": processes, "processes_started": started, "processes_with_workflow": with_workflow}


def schema_problems(conn: psycopg.Connection) -> list[str]:
    """What is missing or invalid among the constraints and indexes the folded schema needs.

    NOT NULL comes after the drop (see phases.TaskProcessNotNull); the row checks above
    already proved that every task has its process.
    """
    problems = []
    for table, name, contype in ((("ponos_task", schema.TASK_PROCESS_FK, "f"),
                                  ("process_process", schema.PROCESS_FARM_FK, "f"),
                                  ("ponos_task", schema.TASK_UNIQUE_PROCESS_RUN_SLUG, "u"))):
        found = catalog.constraint(conn, table, name)
        if found is None or found.type != contype or not found.validated:
            problems.append(f"constraint {name} is {'missing' if found is None else 'not valid'}")
    for name in (schema.TASK_PROCESS_INDEX, schema.PROCESS_FARM_INDEX, schema.TASK_UNIQUE_PROCESS_RUN_SLUG):
        found = catalog.index(conn, name)
        if found is None or not found.valid:
            problems.append(f"index {name} is {'missing' if found is None else 'invalid'}")
    return problems
