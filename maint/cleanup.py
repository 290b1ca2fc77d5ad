"""``ponos-maint cleanup``: delete the tasks of expired processes, their rows and their files.

The runbook, as :func:`run_cleanup` runs it:
  1. take the advisory lock (a second run stops at once with AlreadyRunning);
  2. check the schema is folded and both buckets answer; nothing has changed before this;
  3. make sure the outbox table exists;
  4. drain the outbox: S3 work owed by earlier runs goes first; if S3 still fails, stop;
  5. batch after batch, one short transaction each: pick due tasks (FOR UPDATE SKIP LOCKED),
     release their GPUs, delete their parent links (both directions), their artifact rows and
     the tasks, and record their S3 targets in the outbox; after the commit, a hook hands the
     targets to the purger, which deletes the objects and then the outbox rows;
  6. wait for S3, check nothing due was left behind, report.

A process is expired when it has tasks and every one has ``expiry`` before ``before``. Its tasks
are *due* unless one of them is unfinished: such processes are reported and left alone. The
process row itself always stays (worker runs and activities point at it).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Optional

import psycopg

from ponoskit import tasks
from ponoskit.cli import progress
from ponoskit.s3.errors import S3PermissionError, one_line

from . import outbox, preflight
from .purge import Purger

LOCK_KEY = preflight.lock_key("ponos-maint cleanup")
UNFINISHED_STATES = list(tasks.UNFINISHED_STATES)
MAX_LISTED_IDS = 1000
LOCK_RETRIES = 3
_clock = time.monotonic  # the runtime budget's clock (tests replace it)

# Tasks are due when their process has no task left that is unexpired or unfinished.
DUE = """t.expiry < %(before)s AND NOT EXISTS (
    SELECT 1 FROM ponos_task o WHERE o.process_id = t.process_id
       AND (o.expiry >= %(before)s OR o.state = ANY(%(unfinished)s)))"""

# Processes that would be expired but still have an unfinished task; the first query finds
# candidates through the expiry index, the second drops those with an unexpired task.
UNFINISHED_SQL = """
SELECT s.process_id FROM (
    SELECT DISTINCT process_id FROM ponos_task
     WHERE expiry < %(before)s AND state = ANY(%(unfinished)s)) s
 WHERE NOT EXISTS (SELECT 1 FROM ponos_task o
                    WHERE o.process_id = s.process_id AND o.expiry >= %(before)s)
 ORDER BY s.process_id"""

PLAN_SQL = f"""
SELECT count(DISTINCT t.process_id), count(*),
       coalesce(sum((SELECT count(*) FROM ponos_artifact a WHERE a.task_id = t.id)), 0)::bigint,
       coalesce(sum((SELECT count(*) FROM ponos_gpu g WHERE g.task_id = t.id)), 0)::bigint
  FROM ponos_task t WHERE {DUE}"""

PLAN_PARENTS_SQL = f"""
SELECT count(*) FROM ponos_task_parents l
 WHERE l.from_task_id IN (SELECT t.id FROM ponos_task t WHERE {DUE})
    OR l.to_task_id IN (SELECT t.id FROM ponos_task t WHERE {DUE})"""

# Ordered by id so a batch covers a contiguous key range in S3 (see purge.py).
PICK_SQL = f"SELECT t.id, t.process_id FROM ponos_task t WHERE {{after}} {DUE} ORDER BY t.id LIMIT %(limit)s"
LOCKING = " FOR UPDATE OF t SKIP LOCKED"

# How many tasks lie strictly between two ids, counting no further than a limit.
TASKS_BETWEEN_SQL = "SELECT count(*) FROM (SELECT 1 FROM ponos_task WHERE id > %s AND id < %s LIMIT %s) s"

EMPTIED_PROCESSES_SQL = """
SELECT count(*) FROM unnest(%s::uuid[]) p(id)
 WHERE NOT EXISTS (SELECT 1 FROM ponos_task t WHERE t.process_id = p.id)"""


@dataclass
class CleanupOptions:
    artifacts_bucket: str
    logs_bucket: str
    before: datetime
    batch_size: int = 1000
    max_runtime: Optional[float] = None  # seconds; checked between batches
    stop: Optional[threading.Event] = None  # set by a signal handler: stop between batches
    retry_set_aside: bool = False  # give outbox rows set aside after repeated refusals another go


@dataclass
class Outcome:
    complete: bool
    reasons: list[str]
    transient: bool = False  # what is left is left because S3 kept failing: run again later (75)


def run_cleanup(ctx, opts: CleanupOptions) -> Outcome:
    started = _clock()
    ctx.report.info.update(before=opts.before.isoformat(), batch_size=opts.batch_size,
                           artifacts_bucket=opts.artifacts_bucket, logs_bucket=opts.logs_bucket)
    with ctx.advisory_lock(LOCK_KEY, "ponos-maint cleanup"):
        try:
            preflight.require_folded(ctx.db)
            preflight.check_buckets(ctx, opts.artifacts_bucket, opts.logs_bucket)
            if not ctx.dry_run:
                outbox.ensure(ctx.db)
            params = {"before": opts.before, "unfinished": UNFINISHED_STATES}
            report_unfinished_processes(ctx, params)
            if ctx.dry_run:
                return plan(ctx, opts, params)
            return clean(ctx, opts, params, started)
        except psycopg.Error as exc:
            raise preflight.database_error(exc) from None


def report_unfinished_processes(ctx, params: dict) -> None:
    with ctx.report.phase("unfinished"), ctx.db.cursor() as cur:
        for (process_id,) in cur.execute(UNFINISHED_SQL, params):
            ctx.report.add("processes_skipped_unfinished", str(process_id), limit=MAX_LISTED_IDS)
    skipped = ctx.report.counts["processes_skipped_unfinished"]
    if skipped:
        shown = ", ".join(ctx.report.items["processes_skipped_unfinished"][:5])
        ctx.log.warning("%d expired process(es) still have an unfinished task and are left alone: %s%s",
                        skipped, shown, ", ..." if skipped > 5 else "")


def clean(ctx, opts: CleanupOptions, params: dict, started: float) -> Outcome:
    reasons: list[str] = []
    purger = Purger(ctx, count_only=False)
    try:
        with ctx.report.phase("outbox"):
            drain_outbox(ctx, purger, opts, started)
        if purger.broken is None:
            with ctx.report.phase("tasks"):
                stopped = delete_due_tasks(ctx, purger, opts, params, started)
            if stopped:
                reasons.append(stopped)
    finally:
        with ctx.report.phase("s3"):
            purger.close()
    transient = False
    if purger.broken is not None:
        if isinstance(purger.broken, S3PermissionError):
            raise purger.broken  # configuration: exit 2, the outbox keeps the work
        transient = True
        reasons.append(f"S3 failed ({one_line(purger.broken)}): the outbox keeps what is left for the next run")
    elif purger.failures:
        reasons.append(f"{purger.failures} S3 failure(s): the outbox keeps them for the next run")
    aside, rows = outbox.set_aside_rows(ctx.db)
    if aside:
        ctx.report.count("outbox_set_aside", aside)
        for row in rows:
            ctx.report.add("outbox_set_aside_rows", row, also_count=False)
        reasons.append(f"{aside} outbox target(s) set aside after {outbox.MAX_ATTEMPTS} refused attempts "
                       "(see the report): fix the cause, then run with --retry-set-aside")
    if not reasons:
        left = ctx.db.execute(f"SELECT count(*) FROM ponos_task t WHERE {DUE}", params).fetchone()[0]
        if left:
            ctx.report.count("tasks_left_locked", left)
            reasons.append(f"{left} due task(s) were locked by another transaction and skipped")
    log_summary(ctx, reasons)
    return Outcome(not reasons, reasons, transient=transient)


def drain_outbox(ctx, purger: Purger, opts: CleanupOptions, started: float) -> None:
    if opts.retry_set_aside:
        released = outbox.release_set_aside(ctx.db)
        ctx.report.count("outbox_rows_released", released)
    rows, top = outbox.pending(ctx.db)
    ctx.report.count("outbox_rows_pending_at_start", rows)
    if rows:
        ctx.log.info("outbox: %d target(s) owed by earlier runs go first", rows)
    for chunk in outbox.iter_pending(ctx.db, top):
        if purger.broken is not None or _should_stop(opts, started):
            break
        purger.submit(chunk)
    purger.wait()


def delete_due_tasks(ctx, purger: Purger, opts: CleanupOptions, params: dict, started: float) -> str:
    """Batch after batch until nothing is due; returns why it stopped early, or ''."""
    after = None
    with progress(desc="tasks", unit="task") as bar:
        if not bar.disable:
            bar.total = ctx.db.execute(f"SELECT count(*) FROM ponos_task t WHERE {DUE}", params).fetchone()[0]
        while True:
            if purger.broken is not None:
                return "S3 failed"
            reason = _should_stop(opts, started)
            if reason:
                return reason
            batch = delete_batch(ctx, purger, opts, params, after)
            if batch is None:
                return ""
            after, size = batch
            bar.update(size)


def delete_batch(ctx, purger: Purger, opts: CleanupOptions, params: dict, after) -> Optional[tuple]:
    """One short transaction; returns (last task id, number of tasks) or None when none is due."""
    sql = PICK_SQL.format(after="t.id > %(after)s AND" if after else "") + LOCKING
    for attempt in range(1, LOCK_RETRIES + 1):
        try:
            with ctx.transaction() as tx:
                tx.execute("SET LOCAL lock_timeout = '5s'")
                picked = tx.execute(sql, {**params, "after": after, "limit": opts.batch_size}).fetchall()
                if not picked:
                    return None
                ids = [task_id for task_id, _ in picked]
                counts = tasks.delete_tasks(tx.conn, ids)
                processes = list({process_id for _, process_id in picked})
                counts["processes"] = tx.execute(EMPTIED_PROCESSES_SQL, (processes,)).fetchone()[0]
                targets = outbox.add(tx.conn, outbox.targets_for_tasks(
                    ids, artifacts_bucket=opts.artifacts_bucket, logs_bucket=opts.logs_bucket))
                # Few tasks left between the first and last id: their files are listed by prefix
                # groups instead of one listing per task (purge.plan_listings).
                others = tx.execute(TASKS_BETWEEN_SQL, (ids[0], ids[-1], len(ids) + 1)).fetchone()[0]
                dense = others <= len(ids)
                # After the commit only: no object goes while its row exists.
                tx.on_post_commit(lambda: _count(ctx, counts))
                tx.on_post_commit(lambda: purger.submit(targets, dense=dense))
            return ids[-1], len(ids)
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
            if attempt == LOCK_RETRIES:
                raise
            ctx.log.warning("batch rolled back (%s), retrying", type(exc).__name__)
            time.sleep(attempt)


def plan(ctx, opts: CleanupOptions, params: dict) -> Outcome:
    """The dry run: count what a real run would delete, in the database and in S3."""
    with ctx.report.phase("plan"):
        processes, tasks, artifacts, gpus = ctx.db.execute(PLAN_SQL, params).fetchone()
        parents = ctx.db.execute(PLAN_PARENTS_SQL, params).fetchone()[0]
    _count(ctx, {"processes": processes, "tasks": tasks, "artifacts": artifacts,
                 "gpus_released": gpus, "task_parents": parents})
    purger = Purger(ctx, count_only=True)
    try:
        with ctx.report.phase("s3"):
            rows, top = outbox.pending(ctx.db)
            ctx.report.count("outbox_rows_pending_at_start", rows)
            for chunk in outbox.iter_pending(ctx.db, top):
                purger.submit(chunk)
            after = None
            while True:
                sql = PICK_SQL.format(after="t.id > %(after)s AND" if after else "")
                ids = [row[0] for row in ctx.db.execute(
                    sql, {**params, "after": after, "limit": opts.batch_size}).fetchall()]
                if not ids:
                    break
                between = ctx.db.execute(TASKS_BETWEEN_SQL, (ids[0], ids[-1], 2 * len(ids))).fetchone()[0]
                others = between - max(len(ids) - 2, 0)  # not counting this page's own tasks
                purger.submit(outbox.targets_for_tasks(
                    ids, artifacts_bucket=opts.artifacts_bucket, logs_bucket=opts.logs_bucket),
                    dense=others <= len(ids))
                after = ids[-1]
    finally:
        purger.close()
    reasons = [f"S3 failed while counting ({one_line(purger.broken)})"] if purger.broken is not None else []
    log_summary(ctx, reasons)
    return Outcome(not reasons, reasons, transient=bool(reasons))


def log_summary(ctx, reasons: list[str]) -> None:
    c = ctx.report.counts
    verb = "would delete" if ctx.dry_run else "deleted"
    ctx.log.info("%s %d task(s) of %d process(es), %d artifact row(s), %d parent link(s), %d S3 object(s) "
                 "(%d bytes); released %d GPU(s); %d process(es) left alone (unfinished tasks)",
                 verb, c["tasks"], c["processes"], c["artifacts"], c["task_parents"], c["s3_objects"],
                 c["s3_bytes"], c["gpus_released"], c["processes_skipped_unfinished"])
    for reason in reasons:
        ctx.log.warning("incomplete: %s", reason)


def _count(ctx, counts: dict) -> None:
    for name, value in counts.items():
        ctx.report.count(name, value)


def _should_stop(opts: CleanupOptions, started: float) -> str:
    if opts.stop is not None and opts.stop.is_set():
        return "stopped by a signal"
    if opts.max_runtime is not None and _clock() - started >= opts.max_runtime:
        return f"--max-runtime ({opts.max_runtime:g}s) reached"
    return ""
