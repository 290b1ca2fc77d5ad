"""``ponos-maint cleanup``: delete the tasks of expired processes, their rows and their files.

The runbook, as :func:`run_cleanup` runs it:
  1. take the advisory lock (a second run stops at once with AlreadyRunning);
  2. check the schema is folded, both buckets answer and the run may list and delete in them
     (a canary: preflight.check_permissions); nothing has changed before this;
  3. make sure the outbox table exists;
  4. drain the outbox: S3 work owed by earlier runs goes first; if S3 still fails, stop;
  5. hand the tasks ``db-fold-workflow --orphans delete`` deleted to the outbox (their legacy
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
from typing import Any, Callable, Optional

import psycopg

from ponoskit import tasks
from ponoskit.budget import RuntimeBudget, why_stop
from ponoskit.runtime import JobResult
from ponoskit.s3.errors import S3PermissionError, one_line

from . import billing, fold_leftovers, outbox, preflight
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
    progress: Optional[Callable[..., Any]] = None  # (total, desc, unit) -> a tqdm-like bar; the CLI injects its own


def run_cleanup(ctx, opts: CleanupOptions) -> JobResult:
    budget = RuntimeBudget(opts.max_runtime, clock=_clock)
    ctx.report.info.update(before=opts.before.isoformat(), batch_size=opts.batch_size,
                           artifacts_bucket=opts.artifacts_bucket, logs_bucket=opts.logs_bucket,
                           max_tasks=opts.max_tasks, list_prefixes=opts.list_prefixes)
    requests = billing.counter(ctx.s3)
    sent_before = requests.snapshot()
    with ctx.advisory_lock(LOCK_KEY, "ponos-maint cleanup"):
        try:
            preflight.require_folded(ctx.db)
            preflight.check_permissions(ctx, opts.artifacts_bucket, opts.logs_bucket)
            if not ctx.dry_run:
                outbox.ensure(ctx.db)
            params = {"before": opts.before, "unfinished": UNFINISHED_STATES}
            report_unfinished_processes(ctx, params)
            if ctx.dry_run:
                return plan(ctx, opts, params, requests, sent_before)
            return clean(ctx, opts, params, budget)
        except psycopg.Error as exc:
            raise preflight.database_error(exc) from None
        finally:
            if not ctx.dry_run:
                billing.record(ctx.report, "s3_requests", requests.since(sent_before))


def report_unfinished_processes(ctx, params: dict) -> None:
    with ctx.report.phase("unfinished"), ctx.db.cursor() as cur:
        for (process_id,) in cur.execute(UNFINISHED_SQL, params):
            ctx.report.add("processes_skipped_unfinished", str(process_id), limit=MAX_LISTED_IDS)
    skipped = ctx.report.counts["processes_skipped_unfinished"]
    if skipped:
        shown = ", ".join(ctx.report.items["processes_skipped_unfinished"][:5])
        ctx.log.warning("%d expired process(es) still have an unfinished task and are left alone: %s%s",
                        skipped, shown, ", ..." if skipped > 5 else "")


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
    return JobResult.finished(reasons, transient=transient, stopped=stopped,
                              terminated=opts.stop is not None and opts.stop.is_set())


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
    purger.wait()


def hand_over_fold_leftovers(ctx, purger: Purger, opts: CleanupOptions, budget: RuntimeBudget,
                             reasons: list[str]) -> str:
    """The tasks the fold's ``--orphans delete`` recorded go to the outbox, a batch per
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
        if purger.broken is not None:
            return "S3 failed"
        reason = why_stop(opts.stop, budget)
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
    return ""


def delete_due_tasks(ctx, purger: Purger, opts: CleanupOptions, params: dict, budget: RuntimeBudget) -> str:
    """Batch after batch until nothing is due (or --max-tasks are gone); returns why it
    stopped early, or ''."""
    after = None
    deleted = 0
    due = ctx.db.execute(COUNT_DUE_SQL, params).fetchone()[0]
    ctx.report.info["tasks_due_at_start"] = due
    total = due if opts.max_tasks is None else min(due, opts.max_tasks)
    ctx.report.expect("tasks", total=total)
    with (opts.progress or _no_bar)(total=total, desc="tasks", unit="task") as bar:
        while True:
            if purger.broken is not None:
                return "S3 failed"
            if opts.max_tasks is not None and deleted >= opts.max_tasks:
                return _max_tasks_reached(ctx, opts, params)
            reason = why_stop(opts.stop, budget)
            if reason:
                return reason
            limit = opts.batch_size if opts.max_tasks is None else min(opts.batch_size, opts.max_tasks - deleted)
            batch = delete_batch(ctx, purger, opts, params, after, limit)
            if batch is None:
                return ""
            after, size = batch
            deleted += size
            bar.update(size)


def _max_tasks_reached(ctx, opts: CleanupOptions, params: dict) -> str:
    left = ctx.db.execute(COUNT_DUE_SQL, params).fetchone()[0]
    if not left:
        return ""
    ctx.report.count("tasks_left_due", left)
    return f"--max-tasks ({opts.max_tasks}) reached: {left} due task(s) left for the next run"


def delete_batch(ctx, purger: Purger, opts: CleanupOptions, params: dict, after,
                 limit: Optional[int] = None) -> Optional[tuple]:
    """One short transaction; returns (last task id, number of tasks) or None when none is due."""
    sql = PICK_SQL.format(after="t.id > %(after)s AND" if after else "") + LOCKING
    for attempt in range(1, LOCK_RETRIES + 1):
        try:
            with ctx.transaction() as tx:
                tx.execute("SET LOCAL lock_timeout = '5s'")
                picked = tx.execute(sql, {**params, "after": after, "limit": limit or opts.batch_size}).fetchall()
                if not picked:
                    return None
                ids = [task_id for task_id, _ in picked]
                if opts.list_prefixes:
                    found = outbox.targets_for_tasks(ids, artifacts_bucket=opts.artifacts_bucket,
                                                     logs_bucket=opts.logs_bucket)
                else:  # the keys the rows name, read before the rows go
                    found = outbox.targets_for_rows(tx.conn, ids, artifacts_bucket=opts.artifacts_bucket,
                                                    logs_bucket=opts.logs_bucket)
                counts = tasks.delete_tasks(tx.conn, ids)
                processes = list({process_id for _, process_id in picked})
                counts["processes"] = tx.execute(EMPTIED_PROCESSES_SQL, (processes,)).fetchone()[0]
                targets = outbox.add(tx.conn, found)
                dense = False
                if opts.list_prefixes:
                    # Few tasks left between the first and last id: their files are listed by
                    # prefix groups instead of one listing per task (purge.plan_listings).
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


def plan(ctx, opts: CleanupOptions, params: dict, requests: billing.RequestCounter,
         sent_before) -> JobResult:
    """The dry run: count what a real run would delete, in the database and in S3, and the
    S3 requests it would make (the same listings are made; deletes are estimated)."""
    with ctx.report.phase("plan"):
        if opts.max_tasks is None:
            processes, tasks, artifacts, gpus = ctx.db.execute(PLAN_SQL, params).fetchone()
            parents = ctx.db.execute(PLAN_PARENTS_SQL, params).fetchone()[0]
        else:
            processes, tasks, artifacts, gpus, parents = ctx.db.execute(
                LIMITED_PLAN_SQL, {**params, "max_tasks": opts.max_tasks}).fetchone()
            left = ctx.db.execute(COUNT_DUE_SQL, params).fetchone()[0] - tasks
            if left:
                ctx.report.count("tasks_left_due", left)  # what the next run would find
    _count(ctx, {"processes": processes, "tasks": tasks, "artifacts": artifacts,
                 "gpus_released": gpus, "task_parents": parents})
    ctx.report.expect("tasks", total=tasks)
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
            after, planned = None, 0
            while opts.max_tasks is None or planned < opts.max_tasks:
                limit = opts.batch_size if opts.max_tasks is None else min(opts.batch_size, opts.max_tasks - planned)
                sql = PICK_SQL.format(after="t.id > %(after)s AND" if after else "")
                ids = [row[0] for row in ctx.db.execute(sql, {**params, "after": after, "limit": limit}).fetchall()]
                if not ids:
                    break
                if opts.list_prefixes:
                    between = ctx.db.execute(TASKS_BETWEEN_SQL, (ids[0], ids[-1], 2 * len(ids))).fetchone()[0]
                    others = between - max(len(ids) - 2, 0)  # not counting this page's own tasks
                    deletes += _counted(purger, outbox.targets_for_tasks(
                        ids, artifacts_bucket=opts.artifacts_bucket, logs_bucket=opts.logs_bucket),
                        dense=others <= len(ids))
                else:
                    deletes += _counted(purger, outbox.targets_for_rows(
                        ctx.db, ids, artifacts_bucket=opts.artifacts_bucket, logs_bucket=opts.logs_bucket))
                after, planned = ids[-1], planned + len(ids)
    finally:
        purger.close()
    bill = billing.merged(requests.since(sent_before),
                          billing.canary_requests(len({opts.artifacts_bucket, opts.logs_bucket})))
    bill.add("DELETE", deletes)
    total = billing.record(ctx.report, "bill", bill, opts.prices)
    ctx.log.info("a real run: %s", total.summary(opts.prices))
    reasons = [f"S3 failed while counting ({one_line(purger.broken)})"] if purger.broken is not None else []
    log_summary(ctx, reasons)
    return JobResult.finished(reasons, transient=bool(reasons))


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


class _NoBar:
    """No progress bar (a library call): update() does nothing."""

    def __init__(self, **_):
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int = 1) -> None:
        pass


_no_bar = _NoBar
