"""Steps that move data: orphans, new columns, sync triggers, backfills, the kept mapping, verify.

Each one the expand adds can be taken away by the rollback (``undo``): the new columns and
triggers go; the legacy columns were never touched, and every row either release wrote
meanwhile already has them filled (the triggers saw to it).
"""

from __future__ import annotations

from typing import Any

from . import backfill, catalog, consistency, orphans, triggers
from .job import ORPHANS_DELETE, Job
from .step import Step


class DeleteOrphans(Step):
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


class AddColumns(Step):
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

    def present(self, job: Job) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for table, column, _ in NEW_COLUMNS:
            if catalog.column(job.conn, table, column) is not None:
                found.setdefault(table, []).append(f"DROP COLUMN IF EXISTS {column}")
        return found

    def undo_pending(self, job: Job) -> bool:
        return bool(self.present(job))

    def undo_sql(self, job: Job) -> list[str]:
        return [f"ALTER TABLE {table} {', '.join(drops)}" for table, drops in self.present(job).items()]


class InstallSyncTriggers(Step):
    name = "install_sync_triggers"

    def pending(self, job: Job) -> bool:
        return not all(catalog.trigger_exists(job.conn, t.table, t.name) for t in triggers.all_triggers(job.conn))

    def sql(self, job: Job) -> list[str]:
        return [triggers.WORKFLOW_OF_SQL, *[s for t in triggers.all_triggers(job.conn)
                                            for s in (t.create_function_sql(), t.create_trigger_sql())]]

    def run(self, job: Job, record: dict[str, Any]) -> None:
        job.ddl.execute(f"create function {triggers.WORKFLOW_OF_FUNCTION}", triggers.WORKFLOW_OF_SQL)
        for trigger in triggers.all_triggers(job.conn):
            job.ddl.execute(f"create function {trigger.name}", trigger.create_function_sql())  # no table lock
            if not catalog.trigger_exists(job.conn, trigger.table, trigger.name):
                job.ddl.execute(f"create trigger {trigger.name}", trigger.create_trigger_sql())

    def undo_pending(self, job: Job) -> bool:
        return (any(catalog.trigger_exists(job.conn, table, name) for name, table in triggers.ALL_NAMES.items())
                or any(catalog.function_exists(job.conn, name)
                       for name in (*triggers.ALL_NAMES, triggers.WORKFLOW_OF_FUNCTION)))

    def undo_sql(self, job: Job) -> list[str]:
        return triggers.drop_all_sql()


class Backfill(Step):
    def __init__(self, name: str, source: backfill.BackfillSpec, unit: str):
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
        report, counted = job.ctx.report, f"backfilled_{self.source.table}"
        todo = backfill.todo(job.conn, self.source)
        report.expect(counted, total=report.counts[counted] + todo)  # the progress lines' rate and time left
        with job.bar(todo, f"backfill {self.source.name}", self.unit) as bar:
            def on_batch(rows: int) -> None:
                bar.update(rows)
                report.count(counted, rows)
            record["rows"] = backfill.run(job.ddl, self.source, job.options.batch_size, on_batch,
                                          before_batch=job.wait_for_replicas)


class KeepWorkflowMapping(Step):
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
        mapping = triggers.process_tasks_sync(True)
        job.ddl.execute(f"replace function {mapping.name}", mapping.create_function_sql())
        with job.bar(backfill.todo(job.conn, backfill.WORKFLOW_MAPPING), "map kept workflows", "workflow") as bar:
            record["rows"] = backfill.run(job.ddl, backfill.WORKFLOW_MAPPING, job.options.batch_size, bar.update,
                                          before_batch=job.wait_for_replicas)

    def undo_pending(self, job: Job) -> bool:
        return catalog.column(job.conn, "ponos_workflow", "process_id") is not None

    def undo(self, job: Job, record: dict[str, Any]) -> None:
        # The trigger function first (it writes the column), back to its plain variant.
        if catalog.function_exists(job.conn, "ponos_fold_sync_process_tasks"):
            plain = triggers.process_tasks_sync(False)
            job.ddl.execute(f"replace function {plain.name}", plain.create_function_sql())
        job.ddl.execute("drop ponos_workflow.process_id", "ALTER TABLE ponos_workflow DROP COLUMN IF EXISTS process_id")

    def undo_sql(self, job: Job) -> list[str]:
        return ["ALTER TABLE ponos_workflow DROP COLUMN IF EXISTS process_id"]


class Verify(Step):
    name = "verify"

    def pending(self, job: Job) -> bool:
        return True

    def sql(self, job: Job) -> list[str]:
        return [backfill.TASKS.stragglers_sql, backfill.PROCESSES.stragglers_sql]

    def run(self, job: Job, record: dict[str, Any]) -> None:
        counts = consistency.check(job.conn, keep_mapping=job.options.keep_workflow_table)
        record.update(counts)
        for name, value in counts.items():
            job.ctx.report.count(f"verified_{name}", value)
