"""The phases of the fold, in order. Each asks the catalog whether it is done before it acts.

No phase mixes data changes and ALTER TABLE in one transaction. The one that drops the old
columns does it in a single short transaction, so the schema goes from "being folded" to
"folded" at once and the sync triggers go with the columns they read.
"""

from __future__ import annotations

from ponoskit import schema

from . import backfill
from .data_phases import AddColumns, Backfill, DeleteOrphans, InstallSyncTriggers, KeepWorkflowMapping, Verify
from .phase import Phase, Step
from .schema_phases import AddConstraint, CreateIndex, DropWorkflow, TaskProcessNotNull, UniqueProcessRunSlug

__all__ = ["Phase", "Step", "after_drop", "all_phases", "before_drop"]


def before_drop() -> list[Phase]:
    """Phases that need the legacy columns: skipped once the database is folded."""
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
        UniqueProcessRunSlug(),
        KeepWorkflowMapping(),
        Verify(),
        DropWorkflow(),
    ]


def after_drop() -> list[Phase]:
    """Phases that finish a folded schema; all done (or never needed) after a naive fold."""
    return [TaskProcessNotNull()]


def all_phases() -> list[Phase]:
    return before_drop() + after_drop()
