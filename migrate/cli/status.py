"""``ponos-migrate status``: the command layer over :func:`migrate.status.read_status`."""

from __future__ import annotations

import sys

import click

from ponoskit.cli import bucket_options, dsn_option, init_logging, job_report, output_options, run_job, s3_options
from ponoskit.connections import S3Settings, describe_dsn
from ponoskit.context import Context
from ponoskit.errors import ConfigError
from ponoskit.keys import bucket_passes
from ponoskit.runtime import JobResult, Status

from .. import legacy_estimate, next_step, status_text
from ..status import PHASES, StatusOptions, read_status


def _buckets(artifacts_bucket, logs_bucket) -> tuple[str, str]:
    if not artifacts_bucket or not logs_bucket:  # both: status reports the runbook of the pair
        raise ConfigError("--artifacts-bucket and --logs-bucket are required "
                          "(or PONOS_ARTIFACTS_BUCKET and PONOS_LOGS_BUCKET)")
    return artifacts_bucket, logs_bucket


@click.command("status")
@bucket_options
@s3_options
@dsn_option
@click.option("--sample", type=click.IntRange(1, 100_000), default=200, show_default=True, metavar="N",
              help="Workflows drawn at random; one LIST request (max-keys=1) per workflow and bucket tells "
                   "whether its legacy prefix still holds objects.")
@click.option("--exact", is_flag=True,
              help="List every key instead and count the legacy objects (prints what that costs first).")
@click.option("--expect", type=click.Choice(PHASES), default=None, metavar="PHASE",
              help=f"Exit 0 when the migration is at or past PHASE, 1 otherwise (a deploy pipeline's gate). "
                   f"In order: {', '.join(PHASES)}.")
@output_options
@run_job
def command(artifacts_bucket, logs_bucket, endpoint_url, profile, retry_deadline, dsn, sample, exact, expect,
            report_path, verbosity, quiet, log_format):
    """Where the migration stands, read only, in seconds.

    \b
    Phases, in the zero-downtime runbook's order:
      legacy              nothing folded (expanding: the expand under way;
                          rolled-back: a rollback took it all away again)
      expanded            db-fold-workflow --phase expand done: both releases can run
      copied              s3-rename --phase expand passed in every bucket
      caught-up           a later catch-up (--phase expand again) passed, no legacy task
                          unfinished or written since its check
      contracted-buckets  s3-rename --phase contract passed in every bucket
      contracted          db-fold-workflow --phase contract ran

    Prints the database's phase and steps, each bucket's last rename passes (from the run
    ledger, ponos_toolkit.run), an estimate of the workflows whose legacy prefix still holds
    objects (a random sample, --sample LIST requests per bucket, with its 95% interval;
    --exact counts the objects), the cleanup's last runs and outbox, and the next command of
    the runbook, whole, with what blocks it. Never a secret: the commands find the database
    where this one did (DATABASE_URL, PG*). --report - gives the same as JSON.
    Exit 0; with --expect, 1 when the migration has not reached PHASE; 2 for bad input (a
    missing bucket, no Ponos tables); 75 when S3 or PostgreSQL kept failing.
    """
    init_logging(verbosity, quiet, log_format)
    artifacts, logs = _buckets(artifacts_bucket, logs_bucket)
    report = job_report("status")
    out = sys.stderr if report_path == "-" else sys.stdout
    settings = S3Settings(endpoint_url=endpoint_url, profile=profile, retry_deadline=retry_deadline)
    with Context(job="status", dsn=dsn, s3=settings, report=report) as context:
        report.info.update(connected_to=describe_dsn(context.dsn), endpoint=context.endpoint)
        if exact:
            click.echo(legacy_estimate.exact_cost(context, bucket_passes(artifacts, logs)), file=out)
        found = read_status(context, StatusOptions(artifacts, logs, sample=sample, exact=exact))
    found.next = next_step.next_step(found, next_step.Where(artifacts, logs, endpoint_url, profile))
    report.info.update(status_text.to_dict(found))
    click.echo("\n".join(status_text.lines(found)), file=out)
    if expect and not found.reached(expect):
        click.echo(f"--expect {expect}: the migration is at {found.phase}", err=True)
        return JobResult(Status.LEFT, [f"the migration is at {found.phase}, not yet at {expect}"])
    return JobResult(Status.DONE)
