"""Checks that run before any change: the schema's shape, the role's rights, orphan rows.

Everything here only reads. A problem becomes a typed error (ConfigError: exit 2, Refused:
exit 1) whose message names what is wrong; the fold then changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import psycopg

from ponoskit import schema
from ponoskit.errors import ConfigError, Refused
from ponoskit.report import SHOWN_IDS

from . import catalog

MIN_SERVER_VERSION = 120000  # SET NOT NULL uses a validated CHECK instead of a scan from 12 on
OWNED_TABLES = ("ponos_task", "process_process", "ponos_workflow")
# The new columns: if a partial fold left them, they must be the ones this fold adds.
NEW_COLUMNS = {("process_process", "farm_id"): "uuid", ("process_process", "started"): "timestamp with time zone",
               ("process_process", "finished"): "timestamp with time zone", ("ponos_task", "process_id"): "uuid"}


class OrphansFound(Refused):
    """Workflows that no process points at (and their tasks): refused unless asked to delete."""

    def __init__(self, orphans: "Orphans"):
        self.orphans = orphans
        shown = ", ".join(f"{wf} ({n} tasks)" for wf, n in orphans.workflows[:SHOWN_IDS])
        more = len(orphans.workflows) - SHOWN_IDS
        super().__init__(
            f"{len(orphans.workflows)} workflow(s) without a process, holding {len(orphans.task_ids)} task(s): "
            f"{shown}{f' and {more} more (see the report)' if more > 0 else ''}; nothing changed. "
            "Fix them, or re-run with --orphan-workflows delete to delete those tasks (their S3 keys are listed in "
            "the report).")


@dataclass
class Orphans:
    workflows: list[tuple[str, int]] = field(default_factory=list)  # (workflow id, its task count)
    task_ids: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.workflows or self.task_ids)


@dataclass
class Findings:
    state: str  # schema.LEGACY, FOLDED or PARTIAL (a fold of ours under way)
    counts: dict[str, int] = field(default_factory=dict)
    orphans: Orphans = field(default_factory=Orphans)


def check(conn: psycopg.Connection, *, keep_table: Optional[str] = None) -> Findings:
    _check_server(conn)
    # Rights first: information_schema (behind schema_state) hides what the role may not see.
    _check_privileges(conn)
    state = schema.schema_state(conn)
    if state == schema.FOLDED:
        return Findings(state)
    if state == schema.UNKNOWN:
        raise ConfigError("the database holds neither the legacy nor the folded Ponos tables "
                      "(ponos_task, process_process, ponos_workflow); nothing changed")
    if state == schema.PARTIAL:
        _check_partial_is_ours(conn)
    if keep_table and catalog.table_exists(conn, keep_table):
        raise ConfigError(f"--keep-workflow-table: table {keep_table} already exists (an earlier fold's "
                          "rollback copy?); rename or drop it first; nothing changed")
    return Findings(state, counts=_counts(conn), orphans=find_orphans(conn))


def _check_server(conn: psycopg.Connection) -> None:
    version = conn.info.server_version
    if version < MIN_SERVER_VERSION:
        raise ConfigError(f"PostgreSQL {version // 10000} is too old for an online fold (12 or later needed)")


def _check_partial_is_ours(conn: psycopg.Connection) -> None:
    """A partial schema is resumed only if it is one this fold can have left behind."""
    missing = [name for name, present in (
        ("ponos_workflow", catalog.table_exists(conn, "ponos_workflow")),
        ("ponos_task.workflow_id", catalog.column(conn, "ponos_task", "workflow_id")),
        ("process_process.workflow_id", catalog.column(conn, "process_process", "workflow_id"))) if not present]
    wrong = [f"{table}.{name} is {col.type}" for (table, name), type_ in NEW_COLUMNS.items()
             if (col := catalog.column(conn, table, name)) is not None and col.type != type_]
    if missing or wrong:
        raise Refused("the schema is half-way between legacy and folded, not in a state this fold leaves: "
                      + "; ".join([f"{m} is missing" for m in missing] + wrong) + "; nothing changed")


def _check_privileges(conn: psycopg.Connection) -> None:
    """ALTER TABLE, CREATE TRIGGER and CREATE INDEX need ownership; spell out what is missing."""
    problems = [f"not the owner of {table}" for table, owner in conn.execute(
        "SELECT c.relname, pg_has_role(c.relowner, 'USAGE') FROM pg_class c "
        "WHERE c.oid = ANY(ARRAY[" + ", ".join("to_regclass(%s)" for _ in OWNED_TABLES) + "])",
        OWNED_TABLES).fetchall() if not owner]
    # A table that does not exist (NULL) is the schema check's business, not a missing right.
    rights = conn.execute(
        "SELECT has_schema_privilege(current_schema(), 'CREATE'), "
        "coalesce(has_table_privilege(to_regclass('ponos_farm'), 'REFERENCES'), true), "
        "coalesce(has_table_privilege(to_regclass('ponos_artifact'), 'SELECT, DELETE'), true), "
        "coalesce(has_table_privilege(to_regclass('ponos_task_parents'), 'DELETE'), true)").fetchone()
    for granted, need in zip(rights, ("CREATE on the schema", "REFERENCES on ponos_farm",
                                      "SELECT and DELETE on ponos_artifact", "DELETE on ponos_task_parents")):
        if not granted:
            problems.append(f"no {need}")
    if problems:
        user = conn.execute("SELECT current_user").fetchone()[0]
        raise ConfigError(f"role {user} cannot fold the tables: {', '.join(problems)}; "
                          "run as the owner of the Ponos tables; nothing changed")


def _counts(conn: psycopg.Connection) -> dict[str, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM ponos_workflow), (SELECT count(*) FROM process_process), "
        "(SELECT count(*) FROM process_process WHERE workflow_id IS NULL), "
        "(SELECT count(*) FROM ponos_task)").fetchone()
    return dict(zip(("workflows", "processes", "processes_never_started", "tasks"), row))


def find_orphans(conn: psycopg.Connection) -> Orphans:
    workflows = conn.execute(
        "SELECT w.id::text, (SELECT count(*) FROM ponos_task t WHERE t.workflow_id = w.id) "
        "FROM ponos_workflow w "
        "WHERE NOT EXISTS (SELECT 1 FROM process_process p WHERE p.workflow_id = w.id) ORDER BY w.id").fetchall()
    tasks = [row[0] for row in conn.execute(
        "SELECT t.id::text FROM ponos_task t "
        "WHERE NOT EXISTS (SELECT 1 FROM process_process p WHERE p.workflow_id = t.workflow_id) ORDER BY t.id")]
    return Orphans(workflows, tasks)
