"""Keep both shapes of the data in step while two releases write them (the expanded schema).

From the expand until the contract, the legacy release (workflows) and the new one
(processes own their tasks) may run side by side, pods of both during a rolling deploy.
Each writes only the columns its models know; these triggers fill in the other shape:

legacy writes                                  new-release writes
  a task with workflow_id -> its process_id      a task with process_id, no workflow_id -> the
  a process gets a workflow -> farm, started,      workflow of its process (created if the process
    finished; its tasks get process_id              has none yet), so the legacy NOT NULL holds
  a workflow finishes (or moves farm) -> its     a process starts (farm_id, started set, no
    process's finished (farm)                      workflow) -> a workflow for it, with the same
                                                   farm, start and end; later changes follow

A workflow created for the new release takes the process's own id: unique (process ids are
random UUIDs), and found again without a lookup table. A process started without a farm
gets the first farm's id on its workflow (the legacy model requires one).

Django saves every column of its model on ``save()``, so column-specific triggers see each
release's writes and only them: ``UPDATE OF workflow_id`` fires on legacy saves, ``UPDATE OF
farm_id, started, finished`` on new-release saves. Changes the triggers make themselves run
one level deeper (``pg_trigger_depth() > 1``) and are not synced back, so nothing loops.
The backfill marks its own transactions (``SET LOCAL ponos.fold_backfill``): what it writes is
copied from the legacy columns, and the triggers let it through untouched. Every function is
idempotent and cheap (primary-key lookups).
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


# The workflow of a process, made for it if it has none (a new-release process).
WORKFLOW_OF_FUNCTION = "ponos_fold_workflow_of"
WORKFLOW_OF_SQL = f"""CREATE OR REPLACE FUNCTION {WORKFLOW_OF_FUNCTION}(process uuid) RETURNS uuid
LANGUAGE plpgsql AS $fold$
DECLARE
    found_workflow uuid;
    p record;
BEGIN
    SELECT workflow_id INTO found_workflow FROM process_process WHERE id = process;
    IF found_workflow IS NOT NULL THEN
        RETURN found_workflow;  -- the usual case: no lock taken
    END IF;
    SELECT * INTO p FROM process_process WHERE id = process FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;  -- the foreign key on process_id says what is wrong
    END IF;
    IF p.workflow_id IS NOT NULL THEN
        RETURN p.workflow_id;  -- made meanwhile by another transaction
    END IF;
    INSERT INTO ponos_workflow (id, farm_id, created, updated, finished)
    VALUES (p.id, coalesce(p.farm_id, (SELECT id FROM ponos_farm ORDER BY id LIMIT 1)),
            coalesce(p.started, now()), now(), p.finished)
    ON CONFLICT (id) DO NOTHING;
    UPDATE process_process SET workflow_id = p.id WHERE id = p.id AND workflow_id IS NULL;
    RETURN p.id;
END
$fold$"""
DROP_WORKFLOW_OF_SQL = f"DROP FUNCTION IF EXISTS {WORKFLOW_OF_FUNCTION}(uuid)"

TASK_SYNC = SyncTrigger(
    "ponos_fold_sync_task", "ponos_task", "BEFORE INSERT OR UPDATE OF workflow_id, process_id",
    f"""    IF current_setting('ponos.fold_backfill', true) = 'on' THEN
        RETURN NEW;  -- the backfill copies from the legacy columns: nothing to sync
    END IF;
    IF NEW.workflow_id IS NOT NULL
       AND (TG_OP = 'INSERT' OR NEW.workflow_id IS DISTINCT FROM OLD.workflow_id) THEN
        -- A legacy write: the task belongs to the process of its workflow (none yet when the
        -- legacy release inserts a workflow's tasks before pointing the process at it).
        SELECT p.id INTO NEW.process_id FROM process_process p WHERE p.workflow_id = NEW.workflow_id;
    ELSIF NEW.process_id IS NOT NULL
       AND (NEW.workflow_id IS NULL OR TG_OP = 'UPDATE' AND NEW.process_id IS DISTINCT FROM OLD.process_id) THEN
        -- A new-release write: legacy readers find it through the workflow of its process.
        NEW.workflow_id := {WORKFLOW_OF_FUNCTION}(NEW.process_id);
    END IF;
    RETURN NEW;""")

PROCESS_SYNC = SyncTrigger(
    "ponos_fold_sync_process", "process_process", "BEFORE INSERT OR UPDATE OF workflow_id",
    """    IF pg_trigger_depth() > 1 THEN
        RETURN NEW;  -- a workflow made for a new-release process: the process already says it all
    END IF;
    -- A legacy write: the process copies farm, start and end from its workflow.
    IF NEW.workflow_id IS NOT NULL THEN
        SELECT w.farm_id, w.created, w.finished INTO NEW.farm_id, NEW.started, NEW.finished
          FROM ponos_workflow w WHERE w.id = NEW.workflow_id;
    ELSIF TG_OP = 'UPDATE' AND OLD.workflow_id IS NOT NULL THEN
        NEW.farm_id := NULL; NEW.started := NULL; NEW.finished := NULL;  -- its workflow was taken away
    END IF;
    RETURN NEW;""")

# The legacy release may create a workflow's tasks before the process points at the workflow.
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


PROCESS_TO_WORKFLOW = SyncTrigger(
    "ponos_fold_sync_process_workflow", "process_process", "AFTER INSERT OR UPDATE OF farm_id, started, finished",
    f"""    IF pg_trigger_depth() > 1 OR current_setting('ponos.fold_backfill', true) = 'on' THEN
        RETURN NULL;  -- our own triggers' changes, or the backfill's: already in step
    END IF;
    IF NEW.workflow_id IS NULL THEN
        IF NEW.started IS NOT NULL THEN
            PERFORM {WORKFLOW_OF_FUNCTION}(NEW.id);  -- a new-release process started: legacy pods see it
        END IF;
    ELSE
        UPDATE ponos_workflow w
           SET farm_id = coalesce(NEW.farm_id, w.farm_id), created = coalesce(NEW.started, w.created),
               finished = NEW.finished, updated = now()
         WHERE w.id = NEW.workflow_id
           AND (w.farm_id, w.created, w.finished)
               IS DISTINCT FROM (coalesce(NEW.farm_id, w.farm_id), coalesce(NEW.started, w.created), NEW.finished);
    END IF;
    RETURN NULL;""")

WORKFLOW_SYNC = SyncTrigger(
    "ponos_fold_sync_workflow", "ponos_workflow", "AFTER UPDATE OF farm_id, created, finished",
    """    IF pg_trigger_depth() > 1 THEN
        RETURN NULL;  -- the process told us: it knows
    END IF;
    -- A workflow that finishes (or moves farm) in the legacy release updates its process.
    UPDATE process_process SET farm_id = NEW.farm_id, started = NEW.created, finished = NEW.finished
     WHERE workflow_id = NEW.id
       AND (farm_id, started, finished) IS DISTINCT FROM (NEW.farm_id, NEW.created, NEW.finished);
    RETURN NULL;""")

# Names of every trigger any version of the fold installed (a rollback and a contract drop all).
ALL_NAMES = {TASK_SYNC.name: TASK_SYNC.table, PROCESS_SYNC.name: PROCESS_SYNC.table,
             "ponos_fold_sync_process_tasks": "process_process", PROCESS_TO_WORKFLOW.name: PROCESS_TO_WORKFLOW.table,
             WORKFLOW_SYNC.name: WORKFLOW_SYNC.table}


def all_triggers(conn) -> list[SyncTrigger]:
    """The triggers of this fold; the mapping variant once the kept table has its column."""
    keep_mapping = column(conn, "ponos_workflow", "process_id") is not None
    return [TASK_SYNC, PROCESS_SYNC, process_tasks_sync(keep_mapping), PROCESS_TO_WORKFLOW, WORKFLOW_SYNC]


def drop_all_sql() -> list[str]:
    """Every trigger and function the fold installs, gone (each statement idempotent)."""
    return [s for name, table in ALL_NAMES.items()
            for s in (f"DROP TRIGGER IF EXISTS {name} ON {table}", f"DROP FUNCTION IF EXISTS {name}()")] + \
        [DROP_WORKFLOW_OF_SQL]
