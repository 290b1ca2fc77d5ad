"""Fold workflows into processes in PostgreSQL, online, resumable, and reversible until the contract.

The runbook (the steps live in :mod:`migrate.fold.runbook`), by phase:

  expand    (``--phase expand``) everything but the drop, while the legacy release runs and
            then beside the new one: preflight (server, rights, schema, orphans), new nullable
            columns, two-way sync triggers (each release's writes fill the other's columns,
            so both can run at once during a rolling deploy), backfills by key range (one
            commit per batch, waiting while a replica lags or an operator pauses), indexes
            built CONCURRENTLY, foreign keys NOT VALID then VALIDATE, the unique constraint,
            verify.
  contract  (``--phase contract``) verify again, then one short transaction: triggers, both
            workflow_id columns, ponos_workflow (or renamed aside with --keep-workflow-table),
            the new release's Django migration row; then NOT NULL without a scan.
  all       (no ``--phase``) both at once: the maintenance-window fold.
  rollback  (``--rollback``) the expand undone, last step first; every row either release
            wrote meanwhile keeps its legacy columns filled. Refused after the contract.

Every step asks the catalog before it acts, so a run killed at any point resumes where it
stopped, and a run of a finished phase changes nothing. Every statement that takes a lock
the application could queue behind runs under a short ``lock_timeout`` and retries with
backoff. One fold at a time: the run holds an advisory lock.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional

import psycopg

from ponoskit import schema
from ponoskit.context import Context
from ponoskit.errors import AlreadyRunning, ConfigError, PonosError
from ponoskit.runtime import DatabaseErrors

from migrate.fold import django_migrations, orphans, preflight, runbook
from migrate.fold.ddl import Ddl, LockBusy, LockPolicy
from migrate.fold.job import KEPT_WORKFLOW_TABLE, ORPHANS_DELETE, ORPHANS_REFUSE, PHASES, FoldOptions, Job
from migrate.fold.runbook import Plan, Step
from migrate.fold.throttle import Throttle

__all__ = ["FOLD_LOCK_KEY", "FoldOptions", "FoldPlan", "LockBusy", "LockPolicy", "PHASES",
           "KEPT_WORKFLOW_TABLE", "ORPHANS_DELETE", "ORPHANS_REFUSE", "fold_workflows", "plan_fold", "rollback_fold"]

# pg_try_advisory_lock key of this job ("ponosfol" in ASCII): one fold per database at a time.
FOLD_LOCK_KEY = 0x706F6E6F73666F6C


@dataclass
class FoldPlan:
    """What a run would do: the preflight's findings and every step with its SQL and rows."""
    state: str
    counts: dict[str, int] = field(default_factory=dict)
    steps: list[Plan] = field(default_factory=list)
    refusal: Optional[PonosError] = None  # what a real run would refuse with, if anything

    def pending_steps(self) -> list[Plan]:
        return [step for step in self.steps if step.pending]


def fold_workflows(ctx: Context, options: FoldOptions = FoldOptions()) -> None:
    """Run the phase to its end (or find it done). Raises a PonosError when it cannot. A lost
    database session resumes the run from the step list, as a re-run would."""
    ctx.resuming("the workflow fold", lambda: _fold(ctx, options))


def _fold(ctx: Context, options: FoldOptions) -> None:
    with DatabaseErrors("preflight") as errors:
        conn = ctx.db
        _describe(ctx, options)
        with _lock(ctx, conn):
            findings = _preflight(ctx, conn, options)
            if findings.orphans and options.orphans == ORPHANS_REFUSE and options.phase != "contract":
                raise preflight.OrphansFound(findings.orphans)
            job = _job(ctx, conn, options, findings)
            steps = _steps_for(job)
            if options.phase == "contract" and findings.state != schema.FOLDED:
                _require_expanded(job)
            with job.throttle.signals():
                ran = _run(ctx, job, steps, errors, undo=False)
            if ran == 0 and findings.state == schema.FOLDED:
                ctx.log.info("the database is already folded: nothing to do")
                ctx.report.info["already_folded"] = True
            orphans.report_deleted(conn, ctx.report)


def rollback_fold(ctx: Context, options: FoldOptions = FoldOptions()) -> None:
    """Undo the expand: the legacy shape alone again, every row kept. Refused after the contract."""
    ctx.resuming("the rollback", lambda: _roll_back(ctx, options))


def _roll_back(ctx: Context, options: FoldOptions) -> None:
    with DatabaseErrors("rollback preflight") as errors:
        conn = ctx.db
        _describe(ctx, options)
        ctx.report.info["rollback"] = True
        with _lock(ctx, conn):
            state = _check_can_roll_back(conn)
            ctx.report.info.setdefault("schema_state_before", state)
            job = _job(ctx, conn, options, preflight.Findings(state))
            with job.throttle.signals():
                ran = _run(ctx, job, runbook.rollback(), errors, undo=True)
            if ran == 0:
                ctx.log.info("nothing of the expand is left: nothing to roll back")
            ctx.report.info["schema_state_after"] = schema.schema_state(conn)


def plan_fold(ctx: Context, options: FoldOptions = FoldOptions(), *, rollback: bool = False) -> FoldPlan:
    """Preflight and plan, changing nothing (``--dry-run``)."""
    with DatabaseErrors("plan"):
        conn = ctx.db
        _describe(ctx, options)
        if rollback:
            state = _check_can_roll_back(conn)
            job = _job(ctx, conn, options, preflight.Findings(state), checks=False)
            plan = FoldPlan(state)
            plan.steps = [step.undo_plan(job) for step in runbook.rollback()]
        else:
            findings = _preflight(ctx, conn, options)
            plan = FoldPlan(findings.state, findings.counts)
            if findings.orphans and options.orphans == ORPHANS_REFUSE and options.phase != "contract":
                plan.refusal = preflight.OrphansFound(findings.orphans)
            job = _job(ctx, conn, options, findings, checks=False)
            plan.steps = [step.plan(job) for step in _steps_for(job)]
        ctx.report.info["plan"] = [step.to_dict() for step in plan.steps]
        return plan


def _job(ctx: Context, conn, options: FoldOptions, findings, *, checks: bool = True) -> Job:
    throttle = Throttle(conn, max_lag=options.max_replica_lag, pause_file=options.pause_file, log=ctx.log,
                        report=ctx.report)
    if checks:
        throttle.check()
        if options.phase != "expand":
            django_migrations.check(conn, options.django_migration)
    return Job(ctx, options, Ddl(conn, options.lock, ctx.log, ctx.report), findings, throttle)


def _steps_for(job: Job) -> list[Step]:
    """The phase's steps that apply; a folded schema only gets the finishing ones."""
    if job.findings.state == schema.FOLDED:
        todo = runbook.contract(after_drop_only=True) if job.options.phase != "expand" else []
    elif job.options.phase == "expand":
        todo = runbook.expand()
    elif job.options.phase == "contract":
        todo = runbook.contract()
    else:
        todo = runbook.expand() + runbook.contract()[1:]  # one verify is enough in one go
    return [step for step in todo if step.applies(job)]


def _require_expanded(job: Job) -> None:
    """The contract drops what the legacy release reads: only once the expand is whole."""
    pending = [step.name for step in runbook.expand() if step.applies(job) and step.name not in
               ("delete_orphans", "verify") and step.pending(job)]
    if pending:
        raise ConfigError(f"the expand is not finished ({', '.join(pending)} still to do): run "
                          "db-fold-workflow --phase expand first; nothing changed")


def _check_can_roll_back(conn) -> str:
    state = schema.schema_state(conn)
    if state == schema.FOLDED:
        raise ConfigError("the contract has run: workflow_id and ponos_workflow are gone, there is no expand "
                          "to roll back (the README says what can still be undone); nothing changed")
    if state == schema.UNKNOWN:
        raise ConfigError("the database holds neither the legacy nor the folded Ponos tables; nothing changed")
    return state


def _run(ctx: Context, job: Job, steps: list[Step], errors: DatabaseErrors, *, undo: bool) -> int:
    ran = 0
    for step in steps:
        name = f"undo {step.name}" if undo else step.name
        errors.during = name
        with ctx.report.phase(name) as record:
            if not (step.undo_pending(job) if undo else step.pending(job)):
                record["status"] = "already done"
                ctx.log.debug("%s: already done", name)
                continue
            ctx.log.info("%s ...", name)
            (step.undo if undo else step.run)(job, record)
            record["status"] = "done"
            ran += 1
        ctx.log.info("%s: done in %.1fs", name, record["seconds"])
    return ran


@contextmanager
def _lock(ctx: Context, conn: psycopg.Connection) -> Iterator[None]:
    """The advisory lock; when it is taken, say by whom, and how a killed run's session ends."""
    held = ExitStack()
    try:
        held.enter_context(ctx.advisory_lock(FOLD_LOCK_KEY, "workflow fold"))
    except AlreadyRunning as busy:
        holder = conn.execute(
            "SELECT a.pid, a.application_name, a.state, to_char(a.query_start, 'YYYY-MM-DD HH24:MI:SS TZ') "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid::text::bigint = %s AND l.objid::text::bigint = %s AND l.objsubid = 1",
            (FOLD_LOCK_KEY >> 32, FOLD_LOCK_KEY & 0xFFFFFFFF)).fetchone()
        if holder is None:
            raise
        pid, application, state, since = holder
        raise AlreadyRunning(
            f"{busy}: by server process {pid} ({application or 'no application name'}, {state} since {since}). "
            "The session of a killed run lives until its current statement ends; "
            f"SELECT pg_terminate_backend({pid}) ends it at once") from None
    with held:
        yield


def _describe(ctx: Context, options: FoldOptions) -> None:
    ctx.report.info.update(batch_size=options.batch_size, lock_timeout_seconds=options.lock.timeout,
                           orphans=options.orphans, keep_workflow_table=options.keep_workflow_table,
                           phase=options.phase, max_replica_lag_seconds=options.max_replica_lag)


def _preflight(ctx: Context, conn: psycopg.Connection, options: FoldOptions) -> preflight.Findings:
    with ctx.report.phase("preflight") as record:
        findings = preflight.check(conn, keep_table=KEPT_WORKFLOW_TABLE if options.keep_workflow_table else None)
        record.update(state=findings.state, **findings.counts)
    ctx.report.info.setdefault("schema_state_before", findings.state)  # the run's, not a resume's
    for listed in ("orphan_workflows", "orphan_tasks"):  # a resumed run lists them anew
        ctx.report.items.pop(listed, None)
        ctx.report.counts.pop(listed, None)
    for workflow_id, tasks in findings.orphans.workflows:
        ctx.report.add("orphan_workflows", {"id": workflow_id, "tasks": tasks})
    for task_id in findings.orphans.task_ids:
        ctx.report.add("orphan_tasks", task_id)
    if findings.orphans and options.orphans == ORPHANS_DELETE:
        ctx.log.warning("%d orphan workflow(s) go %s; their %d task(s) are deleted, S3 keys in the report",
                        len(findings.orphans.workflows),
                        f"to {KEPT_WORKFLOW_TABLE}" if options.keep_workflow_table else "with the table",
                        len(findings.orphans.task_ids))
    return findings
