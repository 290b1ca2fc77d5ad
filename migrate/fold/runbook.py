"""The fold's runbook: one ordered list of steps, and three short lists over it.

  EXPAND    every step that keeps the legacy shape working: new columns, two-way sync
            triggers (both releases can run at once), backfills, indexes, constraints, verify.
  CONTRACT  verify again, then the drop (one short transaction: triggers, the legacy columns,
            the table, the Django migration's row), then NOT NULL. No way back after it.
  ROLLBACK  the expand's steps undone, in reverse order. Refused once contracted.

Each step asks the catalog whether it is done (or, for the rollback, whether there is
anything to undo) before it acts: a run killed anywhere resumes where it stopped, and a run
of a finished list changes nothing. No step mixes data changes and ALTER TABLE in one
transaction.
"""

from __future__ import annotations

from ponoskit import schema

from . import backfill
from .data_steps import AddColumns, Backfill, DeleteOrphans, InstallSyncTriggers, KeepWorkflowMapping, Verify
from .schema_steps import AddConstraint, CreateIndex, DropWorkflow, TaskProcessNotNull, UniqueProcessRunSlug
from .step import Plan, Step

__all__ = ["ALL", "CONTRACT", "EXPAND", "Plan", "ROLLBACK", "Step", "expand", "contract", "rollback"]


def expand() -> list[Step]:
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
    ]


def contract(*, after_drop_only: bool = False) -> list[Step]:
    """The drop and what finishes it; a folded schema (a naive fold) gets only the finish."""
    finish = [TaskProcessNotNull()]
    return finish if after_drop_only else [Verify(), DropWorkflow(), *finish]


def rollback() -> list[Step]:
    """The expand, taken back: what has something to undo, last added first."""
    return list(reversed(expand()))


EXPAND, CONTRACT, ROLLBACK, ALL = "expand", "contract", "rollback", "all"
