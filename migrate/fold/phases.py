"""The phases of the fold, in order. Each asks the catalog whether it is done before it acts.

A phase has a ``plan`` (what --dry-run prints: SQL and row counts), ``pending`` (the catalog
check) and ``run``. No phase mixes data changes and ALTER TABLE in one transaction, and the
one that drops the old columns does it in a single short transaction, so the schema goes from
"being folded" to "folded" at once and the sync triggers go with the columns they read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from psycopg import errors as pg_errors

from ponoskit import schema

from . import backfill, catalog, orphans, triggers, verify
from .job import KEPT_WORKFLOW_TABLE, ORPHANS_DELETE, Job

TASK_PROCESS_NOT_NULL_CHECK = "ponos_task_process_id_not_null"


@dataclass
class Step:
    phase: str
    pending: bool
    sql: list[str] = field(default_factory=list)
    rows: Optional[int] = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "pending": self.pending, "rows": self.rows, "note": self.note, "sql": self.sql}


class Phase:
    name = ""

    def applies(self, job: Job) -> bool:
        return True

    def pending(self, job: Job) -> bool:
        raise NotImplementedError

    def sql(self, job: Job) -> list[str]:
        return []

    def rows(self, job: Job) -> Optional[int]:
        return None

    def plan(self, job: Job) -> Step:
        pending = self.pending(job)
        return Step(self.name, pending, self.sql(job), self.rows(job) if pending else 0)

    def run(self, job: Job, record: dict[str, Any]) -> None:
        raise NotImplementedError


# --- helpers shared by the DDL phases -----------------------------------------------------

def ensure_index(job: Job, name: str, create_sql: str) -> None:
    """CREATE INDEX CONCURRENTLY, first dropping an INVALID leftover of an interrupted build."""
    def attempt() -> None:
        found = catalog.index(job.conn, name)
        if found is not None and found.valid:
            return
        if found is not None:
            job.ctx.log.warning("index %s is INVALID (an interrupted concurrent build): rebuilding it", name)
            job.conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        job.conn.execute(create_sql)

    with job.ddl.patient():
        job.ddl.retry(f"create index {name}", attempt)


def ensure_constraint(job: Job, table: str, name: str, definition: str) -> None:
    """ADD CONSTRAINT ... NOT VALID (a short lock), then VALIDATE (no lock the application minds)."""
    found = catalog.constraint(job.conn, table, name)
    if found is None:
        job.ddl.execute(f"add {name}", f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition} NOT VALID")
    if found is None or not found.validated:
        try:
            with job.ddl.patient():
                job.ddl.execute(f"validate {name}", f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")
        except (pg_errors.CheckViolation, pg_errors.ForeignKeyViolation) as exc:
            raise verify.VerificationFailed(
                f"{name} does not hold: {' '.join(str(exc).split())}; nothing dropped") from None


def add_constraint_sql(table: str, name: str, definition: str) -> list[str]:
    return [f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition} NOT VALID",
            f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}"]


# --- the phases -------------------------------------------------------------------------

class DeleteOrphans(Phase):
    name = "delete_orphans"

    def applies(self, job: Job) -> bool:
        return job.options.orphans == ORPHANS_DELETE and bool(job.findings.orphans.task_ids)

    def pending(self, job: Job) -> bool:
        return True

    def sql(self, job: Job) -> list[str]:
        return orphans.plan_sql()

    def rows(self, job: Job) -> int:
        return len(job.findings.orphans.task_ids)

    def run(self, job: Job, record: dict[str, Any]) -> None:
        ids = job.findings.orphans.task_ids
        with job.bar(len(ids), "delete orphan tasks", "task") as bar:
            record["rows"] = orphans.delete_tasks(job.ddl, ids, job.options.batch_size, bar.update)


NEW_COLUMNS = [("process_process", "farm_id", "uuid NULL"), ("process_process", "started", "timestamptz NULL"),
               ("process_process", "finished", "timestamptz NULL"), ("ponos_task", "process_id", "uuid NULL")]


class AddColumns(Phase):
    """Nullable columns without default: a catalog change, the lock lasts milliseconds."""
    name = "add_columns"

    def missing(self, job: Job) -> dict[str, list[str]]:
        missing: dict[str, list[str]] = {}
        for table, column, definition in NEW_COLUMNS:
            if catalog.column(job.conn, table, column) is None:
                missing.setdefault(table, []).append(f"ADD COLUMN IF NOT EXISTS {column} {definition}")
        return missing

    def pending(self, job: Job) -> bool:
        return bool(self.missing(job))

    def sql(self, job: Job) -> list[str]:
        return [f"ALTER TABLE {table} {', '.join(adds)}" for table, adds in self.missing(job).items()]

    def run(self, job: Job, record: dict[str, Any]) -> None:
        for statement in self.sql(job):
            job.ddl.execute("add columns", statement)


class InstallSyncTriggers(Phase):
    name = "install_sync_triggers"

    def pending(self, job: Job) -> bool:
        return not all(catalog.trigger_exists(job.conn, t.table, t.name) for t in triggers.all_triggers(job.conn))

    def sql(self, job: Job) -> list[str]:
        return [s for t in triggers.all_triggers(job.conn) for s in (t.create_function_sql(), t.create_trigger_sql())]

    def run(self, job: Job, record: dict[str, Any]) -> None:
        for trigger in triggers.all_triggers(job.conn):
            job.conn.execute(trigger.create_function_sql())  # no table lock
            if not catalog.trigger_exists(job.conn, trigger.table, trigger.name):
                job.ddl.execute(f"create trigger {trigger.name}", trigger.create_trigger_sql())


class Backfill(Phase):
    def __init__(self, name: str, source: backfill.Backfill, unit: str):
        self.name, self.source, self.unit = name, source, unit

    def _columns_exist(self, job: Job) -> bool:
        return not AddColumns().pending(job)

    def pending(self, job: Job) -> bool:
        if not self._columns_exist(job):
            return True
        return (backfill.todo(job.conn, self.source) > 0
                or job.conn.execute(self.source.stragglers_sql, {"limit": 1}).fetchone() is not None)

    def sql(self, job: Job) -> list[str]:
        return self.source.plan_sql()

    def rows(self, job: Job) -> int:
        if self._columns_exist(job):
            return backfill.todo(job.conn, self.source)
        counts = job.findings.counts
        return counts["tasks"] if self.source is backfill.TASKS else counts["processes"] - counts[
            "processes_never_started"]

    def run(self, job: Job, record: dict[str, Any]) -> None:
        with job.bar(backfill.todo(job.conn, self.source), f"backfill {self.source.name}", self.unit) as bar:
            record["rows"] = backfill.run(job.ddl, self.source, job.options.batch_size, bar.update)
        job.ctx.report.count(f"backfilled_{self.source.table}", record["rows"])


class CreateIndex(Phase):
    def __init__(self, name: str, index: str, create_sql: str):
        self.name, self.index, self.create_sql = name, index, create_sql

    def pending(self, job: Job) -> bool:
        found = catalog.index(job.conn, self.index)
        return found is None or not found.valid

    def sql(self, job: Job) -> list[str]:
        return [self.create_sql]

    def run(self, job: Job, record: dict[str, Any]) -> None:
        ensure_index(job, self.index, self.create_sql)


class AddConstraint(Phase):
    def __init__(self, name: str, table: str, constraint: str, definition: str):
        self.name, self.table, self.constraint, self.definition = name, table, constraint, definition

    def pending(self, job: Job) -> bool:
        found = catalog.constraint(job.conn, self.table, self.constraint)
        return found is None or not found.validated

    def sql(self, job: Job) -> list[str]:
        return add_constraint_sql(self.table, self.constraint, self.definition)

    def run(self, job: Job, record: dict[str, Any]) -> None:
        ensure_constraint(job, self.table, self.constraint, self.definition)


class TaskProcessNotNull(Phase):
    """SET NOT NULL skips its table scan when a validated CHECK already proves it (PG 12+)."""
    name = "task_process_not_null"
    check_definition = "CHECK (process_id IS NOT NULL)"

    def pending(self, job: Job) -> bool:
        column = catalog.column(job.conn, "ponos_task", "process_id")
        return (column is None or not column.not_null
                or catalog.constraint(job.conn, "ponos_task", TASK_PROCESS_NOT_NULL_CHECK) is not None)

    def sql(self, job: Job) -> list[str]:
        return [*add_constraint_sql("ponos_task", TASK_PROCESS_NOT_NULL_CHECK, self.check_definition),
                "ALTER TABLE ponos_task ALTER COLUMN process_id SET NOT NULL",
                f"ALTER TABLE ponos_task DROP CONSTRAINT IF EXISTS {TASK_PROCESS_NOT_NULL_CHECK}"]

    def run(self, job: Job, record: dict[str, Any]) -> None:
        if not catalog.column(job.conn, "ponos_task", "process_id").not_null:
            ensure_constraint(job, "ponos_task", TASK_PROCESS_NOT_NULL_CHECK, self.check_definition)
            job.ddl.execute("set process_id not null", "ALTER TABLE ponos_task ALTER COLUMN process_id SET NOT NULL")
        job.ddl.execute("drop the not-null check",
                        f"ALTER TABLE ponos_task DROP CONSTRAINT IF EXISTS {TASK_PROCESS_NOT_NULL_CHECK}")


class UniqueProcessRunSlug(Phase):
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
            raise verify.VerificationFailed(
                f"(process_id, run, slug) is not unique: {' '.join(str(exc).split())}; nothing dropped") from None
        job.ddl.execute("adopt the unique index", self.constraint_sql)


class KeepWorkflowMapping(Phase):
    """--keep-workflow-table: the kept table gets process_id, so a rollback can find its way back."""
    name = "keep_workflow_mapping"
    add_column_sql = "ALTER TABLE ponos_workflow ADD COLUMN IF NOT EXISTS process_id uuid NULL"

    def applies(self, job: Job) -> bool:
        return job.options.keep_workflow_table

    def pending(self, job: Job) -> bool:
        if catalog.column(job.conn, "ponos_workflow", "process_id") is None:
            return True
        return job.conn.execute(backfill.WORKFLOW_MAPPING.stragglers_sql, {"limit": 1}).fetchone() is not None

    def sql(self, job: Job) -> list[str]:
        return [self.add_column_sql, triggers.process_tasks_sync(True).create_function_sql(),
                *backfill.WORKFLOW_MAPPING.plan_sql()]

    def rows(self, job: Job) -> int:
        return job.findings.counts.get("workflows", 0)

    def run(self, job: Job, record: dict[str, Any]) -> None:
        if catalog.column(job.conn, "ponos_workflow", "process_id") is None:
            job.ddl.execute("add ponos_workflow.process_id", self.add_column_sql)
        # From now on a process that starts also marks its workflow; then copy the rest.
        job.conn.execute(triggers.process_tasks_sync(True).create_function_sql())
        with job.bar(backfill.todo(job.conn, backfill.WORKFLOW_MAPPING), "map kept workflows", "workflow") as bar:
            record["rows"] = backfill.run(job.ddl, backfill.WORKFLOW_MAPPING, job.options.batch_size, bar.update)


class Verify(Phase):
    name = "verify"

    def pending(self, job: Job) -> bool:
        return True

    def sql(self, job: Job) -> list[str]:
        return [backfill.TASKS.stragglers_sql, backfill.PROCESSES.stragglers_sql]

    def run(self, job: Job, record: dict[str, Any]) -> None:
        counts = verify.check(job.conn, keep_mapping=job.options.keep_workflow_table)
        record.update(counts)
        for name, value in counts.items():
            job.ctx.report.count(f"verified_{name}", value)


class DropWorkflow(Phase):
    """One short transaction: the sync triggers, both workflow_id columns, the table."""
    name = "drop_workflow"

    def pending(self, job: Job) -> bool:
        return schema.schema_state(job.conn) != schema.FOLDED

    def sql(self, job: Job) -> list[str]:
        last = (f"ALTER TABLE ponos_workflow RENAME TO {KEPT_WORKFLOW_TABLE}" if job.options.keep_workflow_table
                else "DROP TABLE ponos_workflow")
        return ["LOCK TABLE ponos_task, process_process, ponos_workflow IN ACCESS EXCLUSIVE MODE",
                *[s for t in triggers.all_triggers(job.conn) for s in t.drop_sql()],
                "ALTER TABLE ponos_task DROP COLUMN workflow_id",
                "ALTER TABLE process_process DROP COLUMN workflow_id", last,
                "ANALYZE ponos_task (process_id), process_process (farm_id, started, finished)"]

    def run(self, job: Job, record: dict[str, Any]) -> None:
        *in_transaction, analyze = self.sql(job)

        def drop(conn) -> None:
            for statement in in_transaction:
                conn.execute(statement)

        job.ddl.transaction("drop the workflow columns and table", drop)
        job.conn.execute(analyze)  # fresh planner statistics for the new columns


def all_phases() -> list[Phase]:
    return [
        DeleteOrphans(),
        AddColumns(),
        InstallSyncTriggers(),
        Backfill("backfill_processes", backfill.PROCESSES, "process"),
        Backfill("backfill_tasks", backfill.TASKS, "task"),
        CreateIndex("index_process_farm", schema.PROCESS_FARM_INDEX,
                    f"CREATE INDEX CONCURRENTLY {schema.PROCESS_FARM_INDEX} ON process_process (farm_id)"),
        AddConstraint("constrain_process_farm", "process_process", schema.PROCESS_FARM_FK,
                      "FOREIGN KEY (farm_id) REFERENCES ponos_farm (id) DEFERRABLE INITIALLY DEFERRED"),
        CreateIndex("index_task_process", schema.TASK_PROCESS_INDEX,
                    f"CREATE INDEX CONCURRENTLY {schema.TASK_PROCESS_INDEX} ON ponos_task (process_id)"),
        AddConstraint("constrain_task_process", "ponos_task", schema.TASK_PROCESS_FK,
                      "FOREIGN KEY (process_id) REFERENCES process_process (id) DEFERRABLE INITIALLY DEFERRED"),
        TaskProcessNotNull(),
        UniqueProcessRunSlug(),
        KeepWorkflowMapping(),
        Verify(),
        DropWorkflow(),
    ]
