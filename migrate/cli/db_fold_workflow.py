"""``ponos-migrate db-fold-workflow``: the command over :mod:`migrate.db_fold_workflow`."""

from __future__ import annotations

import sys

import click

from ponoskit.cli import (EXIT_OK, dsn_option, init_logging, parse_duration, progress, run_job, run_options,
                          writing_report)
from ponoskit.connections import describe_dsn
from ponoskit.context import Context
from ponoskit.errors import ConfigError
from ponoskit.report import Report

from migrate.db_fold_workflow import (KEPT_WORKFLOW_TABLE, ORPHANS_DELETE, ORPHANS_REFUSE, FoldOptions, FoldPlan,
                                      LockPolicy, fold_workflows, plan_fold)

JOB = "db-fold-workflow"


def _seconds(ctx, param, value: str) -> float:
    try:
        seconds = parse_duration("--lock-timeout", value)
    except ConfigError:
        seconds = None
    if not seconds or seconds <= 0:
        raise click.BadParameter("a positive duration such as 500ms, 2s or 1.5 (seconds)")
    return seconds


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
        echo(f"{number:>3}. {step.phase}  [{'to do' if step.pending else 'already done'}{rows}]")
        if step.pending:
            for statement in step.sql:
                echo("       " + "\n       ".join(statement.rstrip(";").splitlines()) + ";")
    echo("Dry run: nothing changed.")


@click.command(JOB)
@dsn_option
@click.option("--batch-size", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Rows per backfill batch; each batch is one short transaction.")
@click.option("--lock-timeout", default="500ms", show_default=True, callback=_seconds, metavar="DURATION",
              help="How long one DDL attempt may wait for a lock the application's queries would queue behind.")
@click.option("--lock-retries", type=click.IntRange(min=1), default=20, show_default=True,
              help="Attempts per DDL statement before giving up (exit 1; a re-run resumes).")
@click.option("--keep-workflow-table", is_flag=True,
              help=f"Rename ponos_workflow to {KEPT_WORKFLOW_TABLE} (with a process_id column) instead of "
                   "dropping it, for a rollback window.")
@click.option("--orphans", type=click.Choice([ORPHANS_REFUSE, ORPHANS_DELETE]), default=ORPHANS_REFUSE,
              show_default=True,
              help="Workflows no process points at, and their tasks: refuse to fold (ids listed), or delete "
                   "those tasks with their artifacts and parent links (S3 keys listed in the report).")
@run_options
@run_job
def command(dsn, batch_size, lock_timeout, lock_retries, keep_workflow_table, orphans, dry_run, report_path,
            verbosity, quiet, log_format) -> int:
    """Fold workflows into processes, online: the application keeps running.

    \b
    Adds process_process.farm_id/started/finished and ponos_task.process_id, copies them in
    batches, builds indexes and constraints without blocking writes, verifies, then drops
    ponos_task.workflow_id, process_process.workflow_id and ponos_workflow.
    Resumable: run it again after any interruption. Exit 0 done (or already done), 1 refused or
    failed (see the report), 2 bad usage or configuration, 3 another fold is running.
    """
    init_logging(verbosity, quiet, log_format)
    report = Report(JOB, dry_run=dry_run)
    options = FoldOptions(batch_size=batch_size, keep_workflow_table=keep_workflow_table, orphans=orphans,
                          lock=LockPolicy(timeout=lock_timeout, attempts=lock_retries))
    with writing_report(report, report_path):
        with Context(job=JOB, dsn=dsn, dry_run=dry_run, report=report) as ctx:
            database = describe_dsn(ctx.dsn)
            report.info["database"] = database
            if dry_run:
                plan = plan_fold(ctx, options)
                # Keep stdout clean for the JSON report when it goes there.
                _print_plan(plan, database, batch_size, sys.stderr if report_path == "-" else sys.stdout)
                if plan.refusal is not None:
                    raise plan.refusal
            else:
                fold_workflows(ctx, options, progress=progress)
                if not report.info.get("already_folded"):
                    ctx.log.info("%s: folded", database)
    return EXIT_OK
