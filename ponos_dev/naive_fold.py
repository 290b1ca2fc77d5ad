"""The fold as one framework migration does it (a benchmark peer and a test shortcut): the same
end state as ``db-fold-workflow``, the same names (ponoskit.schema), in one transaction."""

from __future__ import annotations

import psycopg

from ponoskit.schema import (PROCESS_FARM_FK, PROCESS_FARM_INDEX, TASK_PROCESS_FK, TASK_PROCESS_INDEX,
                             TASK_UNIQUE_PROCESS_RUN_SLUG)

NAIVE_FOLD_SQL = f"""
ALTER TABLE process_process
    ADD COLUMN farm_id uuid NULL
        CONSTRAINT {PROCESS_FARM_FK} REFERENCES ponos_farm (id) DEFERRABLE INITIALLY DEFERRED,
    ADD COLUMN started timestamptz NULL,
    ADD COLUMN finished timestamptz NULL;
UPDATE process_process p
   SET farm_id = w.farm_id, started = w.created, finished = w.finished
  FROM ponos_workflow w WHERE p.workflow_id = w.id;
CREATE INDEX {PROCESS_FARM_INDEX} ON process_process (farm_id);
ALTER TABLE ponos_task ADD COLUMN process_id uuid NULL;
UPDATE ponos_task t SET process_id = p.id FROM process_process p WHERE p.workflow_id = t.workflow_id;
ALTER TABLE ponos_task ALTER COLUMN process_id SET NOT NULL;
ALTER TABLE ponos_task ADD CONSTRAINT {TASK_PROCESS_FK}
    FOREIGN KEY (process_id) REFERENCES process_process (id) DEFERRABLE INITIALLY DEFERRED;
CREATE INDEX {TASK_PROCESS_INDEX} ON ponos_task (process_id);
ALTER TABLE ponos_task ADD CONSTRAINT {TASK_UNIQUE_PROCESS_RUN_SLUG} UNIQUE (process_id, run, slug);
ALTER TABLE ponos_task DROP COLUMN workflow_id;
ALTER TABLE process_process DROP COLUMN workflow_id;
DROP TABLE ponos_workflow;
"""


def naive_fold(conn: psycopg.Connection) -> None:
    """The fold as one framework migration does it: one transaction, locks held throughout.

    Assumes every task's workflow has a process (tasks without one make SET NOT NULL fail).
    """
    with conn.transaction():
        # Legacy FKs are DEFERRABLE INITIALLY DEFERRED: fire pending checks before altering.
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        conn.execute(NAIVE_FOLD_SQL)
