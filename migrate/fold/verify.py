"""Before anything is dropped: do the new columns say what the old ones said?

Read-only. Every task's ``process_id`` must be the process of its old workflow, every process
must carry its workflow's farm, start and end (NULL without one), counts must agree, and
every constraint and index the folded schema relies on must exist and be valid.
"""

from __future__ import annotations

import psycopg

from ponoskit import schema
from ponoskit.errors import Refused

from . import catalog
from .backfill import PROCESSES, TASKS, WORKFLOW_MAPPING

SHOWN_IDS = 20


class VerificationFailed(Refused):
    """The new columns disagree with the old ones; nothing was dropped."""


def check(conn: psycopg.Connection, *, keep_mapping: bool) -> dict[str, int]:
    problems: list[str] = []
    for name, backfill in (("tasks whose process_id is not their workflow's process", TASKS),
                           ("processes whose farm/started/finished differ from their workflow", PROCESSES),
                           *((("kept workflows not pointing at their process", WORKFLOW_MAPPING),)
                             if keep_mapping else ())):
        wrong = [str(row[0]) for row in conn.execute(backfill.stragglers_sql, {"limit": SHOWN_IDS + 1})]
        if wrong:
            problems.append(f"{name}: {', '.join(wrong[:SHOWN_IDS])}{' ...' if len(wrong) > SHOWN_IDS else ''}")

    counts = dict(zip(
        ("tasks", "tasks_with_process", "tasks_of_started_processes", "processes", "processes_started",
         "processes_with_workflow"),
        conn.execute(
            "SELECT (SELECT count(*) FROM ponos_task), (SELECT count(process_id) FROM ponos_task), "
            "(SELECT count(*) FROM ponos_task t JOIN process_process p ON p.workflow_id = t.workflow_id), "
            "(SELECT count(*) FROM process_process), (SELECT count(started) FROM process_process), "
            "(SELECT count(workflow_id) FROM process_process)").fetchone()))
    if not counts["tasks"] == counts["tasks_with_process"] == counts["tasks_of_started_processes"]:
        problems.append(f"task counts differ: {counts['tasks']} tasks, {counts['tasks_with_process']} with "
                        f"process_id, {counts['tasks_of_started_processes']} reachable through a workflow")
    if counts["processes_started"] != counts["processes_with_workflow"]:
        problems.append(f"{counts['processes_with_workflow']} processes have a workflow but "
                        f"{counts['processes_started']} have started set")

    problems.extend(schema_problems(conn))
    if problems:
        raise VerificationFailed("verification failed, nothing dropped: " + "; ".join(problems))
    return counts


def schema_problems(conn: psycopg.Connection) -> list[str]:
    """What is missing or invalid among the objects the folded schema must have."""
    problems = []
    process_id = catalog.column(conn, "ponos_task", "process_id")
    if process_id is None or not process_id.not_null:
        problems.append("ponos_task.process_id is not NOT NULL")
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
