"""Steps that change the schema: indexes, constraints, the drop, NOT NULL.

Indexes are built (and, for a rollback, dropped) CONCURRENTLY and constraints added NOT VALID
then validated, so none of them holds a lock the application queues behind for longer than a
catalog change. The drop is the contract: the one step with no way back.
"""

from __future__ import annotations

from typing import Any

from psycopg import errors as pg_errors

from ponoskit import schema
from ponoskit.report import SHOWN_IDS

from . import catalog, consistency, django_migrations, triggers
from .job import KEPT_WORKFLOW_TABLE, Job
from .step import Step, add_constraint_sql, drop_index, ensure_constraint, ensure_index

TASK_PROCESS_NOT_NULL_CHECK = "ponos_task_process_id_not_null"
NOT_NULL_CHECK = "CHECK (process_id IS NOT NULL)"
ANALYZE_SQL = "ANALYZE ponos_task (process_id), process_process (farm_id, started, finished)"
NULL_PROCESS_SQL = "SELECT id FROM ponos_task WHERE process_id IS NULL LIMIT %(limit)s"  # via the index
DROP_LOCK_SQL = "LOCK TABLE ponos_task, process_process, ponos_workflow IN ACCESS EXCLUSIVE MODE"


class CreateIndex(Step):
    def __init__(self, name: str, index: str, create_sql: str):
        self.name, self.index, self.create_sql = name, index, create_sql

    def pending(self, job: Job) -> bool:
        found = catalog.index(job.conn, self.index)
        return found is None or not found.valid

    def sql(self, job: Job) -> list[str]:
        return [self.create_sql]

    def run(self, job: Job, record: dict[str, Any]) -> None:
        ensure_index(job, self.index, self.create_sql)

    def undo_pending(self, job: Job) -> bool:
        return catalog.index(job.conn, self.index) is not None

    def undo_sql(self, job: Job) -> list[str]:
        return [f"DROP INDEX CONCURRENTLY IF EXISTS {self.index}"]

    def undo(self, job: Job, record: dict[str, Any]) -> None:
        drop_index(job, self.index)


class AddConstraint(Step):
    def __init__(self, name: str, table: str, constraint: str, definition: str):
        self.name, self.table, self.constraint, self.definition = name, table, constraint, definition

    def pending(self, job: Job) -> bool:
        found = catalog.constraint(job.conn, self.table, self.constraint)
        return found is None or not found.validated

    def sql(self, job: Job) -> list[str]:
        return add_constraint_sql(self.table, self.constraint, self.definition)

    def run(self, job: Job, record: dict[str, Any]) -> None:
        ensure_constraint(job, self.table, self.constraint, self.definition)

    def undo_pending(self, job: Job) -> bool:
        return catalog.constraint(job.conn, self.table, self.constraint) is not None

    def undo_sql(self, job: Job) -> list[str]:
        return [f"ALTER TABLE {self.table} DROP CONSTRAINT IF EXISTS {self.constraint}"]


class UniqueProcessRunSlug(Step):
    """A unique index built CONCURRENTLY, then adopted by the constraint (a catalog change)."""
    name = "unique_process_run_slug"
    index_sql = (f"CREATE UNIQUE INDEX CONCURRENTLY {schema.TASK_UNIQUE_PROCESS_RUN_SLUG} "
                 "ON ponos_task (process_id, run, slug)")
    constraint_sql = (f"ALTER TABLE ponos_task ADD CONSTRAINT {schema.TASK_UNIQUE_PROCESS_RUN_SLUG} "
                      f"UNIQUE USING INDEX {schema.TASK_UNIQUE_PROCESS_RUN_SLUG}")

    def pending(self, job: Job) -> bool:
        return catalog.constraint(job.conn, "ponos_task", schema.TASK_UNIQUE_PROCESS_RUN_SLUG) is None

    def sql(self, job: Job) -> list[str]:
        return [self.index_sql, self.constraint_sql]

    def run(self, job: Job, record: dict[str, Any]) -> None:
        try:
            ensure_index(job, schema.TASK_UNIQUE_PROCESS_RUN_SLUG, self.index_sql)
        except pg_errors.UniqueViolation as exc:
            raise consistency.VerificationFailed(
                f"(process_id, run, slug) is not unique: {' '.join(str(exc).split())}; nothing dropped") from None
        job.ddl.execute("adopt the unique index", self.constraint_sql)

    def undo_pending(self, job: Job) -> bool:
        return (catalog.constraint(job.conn, "ponos_task", schema.TASK_UNIQUE_PROCESS_RUN_SLUG) is not None
                or catalog.index(job.conn, schema.TASK_UNIQUE_PROCESS_RUN_SLUG) is not None)

    def undo_sql(self, job: Job) -> list[str]:
        return [f"ALTER TABLE ponos_task DROP CONSTRAINT IF EXISTS {schema.TASK_UNIQUE_PROCESS_RUN_SLUG}",
                f"DROP INDEX CONCURRENTLY IF EXISTS {schema.TASK_UNIQUE_PROCESS_RUN_SLUG}"]

    def undo(self, job: Job, record: dict[str, Any]) -> None:
        if catalog.constraint(job.conn, "ponos_task", schema.TASK_UNIQUE_PROCESS_RUN_SLUG) is not None:
            job.ddl.execute("drop the unique constraint", self.undo_sql(job)[0])  # drops its index too
        drop_index(job, schema.TASK_UNIQUE_PROCESS_RUN_SLUG)  # a leftover of an interrupted build


class DropWorkflow(Step):
    """One short transaction: the sync triggers, both workflow_id columns, the table.

    Under its lock nothing can write, so it also makes sure (through the process_id index, at
    once) that no task lost its process since the verification, and adds the NOT NULL check
    NOT VALID: from the commit on, every new task must have a process.
    """
    name = "drop_workflow"

    def pending(self, job: Job) -> bool:
        return schema.schema_state(job.conn) != schema.FOLDED

    def sql(self, job: Job) -> list[str]:
        """What --dry-run shows: the lock, the check for lost processes, the changes, ANALYZE."""
        return [DROP_LOCK_SQL, NULL_PROCESS_SQL.replace("%(limit)s", "1"), *self.changes(job), ANALYZE_SQL]

    def changes(self, job: Job) -> list[str]:
        """The statements that drop the workflow, run under DROP_LOCK_SQL in one transaction."""
        last = (f"ALTER TABLE ponos_workflow RENAME TO {KEPT_WORKFLOW_TABLE}" if job.options.keep_workflow_table
                else "DROP TABLE ponos_workflow")
        django = []
        if job.options.django_migration:
            django = [django_migrations.RECORD_SQL]
        return [*triggers.drop_all_sql(),
                f"ALTER TABLE ponos_task ADD CONSTRAINT {TASK_PROCESS_NOT_NULL_CHECK} {NOT_NULL_CHECK} NOT VALID",
                "ALTER TABLE ponos_task DROP COLUMN workflow_id",
                "ALTER TABLE process_process DROP COLUMN workflow_id", last, *django]

    def run(self, job: Job, record: dict[str, Any]) -> None:
        changes = self.changes(job)

        def drop(conn) -> None:
            conn.execute(DROP_LOCK_SQL)
            lost = [str(row[0]) for row in conn.execute(NULL_PROCESS_SQL, {"limit": SHOWN_IDS + 1})]
            if lost:
                raise consistency.VerificationFailed(
                    f"task(s) without a process appeared since the verification: "
                    f"{', '.join(lost[:SHOWN_IDS])}; nothing dropped; run again (the preflight lists them)")
            for statement in changes:
                conn.execute(statement, django_migrations.params(job.options.django_migration)
                             if statement == django_migrations.RECORD_SQL else None)

        job.ddl.transaction("drop the workflow columns and table", drop)
        with job.ddl.patient():  # fresh planner statistics for the new columns; blocks no query
            job.ddl.execute("analyze", ANALYZE_SQL)


class TaskProcessNotNull(Step):
    """After the drop: VALIDATE the CHECK the drop added, SET NOT NULL (no scan: PG 12+), drop it.

    Not before the drop: the legacy application inserts a workflow's tasks before it points
    the process at the workflow (one transaction), so a NOT NULL enforced while it still runs
    would make starting a process fail. The drop adds the CHECK NOT VALID, which holds every
    row written from then on, after proving under its lock (through the index) that no NULL
    is left.
    """
    name = "task_process_not_null"

    def pending(self, job: Job) -> bool:
        column = catalog.column(job.conn, "ponos_task", "process_id")
        return (column is None or not column.not_null
                or catalog.constraint(job.conn, "ponos_task", TASK_PROCESS_NOT_NULL_CHECK) is not None)

    def sql(self, job: Job) -> list[str]:
        return [f"ALTER TABLE ponos_task VALIDATE CONSTRAINT {TASK_PROCESS_NOT_NULL_CHECK}",
                "ALTER TABLE ponos_task ALTER COLUMN process_id SET NOT NULL",
                f"ALTER TABLE ponos_task DROP CONSTRAINT IF EXISTS {TASK_PROCESS_NOT_NULL_CHECK}"]

    def run(self, job: Job, record: dict[str, Any]) -> None:
        if not catalog.column(job.conn, "ponos_task", "process_id").not_null:
            ensure_constraint(job, "ponos_task", TASK_PROCESS_NOT_NULL_CHECK, NOT_NULL_CHECK)
            job.ddl.execute("set process_id not null", "ALTER TABLE ponos_task ALTER COLUMN process_id SET NOT NULL")
        job.ddl.execute("drop the not-null check",
                        f"ALTER TABLE ponos_task DROP CONSTRAINT IF EXISTS {TASK_PROCESS_NOT_NULL_CHECK}")
