"""``ponos-maint cleanup``: delete the tasks of expired processes, their rows and their files.

The runbook, as :func:`run_cleanup` runs it:
  1. take the advisory lock (a second run stops at once with AlreadyRunning);
  2. check the schema is folded, both buckets answer and the run may list and delete in them
     (a canary: preflight.check_permissions); nothing has changed before this;
  3. make sure the outbox table exists;
  4. drain the outbox: S3 work owed by earlier runs goes first; if S3 still fails, stop;
  5. hand the tasks ``db-fold-workflow --orphan-workflows delete`` deleted to the outbox (their legacy
     keys; maint.fold_leftovers), a batch per transaction;
  6. batch after batch, one short transaction each: pick due tasks (FOR UPDATE SKIP LOCKED),
     read the keys their rows name (each artifact's key, the log), release their GPUs, delete
     their parent links (both directions), their artifact rows and the tasks, and record the
     keys in the outbox; after the commit, a hook hands the targets to the purger, which
     deletes the objects (DeleteObjects, no listing) and then the outbox rows. With
     ``list_prefixes`` each task's artifacts prefix is listed instead (it also finds objects
     without a row; otherwise those are the orphan sweep's); ``max_tasks`` caps the run;
  7. wait for S3, check nothing due was left behind, report.

A process is expired when it has tasks and every one has ``expiry`` before ``before``. Its tasks
are *due* unless one of them is unfinished: such processes are reported and left alone. The
process row itself always stays (worker runs and activities point at it).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterator, Optional

import psycopg

from ponoskit import tasks
from ponoskit.budget import RuntimeBudget, why_stop
from ponoskit.runtime import JobResult, database_error
from ponoskit.s3.bill import RequestCounter, merged
from ponoskit.s3.errors import S3PermissionError, one_line

from . import billing, fold_leftovers, outbox, preflight
from .purge import Purger

LOCK_KEY = preflight.lock_key("ponos-maint cleanup")
UNFINISHED_STATES = list(tasks.UNFINISHED_STATES)
MAX_LISTED_IDS = 1000
LOCK_RETRIES = 3

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

# With --max-tasks: the first N due tasks by id, as the real run picks them. A process counts
# when all its tasks are among them (the real run counts a process once it has no task left).
LIMITED_PLAN_SQL = f"""
WITH picked AS MATERIALIZED (
    SELECT t.id, t.process_id FROM ponos_task t WHERE {DUE} ORDER BY t.id LIMIT %(max_tasks)s)
SELECT (SELECT count(DISTINCT p.process_id) FROM picked p WHERE NOT EXISTS (
            SELECT 1 FROM ponos_task o WHERE o.process_id = p.process_id AND o.id NOT IN (SELECT id FROM picked))),
       (SELECT count(*) FROM picked),
       (SELECT count(*) FROM ponos_artifact a WHERE a.task_id IN (SELECT id FROM picked)),
       (SELECT count(*) FROM ponos_gpu g WHERE g.task_id IN (SELECT id FROM picked)),
       (SELECT count(*) FROM ponos_task_parents l
         WHERE l.from_task_id IN (SELECT id FROM picked) OR l.to_task_id IN (SELECT id FROM picked))"""

COUNT_DUE_SQL = f"SELECT count(*) FROM ponos_task t WHERE {DUE}"

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
    max_tasks: Optional[int] = None  # delete at most this many tasks this run (a large backlog's first runs)
    list_prefixes: bool = False  # list each task's artifacts prefix instead of deleting the keys rows name
    prices: Optional[dict] = None  # USD per 1,000 requests for the dry run's bill (ponoskit.s3.bill)
    clock: Callable[[], float] = time.monotonic  # --max-runtime's clock

    def targets(self, conn, ids: list) -> list:
        """What S3 holds for these tasks: the keys their rows name (read before the rows go),
        or with ``list_prefixes`` their prefixes (maint.outbox)."""
        buckets = {"artifacts_bucket": self.artifacts_bucket, "logs_bucket": self.logs_bucket}
        if self.list_prefixes:
            return outbox.targets_for_tasks(ids, **buckets)
        return outbox.targets_for_rows(conn, ids, **buckets)


def run_cleanup(ctx, opts: CleanupOptions) -> JobResult:
    """The job; a lost database session resumes it from the outbox (what a re-run would do)."""
    ctx.report.info.update(before=opts.before.isoformat(), batch_size=opts.batch_size,
                           artifacts_bucket=opts.artifacts_bucket, logs_bucket=opts.logs_bucket,
                           max_tasks=opts.max_tasks, list_prefixes=opts.list_prefixes)
    budget = RuntimeBudget(opts.max_runtime, clock=opts.clock)
    with RequestCounter(ctx.s3) as requests:
        try:
            return ctx.resuming("the cleanup", lambda: _locked_run(ctx, opts, budget, requests))
        finally:
            if not ctx.dry_run:
                billing.record(ctx.report, "s3_requests", requests.sent())


def _locked_run(ctx, opts: CleanupOptions, budget: RuntimeBudget, requests) -> JobResult:
    with ctx.advisory_lock(LOCK_KEY, "ponos-maint cleanup"):
        try:
            preflight.require_folded(ctx.db)
            preflight.check_permissions(ctx, opts.artifacts_bucket, opts.logs_bucket)
            if not ctx.dry_run:
                outbox.ensure(ctx.db)
            params = {"before": opts.before, "unfinished": UNFINISHED_STATES}
            report_unfinished_processes(ctx, params)
            if ctx.dry_run:
                return plan(ctx, opts, params, requests)
            return clean(ctx, opts, params, budget)
        except psycopg.Error as exc:
            raise database_error(exc, "the cleanup") from exc


def report_unfinished_processes(ctx, params: dict) -> None:
    ctx.report.items.pop("processes_skipped_unfinished", None)  # a resumed run counts them again
    ctx.report.counts.pop("processes_skipped_unfinished", None)
    with ctx.report.phase("unfinished"), ctx.db.cursor() as cur:
        for (process_id,) in cur.execute(UNFINISHED_SQL, params):
            ctx.report.add("processes_skipped_unfinished", str(process_id), limit=MAX_LISTED_IDS)
    skipped = ctx.report.counts["processes_skipped_unfinished"]
    if skipped:
        shown = ", ".join(ctx.report.items["processes_skipped_unfinished"][:5])
        ctx.log.warning("%d expired process(es) still have an unfinished task and are left alone: %s%s",
                        skipped, shown, ", ..." if skipped > 5 else "")


def due_batches(opts: CleanupOptions, take: Callable[[Optional[object], int], list]) -> Iterator[list]:
    """The due tasks a batch at a time, in id order, as far as --max-tasks allows: what the
    real run deletes and the dry run counts. ``take(after, limit)`` picks (and, in a real
    run, deletes) the next batch and returns its ids; the consumer stops between batches by
    leaving the loop."""
    after, taken = None, 0
    while opts.max_tasks is None or taken < opts.max_tasks:
        limit = opts.batch_size if opts.max_tasks is None else min(opts.batch_size, opts.max_tasks - taken)
        ids = take(after, limit)
        if not ids:
            return
        yield ids
        after, taken = ids[-1], taken + len(ids)


def is_dense(conn, ids: list, *, still_there: bool) -> bool:
    """Few other tasks lie between this batch's first and last id: their files are listed by
    prefix groups instead of one listing per task (maint.listing_plan). ``still_there``: the
    batch's own tasks are not deleted yet (a dry run), so they are not counted as others."""
    own = max(len(ids) - 2, 0) if still_there else 0
    between = conn.execute(TASKS_BETWEEN_SQL, (ids[0], ids[-1], len(ids) + 1 + own)).fetchone()[0]
    return between - own <= len(ids)


def clean(ctx, opts: CleanupOptions, params: dict, budget: RuntimeBudget) -> JobResult:
    reasons: list[str] = []
    purger = Purger(ctx, count_only=False, list_keys=opts.list_prefixes)
    try:
        with ctx.report.phase("outbox"):
            drain_outbox(ctx, purger, opts, budget)
        stopped = ""
        if purger.broken is None:
            with ctx.report.phase("fold_leftovers"):
                stopped = hand_over_fold_leftovers(ctx, purger, opts, budget, reasons)
        if purger.broken is None and not stopped:
            with ctx.report.phase("tasks"):
                stopped = delete_due_tasks(ctx, purger, opts, params, budget)
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
    reasons += _set_aside(ctx)
    if not reasons:
        left = ctx.db.execute(COUNT_DUE_SQL, params).fetchone()[0]
        if left:
            ctx.report.count("tasks_left_locked", left)
            reasons.append(f"{left} due task(s) were locked by another transaction and skipped")
    log_summary(ctx, reasons)
    return JobResult.finished(reasons, transient=transient, stopped=stopped,
                              terminated=opts.stop is not None and opts.stop.is_set())


def _set_aside(ctx) -> list[str]:
    aside, rows = outbox.set_aside_rows(ctx.db)
    if not aside:
        return []
    ctx.report.counts["outbox_set_aside"] = aside
    ctx.report.items["outbox_set_aside_rows"] = list(rows)
    return [f"{aside} outbox target(s) set aside after {outbox.MAX_ATTEMPTS} refused attempts "
            "(see the report): fix the cause, then run with --retry-set-aside"]


def drain_outbox(ctx, purger: Purger, opts: CleanupOptions, budget: RuntimeBudget) -> None:
    if opts.retry_set_aside:
        released = outbox.release_set_aside(ctx.db)
        ctx.report.count("outbox_rows_released", released)
    rows, top = outbox.pending(ctx.db)
    ctx.report.count("outbox_rows_pending_at_start", rows)
    if rows:
        ctx.log.info("outbox: %d target(s) owed by earlier runs go first", rows)
    for chunk in outbox.iter_pending(ctx.db, top):
        if purger.broken is not None or why_stop(opts.stop, budget):
            break
        purger.submit(chunk)
        purger.acknowledge()
    purger.wait()


def hand_over_fold_leftovers(ctx, purger: Purger, opts: CleanupOptions, budget: RuntimeBudget,
                             reasons: list[str]) -> str:
    """The tasks the fold's ``--orphan-workflows delete`` recorded go to the outbox, a batch per
    transaction (maint.fold_leftovers); returns why it stopped early, or ''."""
    if not fold_leftovers.present(ctx.db):
        return ""
    if not fold_leftovers.may_hand_over(ctx.db):
        reasons.append(f"{fold_leftovers.TABLE} lists tasks the workflow fold deleted, but this role may not "
                       "SELECT and DELETE its rows: grant both so the cleanup deletes their S3 objects")
        return ""
    recorded = fold_leftovers.recorded(ctx.db)
    ctx.report.count("fold_deleted_tasks_recorded_at_start", recorded)
    while recorded:
        reason = _why_stop(purger, opts, budget)
        if reason:
            return reason
        with ctx.transaction() as tx:
            rows = fold_leftovers.take_batch(tx.conn, opts.batch_size)
            if not rows:
                return ""
            targets = outbox.add(tx.conn, fold_leftovers.targets_for(
                rows, artifacts_bucket=opts.artifacts_bucket, logs_bucket=opts.logs_bucket))
            # After the commit only: the rows are gone and the outbox holds the targets, or neither.
            tx.on_post_commit(lambda: ctx.report.count("fold_deleted_tasks_handed_over", len(rows)))
            tx.on_post_commit(lambda: purger.submit(targets))
        purger.acknowledge()
    return ""


def delete_due_tasks(ctx, purger: Purger, opts: CleanupOptions, params: dict, budget: RuntimeBudget) -> str:
    """Batch after batch until nothing is due (or --max-tasks are gone); returns why it
    stopped early, or ''."""
    due = ctx.db.execute(COUNT_DUE_SQL, params).fetchone()[0]
    ctx.report.info["tasks_due_at_start"] = due
    total = due if opts.max_tasks is None else min(due, opts.max_tasks)
    ctx.report.expect("tasks", total=total)
    taken = 0
    with ctx.bar("tasks", total=total, unit="task") as bar:
        reason = _why_stop(purger, opts, budget)
        if reason:
            return reason
        for ids in due_batches(opts, lambda after, limit: delete_batch(ctx, purger, opts, params, after, limit)):
            bar.update(len(ids))
            purger.acknowledge()
            taken += len(ids)
            if opts.max_tasks is not None and taken >= opts.max_tasks:
                break
            reason = _why_stop(purger, opts, budget)
            if reason:
                return reason
    return _max_tasks_reached(ctx, opts, params)


def _why_stop(purger: Purger, opts: CleanupOptions, budget: RuntimeBudget) -> str:
    """Why not to start another batch: S3 failing, a signal, --max-runtime; or ''."""
    return "S3 failed" if purger.broken is not None else why_stop(opts.stop, budget)


def _max_tasks_reached(ctx, opts: CleanupOptions, params: dict) -> str:
    if opts.max_tasks is None:
        return ""
    left = ctx.db.execute(COUNT_DUE_SQL, params).fetchone()[0]
    if not left:
        return ""
    ctx.report.count("tasks_left_due", left)
    return f"--max-tasks ({opts.max_tasks}) reached: {left} due task(s) left for the next run"


def delete_batch(ctx, purger: Purger, opts: CleanupOptions, params: dict, after, limit: int) -> list:
    """One short transaction: pick the next due tasks, delete them, record their files in the
    outbox; after the commit the purger deletes the files. Returns the ids ([] when none is due)."""
    sql = PICK_SQL.format(after="t.id > %(after)s AND" if after else "") + LOCKING
    for attempt in range(1, LOCK_RETRIES + 1):
        try:
            with ctx.transaction() as tx:
                tx.execute("SET LOCAL lock_timeout = '5s'")
                picked = tx.execute(sql, {**params, "after": after, "limit": limit}).fetchall()
                if not picked:
                    return []
                ids = [task_id for task_id, _ in picked]
                found = opts.targets(tx.conn, ids)
                counts = tasks.delete_tasks(tx.conn, ids)
                processes = list({process_id for _, process_id in picked})
                counts["processes"] = tx.execute(EMPTIED_PROCESSES_SQL, (processes,)).fetchone()[0]
                targets = outbox.add(tx.conn, found)
                dense = opts.list_prefixes and is_dense(tx.conn, ids, still_there=False)
                # After the commit only: no object goes while its row exists.
                tx.on_post_commit(lambda: _count(ctx, counts))
                tx.on_post_commit(lambda: purger.submit(targets, dense=dense))
            return ids
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected) as exc:
            if attempt == LOCK_RETRIES:
                raise
            ctx.log.warning("batch rolled back (%s), retrying", type(exc).__name__)
            time.sleep(attempt)
    return []


def plan(ctx, opts: CleanupOptions, params: dict, requests: RequestCounter) -> JobResult:
    """The dry run: count what a real run would delete, in the database and in S3, and the
    S3 requests it would make (the same listings are made; deletes are estimated)."""
    with ctx.report.phase("plan"):
        _count(ctx, _planned_rows(ctx, opts, params))
    purger = Purger(ctx, count_only=True, list_keys=opts.list_prefixes)
    deletes = 0
    try:
        with ctx.report.phase("s3"):
            rows, top = outbox.pending(ctx.db)
            ctx.report.count("outbox_rows_pending_at_start", rows)
            for chunk in outbox.iter_pending(ctx.db, top):
                deletes += _counted(purger, chunk)
            if fold_leftovers.present(ctx.db) and fold_leftovers.may_hand_over(ctx.db):
                ctx.report.count("fold_deleted_tasks", fold_leftovers.recorded(ctx.db))
                for page in fold_leftovers.iter_recorded(ctx.db, opts.batch_size):
                    deletes += _counted(purger, fold_leftovers.targets_for(
                        page, artifacts_bucket=opts.artifacts_bucket, logs_bucket=opts.logs_bucket))
            for ids in due_batches(opts, lambda after, limit: _pick(ctx, params, after, limit)):
                dense = opts.list_prefixes and is_dense(ctx.db, ids, still_there=True)
                deletes += _counted(purger, opts.targets(ctx.db, ids), dense=dense)
    finally:
        purger.close()
    bill = merged(requests.sent(), billing.canary_requests(len({opts.artifacts_bucket, opts.logs_bucket})))
    bill.add("DELETE", deletes)
    total = billing.record(ctx.report, "bill", bill, opts.prices)
    ctx.log.info("a real run: %s", total.summary(opts.prices))
    reasons = [f"S3 failed while counting ({one_line(purger.broken)})"] if purger.broken is not None else []
    log_summary(ctx, reasons)
    return JobResult.finished(reasons, transient=bool(reasons))


def _planned_rows(ctx, opts: CleanupOptions, params: dict) -> dict:
    if opts.max_tasks is None:
        processes, tasks_, artifacts, gpus = ctx.db.execute(PLAN_SQL, params).fetchone()
        parents = ctx.db.execute(PLAN_PARENTS_SQL, params).fetchone()[0]
    else:
        processes, tasks_, artifacts, gpus, parents = ctx.db.execute(
            LIMITED_PLAN_SQL, {**params, "max_tasks": opts.max_tasks}).fetchone()
        left = ctx.db.execute(COUNT_DUE_SQL, params).fetchone()[0] - tasks_
        if left:
            ctx.report.count("tasks_left_due", left)  # what the next run would find
    ctx.report.expect("tasks", total=tasks_)
    return {"processes": processes, "tasks": tasks_, "artifacts": artifacts, "gpus_released": gpus,
            "task_parents": parents}


def _pick(ctx, params: dict, after, limit: int) -> list:
    """The dry run's batch: the ids the real run would pick, nothing locked or deleted."""
    sql = PICK_SQL.format(after="t.id > %(after)s AND" if after else "")
    return [row[0] for row in ctx.db.execute(sql, {**params, "after": after, "limit": limit}).fetchall()]


def _counted(purger: Purger, targets, *, dense: bool = False) -> int:
    """Count one batch of targets (listing prefixes); return the DeleteObjects requests the
    real run would send for it (billing.delete_requests)."""
    before = dict(purger.keys_by_bucket)
    purger.submit(targets, dense=dense)
    purger.wait()
    found = {bucket: n - before.get(bucket, 0) for bucket, n in purger.keys_by_bucket.items()}
    return billing.delete_requests(found, shards=purger.shards)


def log_summary(ctx, reasons: list[str]) -> None:
    c = ctx.report.counts
    verb = "would delete" if ctx.dry_run else "deleted"
    ctx.log.info("%s %d task(s) of %d process(es), %d artifact row(s), %d parent link(s), %d S3 object(s) "
                 "(%d bytes); released %d GPU(s); %d process(es) left alone (unfinished tasks)",
                 verb, c["tasks"], c["processes"], c["artifacts"], c["task_parents"], c["s3_objects"],
                 c["s3_bytes"], c["gpus_released"], c["processes_skipped_unfinished"])
    if c["fold_deleted_tasks_handed_over"] or c["fold_deleted_tasks"]:
        ctx.log.info("%s the S3 objects of %d task(s) the workflow fold deleted (%s)", verb,
                     c["fold_deleted_tasks_handed_over"] or c["fold_deleted_tasks"], fold_leftovers.TABLE)
    for reason in reasons:
        ctx.log.warning("incomplete: %s", reason)


def _count(ctx, counts: dict) -> None:
    for name, value in counts.items():
        ctx.report.count(name, value)
