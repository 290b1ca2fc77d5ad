"""``ponos-migrate db-fold-workflow``: the command over :mod:`migrate.db_fold_workflow`."""

from __future__ import annotations

import sys

import click

from ponoskit.cli import (Duration, dsn_option, expert_option, init_logging, job_report, progress,
                          retry_deadline_option, run_job, run_options)
from ponoskit.connections import S3Settings, describe_dsn
from ponoskit.context import Context

from migrate.db_fold_workflow import (KEPT_WORKFLOW_TABLE, ORPHANS_DELETE, ORPHANS_REFUSE, PHASES, FoldOptions,
                                      FoldPlan, LockPolicy, fold_workflows, plan_fold, rollback_fold)
from migrate.fold import django_migrations

JOB = "db-fold-workflow"


def _print_plan(plan: FoldPlan, database: str, batch_size: int, out) -> None:
    counts = plan.counts
    echo = lambda text="": click.echo(text, file=out)  # noqa: E731
    if not plan.pending_steps():
        echo(f"{database}: schema {plan.state}; nothing to do.")
        return
    echo(f"Plan for {database}: schema {plan.state}; {counts.get('workflows', 0)} workflows, "
         f"{counts.get('processes', 0)} processes ({counts.get('processes_never_started', 0)} never started), "
         f"{counts.get('tasks', 0)} tasks; batches of {batch_size} rows.")
    for number, step in enumerate(plan.steps, 1):
        rows = f", {step.rows} rows" if step.rows else ""
        echo(f"{number:>3}. {step.step}  [{'to do' if step.pending else 'already done'}{rows}]")
        if step.pending:
            for statement in step.sql:
                echo("       " + "\n       ".join(statement.rstrip(";").splitlines()) + ";")
    echo("Dry run: nothing changed.")


@click.command(JOB)
@dsn_option
@click.option("--batch-size", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Rows per backfill batch; each batch is one short transaction.")
@expert_option("--lock-timeout", envvar="PONOS_LOCK_TIMEOUT", type=Duration(positive=True), default="500ms",
               show_default=True, metavar="DURATION",
              help="How long one DDL attempt may wait for a lock the application's queries would queue behind.")
@expert_option("--lock-retries", envvar="PONOS_LOCK_RETRIES", type=click.IntRange(min=1), default=20, show_default=True,
              help="Attempts per DDL statement before giving up (exit 1; a re-run resumes).")
@click.option("--keep-workflow-table", is_flag=True,
              help=f"Rename ponos_workflow to {KEPT_WORKFLOW_TABLE} (with a process_id column) instead of "
                   "dropping it, for a rollback window.")
@click.option("--orphan-workflows", "orphans", type=click.Choice([ORPHANS_REFUSE, ORPHANS_DELETE]), default=None,
              help="Workflows no process points at, and their tasks: refuse to fold (ids listed; the default), "
                   "or delete those tasks with their artifacts and parent links (S3 keys listed in the report).")
@click.option("--orphans", "old_orphans", type=click.Choice([ORPHANS_REFUSE, ORPHANS_DELETE]), default=None,
              hidden=True, help="The release before's name of --orphan-workflows (read for one more release; "
                                "`ponos-maint cleanup --orphans` is the orphan objects' sweep).")
@click.option("--phase", type=click.Choice(PHASES), default="all", show_default=True,
              help="expand: everything but the drop (both releases work on it, for a rolling deploy); contract: "
                   "verify and drop the legacy shape (after the deploy; no way back); all: both, in one go.")
@click.option("--rollback", is_flag=True,
              help="Undo the expand (triggers, new columns, indexes, constraints), keeping every row written "
                   "meanwhile in the shape the legacy release reads. Refused after the contract.")
@click.option("--record-django-migration", nargs=2, default=None, metavar="APP NAME",
              help="In the contract's transaction, record the new release's migration as applied in "
                   "django_migrations (refused if the table is missing or the row exists).")
@click.option("--max-replica-lag", type=Duration(), default=None, metavar="DURATION",
              help="Between backfill batches, wait while a streaming replica replays more than this behind "
                   "(pg_stat_replication; needs pg_monitor).")
@expert_option("--pause-file", envvar="PONOS_PAUSE_FILE", type=click.Path(dir_okay=False), default=None,
              help="While this file exists the backfill waits between batches (so does kill -USR1; -USR2 resumes).")
@retry_deadline_option
@run_options
@run_job
def command(dsn, batch_size, lock_timeout, lock_retries, keep_workflow_table, orphans, old_orphans, phase, rollback,
            record_django_migration, max_replica_lag, pause_file, retry_deadline, dry_run, report_path, verbosity,
            quiet, log_format) -> None:
    """Fold workflows into processes, online: the application keeps running.

    \b
    --phase expand   adds process_process.farm_id/started/finished and ponos_task.process_id,
                     keeps both shapes in step with triggers (old and new release at once),
                     copies in batches, builds indexes and constraints without blocking writes,
                     verifies. Undone by --rollback.
    --phase contract verifies, then drops ponos_task.workflow_id, process_process.workflow_id
                     and ponos_workflow. No way back (see the README).
    Resumable: run it again after any interruption. Exit 0 done (or already done), 1 refused or
    failed (see the report), 2 bad usage or configuration, 3 another fold is running, 75 the
    database went away (run again).
    """
    init_logging(verbosity, quiet, log_format)
    if rollback and phase != "all":
        raise click.UsageError("--rollback undoes the expand: give it without --phase")
    report = job_report(JOB, dry_run=dry_run)
    orphans = orphans or old_orphans or ORPHANS_REFUSE
    options = FoldOptions(batch_size=batch_size, keep_workflow_table=keep_workflow_table, orphans=orphans,
                          lock=LockPolicy(timeout=lock_timeout, attempts=lock_retries), phase=phase,
                          django_migration=django_migrations.parse(record_django_migration),
                          max_replica_lag=max_replica_lag, pause_file=pause_file)
    with Context(job=JOB, dsn=dsn, dry_run=dry_run, report=report, progress=progress,
                 s3=S3Settings(retry_deadline=retry_deadline)) as ctx:
        database = describe_dsn(ctx.dsn)
        report.info["database"] = database
        if dry_run:
            plan = plan_fold(ctx, options, rollback=rollback)
            # Keep stdout clean for the JSON report when it goes there.
            _print_plan(plan, database, batch_size, sys.stderr if report_path == "-" else sys.stdout)
            if plan.refusal is not None:
                raise plan.refusal
        elif rollback:
            rollback_fold(ctx, options)
            ctx.log.info("%s: rolled back to the legacy shape", database)
        else:
            fold_workflows(ctx, options)
            if not report.info.get("already_folded"):
                ctx.log.info("%s: %s", database, {"all": "folded", "expand": "expanded",
                                                   "contract": "contracted"}[phase])
