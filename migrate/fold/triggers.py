"""Keep the new columns in step with what the (legacy) application writes during the fold.

The backfill copies rows that exist when it passes; these triggers cover the rest: a task
inserted or re-pointed at a workflow, a process that starts (gets its workflow), a workflow that
finishes. They are installed before the backfill and dropped in the same transaction as the
old columns, so no write is ever missed. Django saves every column on ``save()``, so
``UPDATE OF workflow_id`` fires on most updates: the functions are cheap, idempotent lookups.
"""

from __future__ import annotations

from dataclasses import dataclass

from .catalog import column


@dataclass(frozen=True)
class SyncTrigger:
    name: str  # the trigger's and its function's name
    table: str
    timing: str  # what follows CREATE TRIGGER <name>
    body: str  # plpgsql

    def create_function_sql(self) -> str:
        return (f"CREATE OR REPLACE FUNCTION {self.name}() RETURNS trigger LANGUAGE plpgsql AS $fold$\n"
                f"BEGIN\n{self.body}\nEND\n$fold$")

    def create_trigger_sql(self) -> str:
        return f"CREATE TRIGGER {self.name} {self.timing} ON {self.table} FOR EACH ROW EXECUTE FUNCTION {self.name}()"

    def drop_sql(self) -> list[str]:
        return [f"DROP TRIGGER IF EXISTS {self.name} ON {self.table}", f"DROP FUNCTION IF EXISTS {self.name}()"]


TASK_SYNC = SyncTrigger(
    "ponos_fold_sync_task", "ponos_task", "BEFORE INSERT OR UPDATE OF workflow_id",
    """    -- A task written during the fold belongs to the process of its workflow.
    IF TG_OP = 'UPDATE' OR NEW.process_id IS NULL THEN
        SELECT p.id INTO NEW.process_id FROM process_process p WHERE p.workflow_id = NEW.workflow_id;
    END IF;
    RETURN NEW;""")

PROCESS_SYNC = SyncTrigger(
    "ponos_fold_sync_process", "process_process", "BEFORE INSERT OR UPDATE OF workflow_id",
    """    -- A process copies farm, start and end from its workflow; without one, all three are NULL.
    IF NEW.workflow_id IS NOT NULL THEN
        SELECT w.farm_id, w.created, w.finished INTO NEW.farm_id, NEW.started, NEW.finished
          FROM ponos_workflow w WHERE w.id = NEW.workflow_id;
    ELSIF TG_OP = 'UPDATE' THEN
        NEW.farm_id := NULL; NEW.started := NULL; NEW.finished := NULL;
    END IF;
    RETURN NEW;""")

# The application may create a workflow's tasks before the process points at the workflow.
_PROCESS_TASKS_BODY = """    IF NEW.workflow_id IS NOT NULL AND (TG_OP = 'INSERT' OR NEW.workflow_id IS DISTINCT FROM OLD.workflow_id) THEN
        UPDATE ponos_task SET process_id = NEW.id
         WHERE workflow_id = NEW.workflow_id AND process_id IS DISTINCT FROM NEW.id;
    END IF;{keep}
    RETURN NULL;"""

# With --keep-workflow-table the kept table remembers which process each workflow became.
_KEEP_MAPPING = """
    IF TG_OP = 'UPDATE' AND OLD.workflow_id IS DISTINCT FROM NEW.workflow_id THEN
        UPDATE ponos_workflow SET process_id = NULL WHERE id = OLD.workflow_id AND process_id = NEW.id;
    END IF;
    IF NEW.workflow_id IS NOT NULL THEN
        UPDATE ponos_workflow SET process_id = NEW.id WHERE id = NEW.workflow_id AND process_id IS DISTINCT FROM NEW.id;
    END IF;"""


def process_tasks_sync(keep_mapping: bool) -> SyncTrigger:
    return SyncTrigger(
        "ponos_fold_sync_process_tasks", "process_process", "AFTER INSERT OR UPDATE OF workflow_id",
        _PROCESS_TASKS_BODY.format(keep=_KEEP_MAPPING if keep_mapping else ""))


WORKFLOW_SYNC = SyncTrigger(
    "ponos_fold_sync_workflow", "ponos_workflow", "AFTER UPDATE OF farm_id, created, finished",
    """    -- A workflow that finishes (or moves farm) during the fold updates its process.
    UPDATE process_process SET farm_id = NEW.farm_id, started = NEW.created, finished = NEW.finished
     WHERE workflow_id = NEW.id
       AND (farm_id, started, finished) IS DISTINCT FROM (NEW.farm_id, NEW.created, NEW.finished);
    RETURN NULL;""")


def all_triggers(conn) -> list[SyncTrigger]:
    """The triggers of this fold; the mapping variant once the kept table has its column."""
    keep_mapping = column(conn, "ponos_workflow", "process_id") is not None
    return [TASK_SYNC, PROCESS_SYNC, process_tasks_sync(keep_mapping), WORKFLOW_SYNC]
