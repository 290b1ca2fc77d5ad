"""Copy data into the new columns in batches by primary-key range, one commit per batch.

A batch locks only the rows it changes, for the few milliseconds of one UPDATE, so the
application never waits long on a row. Batches walk the key in order: after a SIGKILL the
first row still to do is where the next run starts, and rows already right are skipped.
A final sweep compares the whole table with its source and fixes what the walk missed (a row
the application moved behind it); rows that cannot be fixed because their workflow has lost
its process are refused, listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import psycopg

from ponoskit.errors import Refused
from ponoskit.report import SHOWN_IDS

from .ddl import Ddl

SWEEP_LIMIT = 10_000


@dataclass(frozen=True)
class BackfillSpec:
    name: str
    table: str  # keyed by its uuid primary key "id"
    alias: str  # the table's alias in update_sql
    todo_sql: str  # how many rows are still to do
    first_todo_sql: str  # the lowest key still to do, or no row
    update_sql: str  # one batch, keys in [%(lo)s, %(hi)s) ({upper} is where the upper bound goes)
    stragglers_sql: str  # (id, fixable) of rows still wrong anywhere, LIMIT %(limit)s
    fix_sql: str  # set rows %(ids)s right

    def batch_sql(self, bounded: bool = True) -> str:
        return self.update_sql.format(upper=f" AND {self.alias}.id < %(hi)s" if bounded else "")

    def plan_sql(self) -> list[str]:
        return [self.batch_sql(), self.fix_sql]


TASKS = BackfillSpec(
    name="ponos_task.process_id",
    table="ponos_task",
    alias="t",
    todo_sql="SELECT count(*) FROM ponos_task WHERE process_id IS NULL",
    first_todo_sql="SELECT id FROM ponos_task WHERE process_id IS NULL ORDER BY id LIMIT 1",
    update_sql="""UPDATE ponos_task t SET process_id = p.id
  FROM process_process p
 WHERE p.workflow_id = t.workflow_id AND t.process_id IS DISTINCT FROM p.id
   AND t.id >= %(lo)s{upper}""",
    stragglers_sql="""SELECT t.id, p.id IS NOT NULL
  FROM ponos_task t LEFT JOIN process_process p ON p.workflow_id = t.workflow_id
 WHERE t.process_id IS DISTINCT FROM p.id LIMIT %(limit)s""",
    fix_sql="""UPDATE ponos_task t SET process_id = p.id
  FROM process_process p
 WHERE p.workflow_id = t.workflow_id AND t.id = ANY(%(ids)s::uuid[])""",
)

PROCESSES = BackfillSpec(
    name="process_process.farm_id/started/finished",
    table="process_process",
    alias="p",
    todo_sql="SELECT count(*) FROM process_process WHERE workflow_id IS NOT NULL AND started IS NULL",
    first_todo_sql="SELECT id FROM process_process WHERE workflow_id IS NOT NULL AND started IS NULL "
                   "ORDER BY id LIMIT 1",
    update_sql="""UPDATE process_process p SET farm_id = w.farm_id, started = w.created, finished = w.finished
  FROM ponos_workflow w
 WHERE w.id = p.workflow_id
   AND (p.farm_id, p.started, p.finished) IS DISTINCT FROM (w.farm_id, w.created, w.finished)
   AND p.id >= %(lo)s{upper}""",
    stragglers_sql="""SELECT p.id, true
  FROM process_process p LEFT JOIN ponos_workflow w ON w.id = p.workflow_id
 WHERE (p.farm_id, p.started, p.finished) IS DISTINCT FROM (w.farm_id, w.created, w.finished)
 LIMIT %(limit)s""",
    # A process without a workflow gets NULLs: the sub-select yields no row.
    fix_sql="""UPDATE process_process p SET (farm_id, started, finished) =
       (SELECT w.farm_id, w.created, w.finished FROM ponos_workflow w WHERE w.id = p.workflow_id)
 WHERE p.id = ANY(%(ids)s::uuid[])""",
)

# --keep-workflow-table: the kept table remembers the process each workflow became.
WORKFLOW_MAPPING = BackfillSpec(
    name="ponos_workflow.process_id",
    table="ponos_workflow",
    alias="w",
    todo_sql="SELECT count(*) FROM ponos_workflow WHERE process_id IS NULL",
    first_todo_sql="SELECT id FROM ponos_workflow WHERE process_id IS NULL ORDER BY id LIMIT 1",
    update_sql="""UPDATE ponos_workflow w SET process_id = p.id
  FROM process_process p
 WHERE p.workflow_id = w.id AND w.process_id IS DISTINCT FROM p.id
   AND w.id >= %(lo)s{upper}""",
    stragglers_sql="""SELECT w.id, true
  FROM ponos_workflow w LEFT JOIN process_process p ON p.workflow_id = w.id
 WHERE w.process_id IS DISTINCT FROM p.id LIMIT %(limit)s""",
    fix_sql="""UPDATE ponos_workflow w SET process_id = (SELECT p.id FROM process_process p WHERE p.workflow_id = w.id)
 WHERE w.id = ANY(%(ids)s::uuid[])""",
)


def _backfilling(conn: psycopg.Connection) -> psycopg.Connection:
    """Tell the sync triggers this transaction is the backfill: what it writes is already in
    step with the legacy columns (it is copied from them), nothing to sync back."""
    conn.execute("SET LOCAL ponos.fold_backfill = 'on'")
    return conn


class ProcessLost(Refused):
    """Tasks whose workflow lost its process during the fold: orphans, for the next preflight."""


def todo(conn: psycopg.Connection, backfill: BackfillSpec) -> int:
    return conn.execute(backfill.todo_sql).fetchone()[0]


def run(ddl: Ddl, backfill: BackfillSpec, batch_size: int,
        on_batch: Callable[[int], None] = lambda n: None, before_batch: Callable[[], None] = lambda: None) -> int:
    """Walk the key from the first row still to do; then sweep. Returns the rows updated."""
    conn = ddl.conn
    bounded, open_ended = backfill.batch_sql(True), backfill.batch_sql(False)
    next_key_sql = f"SELECT id FROM {backfill.table} WHERE id >= %(lo)s ORDER BY id OFFSET %(n)s LIMIT 1"
    updated = 0
    first = conn.execute(backfill.first_todo_sql).fetchone()
    lo = first[0] if first else None
    while lo is not None:
        before_batch()  # the throttle: replicas catching up, an operator's pause
        row = conn.execute(next_key_sql, {"lo": lo, "n": batch_size}).fetchone()
        hi: Optional[object] = row[0] if row else None
        sql, params = (bounded, {"lo": lo, "hi": hi}) if hi is not None else (open_ended, {"lo": lo})
        count = ddl.transaction(f"backfill {backfill.name}", lambda c: _backfilling(c).execute(sql, params).rowcount)
        updated += count
        on_batch(count)
        lo = hi
    return updated + sweep(ddl, backfill, on_batch)


def sweep(ddl: Ddl, backfill: BackfillSpec, on_batch: Callable[[int], None] = lambda n: None) -> int:
    """Fix every row the key walk left wrong; refuse rows that have nothing to be set from."""
    conn = ddl.conn
    fixed = 0
    while True:
        rows = conn.execute(backfill.stragglers_sql, {"limit": SWEEP_LIMIT}).fetchall()
        lost = [str(key) for key, fixable in rows if not fixable]
        if lost:
            raise ProcessLost(
                f"{len(lost)} task(s) belong to workflows that lost their process during the fold: "
                f"{', '.join(lost[:SHOWN_IDS])}{' ...' if len(lost) > SHOWN_IDS else ''}; "
                "run again to see them in the preflight")
        if not rows:
            return fixed
        ids = [key for key, _ in rows]
        count = ddl.transaction(f"backfill {backfill.name} (sweep)",
                                lambda c: _backfilling(c).execute(backfill.fix_sql, {"ids": ids}).rowcount)
        if count == 0:  # rows that stay wrong after their fix: a bug, not something to loop on
            raise Refused(f"backfill {backfill.name}: {len(ids)} row(s) cannot be set right, "
                          f"first {ids[0]}; nothing dropped")
        fixed += count
        on_batch(count)
