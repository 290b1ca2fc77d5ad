"""Fold workflows into processes in PostgreSQL, online and resumable.

The runbook, in order (the phases live in :mod:`migrate.fold.phases`):

 1. preflight           read only: server version, rights, schema shape (legacy, folded, or a
                        fold of ours under way), orphan workflows and tasks. Orphans are refused
                        (ids listed, exit 1) unless ``orphans="delete"``.
 2. delete_orphans      only when asked: orphan tasks go, recorded in an outbox with their S3 keys.
 3. add_columns         process_process.farm_id/started/finished, ponos_task.process_id: nullable,
                        no default, so adding them is a catalog change.
 4. install_sync_triggers  the application keeps writing the legacy columns during the fold;
                        triggers copy its writes into the new ones.
 5. backfill_processes, backfill_tasks   batches by primary-key range, one commit per batch,
                        then a sweep that fixes what the walk missed.
 6. index_process_farm, index_task_process   CREATE INDEX CONCURRENTLY (an INVALID leftover of
                        a killed build is dropped and rebuilt).
 7. constrain_process_farm, constrain_task_process   foreign keys NOT VALID, then VALIDATE.
 8. unique_process_run_slug   unique index CONCURRENTLY, then ADD CONSTRAINT ... USING INDEX.
 9. keep_workflow_mapping   with ``keep_workflow_table`` only: the kept table learns process_id.
10. verify              every task's process is its workflow's, counts agree, constraints valid.
11. drop_workflow       one short transaction: triggers, both workflow_id columns, the table (or
                        renamed aside to ``ponos_workflow_before_fold``), plus a CHECK
                        (process_id IS NOT NULL) NOT VALID once the index shows no NULL is left.
12. task_process_not_null   VALIDATE that CHECK, SET NOT NULL (no scan), drop the CHECK.

Every phase asks the catalog before it acts, so a run killed at any point resumes where it
stopped, and a run on a folded database changes nothing. Every statement that takes a lock
the application could queue behind runs under a short ``lock_timeout`` and retries with
backoff. One fold at a time: the run holds an advisory lock.

The application stays on its legacy code until step 11 and should get the version without
the Workflow model right after; the triggers bridge the time in between.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional

import psycopg
from psycopg import errors as pg_errors

from ponoskit import schema
from ponoskit.context import Context
from ponoskit.connections import redact
from ponoskit.errors import AlreadyRunning, ConfigError, PonosError, TransientError

from migrate.fold import orphans, phases, preflight
from migrate.fold.ddl import Ddl, LockBusy, LockPolicy
from migrate.fold.job import (KEPT_WORKFLOW_TABLE, ORPHANS_DELETE, ORPHANS_REFUSE, FoldOptions, Job,
                              ProgressFactory)
from migrate.fold.phases import Step

__all__ = ["FOLD_LOCK_KEY", "FoldFailed", "FoldOptions", "FoldPlan", "LockBusy", "LockPolicy",
           "KEPT_WORKFLOW_TABLE", "ORPHANS_DELETE", "ORPHANS_REFUSE", "fold_workflows", "plan_fold"]

# pg_try_advisory_lock key of this job ("ponosfol" in ASCII): one fold per database at a time.
FOLD_LOCK_KEY = 0x706F6E6F73666F6C


class FoldFailed(PonosError):
    """A phase failed on a database error; what committed stays, a re-run resumes from there."""


@dataclass
class FoldPlan:
    """What a run would do: the preflight's findings and every phase with its SQL and rows."""
    state: str
    counts: dict[str, int] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    refusal: Optional[PonosError] = None  # what a real run would refuse with, if anything

    def pending_steps(self) -> list[Step]:
        return [step for step in self.steps if step.pending]


def fold_workflows(ctx: Context, options: FoldOptions = FoldOptions(),
                   progress: Optional[ProgressFactory] = None) -> None:
    """Run the fold to its end (or find it done). Raises a PonosError when it cannot."""
    with _DatabaseErrors("preflight") as errors:
        conn = ctx.db
        _describe(ctx, options)
        with _lock(ctx, conn):
            findings = _preflight(ctx, conn, options)
            if findings.orphans and options.orphans == ORPHANS_REFUSE:
                raise preflight.OrphansFound(findings.orphans)
            job = Job(ctx, options, Ddl(conn, options.lock, ctx.log, ctx.report), findings, progress)
            ran = 0
            for phase in _phases_for(job):
                errors.phase = phase.name
                with ctx.report.phase(phase.name) as record:
                    if not phase.pending(job):
                        record["status"] = "already done"
                        ctx.log.debug("%s: already done", phase.name)
                        continue
                    ctx.log.info("%s ...", phase.name)
                    phase.run(job, record)
                    record["status"] = "done"
                    ran += 1
                ctx.log.info("%s: done in %.1fs", phase.name, record["seconds"])
            if ran == 0 and findings.state == schema.FOLDED:
                ctx.log.info("the database is already folded: nothing to do")
                ctx.report.info["already_folded"] = True
            orphans.report_deleted(conn, ctx.report)


def plan_fold(ctx: Context, options: FoldOptions = FoldOptions()) -> FoldPlan:
    """Preflight and plan, changing nothing (``--dry-run``)."""
    with _DatabaseErrors("plan"):
        conn = ctx.db
        _describe(ctx, options)
        findings = _preflight(ctx, conn, options)
        plan = FoldPlan(findings.state, findings.counts)
        if findings.orphans and options.orphans == ORPHANS_REFUSE:
            plan.refusal = preflight.OrphansFound(findings.orphans)
        job = Job(ctx, options, Ddl(conn, options.lock, ctx.log), findings)
        plan.steps = [phase.plan(job) for phase in _phases_for(job)]
        ctx.report.info["plan"] = [step.to_dict() for step in plan.steps]
        return plan


def _phases_for(job: Job) -> list[phases.Phase]:
    """A folded schema only gets the finishing phases; the others need the legacy columns."""
    todo = phases.after_drop() if job.findings.state == schema.FOLDED else phases.all_phases()
    return [phase for phase in todo if phase.applies(job)]


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
                           orphans=options.orphans, keep_workflow_table=options.keep_workflow_table)


def _preflight(ctx: Context, conn: psycopg.Connection, options: FoldOptions) -> preflight.Findings:
    with ctx.report.phase("preflight") as record:
        findings = preflight.check(conn, keep_table=KEPT_WORKFLOW_TABLE if options.keep_workflow_table else None)
        record.update(state=findings.state, **findings.counts)
    ctx.report.info["schema_state_before"] = findings.state
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


class _DatabaseErrors:
    """Turn a database error into a typed error that names the phase it happened in."""

    def __init__(self, phase: str):
        self.phase = phase

    def __enter__(self) -> "_DatabaseErrors":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not isinstance(exc, psycopg.Error):
            return False
        message = redact(" ".join(str(exc).split()))
        if isinstance(exc, pg_errors.InsufficientPrivilege):
            raise ConfigError(f"{self.phase}: missing privilege: {message}") from None
        if isinstance(exc, psycopg.OperationalError) and not isinstance(exc, pg_errors.QueryCanceled):
            # The connection went (a failover, a restart): what committed stays, run again later.
            raise TransientError(f"{self.phase}: database unavailable ({message}); what committed stays, "
                                 "run again to resume") from None
        raise FoldFailed(f"{self.phase} failed: {message}; what committed stays, run again to resume") from None
