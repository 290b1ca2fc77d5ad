"""``ponos-maint``: the recurring maintenance jobs (cron, systemd timers, Kubernetes CronJobs).

Exit codes: 0 everything due was done; 1 the run did part of it (see the report; run again);
2 bad usage or configuration, nothing changed; 3 another run holds the lock; 75 S3 or
PostgreSQL kept failing (transient: run again later, what is owed waits in the outbox).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone
from typing import Callable, Optional

import click

from ponoskit.cli import (bucket_options, console_entry, dsn_option, expert_option, init_logging, on_sigterm,
                          parse_duration, prices_option, progress, remember_report, run_job, run_options, s3_options)
from ponoskit.connections import S3Settings, redact
from ponoskit.context import Context
from ponoskit.errors import ConfigError, FlushError
from ponoskit.runtime import JobResult, Status
from ponoskit.s3.bill import parse_prices

from .cleanup import CleanupOptions, run_cleanup
from .orphans import OrphanOptions, run_orphans

def parse_before(value: Optional[str], *, allow_future: bool = False) -> datetime:
    """An ISO 8601 timestamp (UTC when it has no offset); now when absent. A moment in the
    future would treat what has not expired yet as expired: refused unless ``allow_future``."""
    if value is None:
        return datetime.now(timezone.utc)
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(f"--before: {value!r} is not an ISO 8601 timestamp "
                          "(example: 2024-05-01T00:00:00Z)") from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    if moment > datetime.now(timezone.utc):
        if not allow_future:
            raise ConfigError(f"--before {moment.isoformat()} is in the future: tasks and objects that have not "
                              "expired yet would count as expired; give --allow-future-before if you mean it")
        logging.getLogger("ponos").warning(
            "--before %s is in the future: what expires before then counts as expired", moment.isoformat())
    return moment


def _buckets(artifacts: Optional[str], logs: Optional[str]) -> tuple[str, str]:
    if not artifacts or not logs:
        raise ConfigError("--artifacts-bucket and --logs-bucket are required "
                          "(or PONOS_ARTIFACTS_BUCKET and PONOS_LOGS_BUCKET)")
    return artifacts, logs


def _execute(ctx: Context, job: Callable[[], JobResult], stop: threading.Event) -> JobResult:
    """Run the job; what the buffers could not flush at the end is left for the next run."""
    try:
        with on_sigterm(lambda *_: stop.set()):  # stops it between batches
            result = job()
        try:
            ctx.close()
        except FlushError as err:
            ctx.report.error(redact(str(err)))
            result = JobResult(Status.LEFT, [*result.reasons, redact(str(err))])
        return result
    finally:
        try:
            ctx.close()
        except FlushError:
            pass  # already recorded above, or the job failed for another reason first


def common_options(f):
    for decorate in (run_options, bucket_options, s3_options, dsn_option):
        f = decorate(f)
    f = expert_option("--s3-max-attempts", envvar="PONOS_S3_MAX_ATTEMPTS", type=click.IntRange(1, 100), default=10, show_default=True,
                     help="Attempts per S3 request (botocore retries with backoff) before the run "
                          "gives up on S3; lower it to fail fast.")(f)
    f = expert_option("--before", envvar="PONOS_BEFORE", default=None, metavar="TIMESTAMP",
                      help="ISO 8601 timestamp used instead of now (UTC when it has no offset); "
                           "a moment in the future is refused (exit 2) without --allow-future-before.")(f)
    f = expert_option("--allow-future-before", envvar="PONOS_ALLOW_FUTURE_BEFORE", is_flag=True,
                     help="Accept a --before in the future: what expires before then counts as expired "
                          "already (tests, rehearsals).")(f)
    f = click.option("--max-runtime", default=None, metavar="DURATION",
                     help="Stop cleanly between batches after this long (600, 10m, 1h); "
                          "keep it below the schedule period so runs never pile up.")(f)
    f = click.option("--max-rps", type=click.FloatRange(0, min_open=True), default=None, metavar="N",
                     help="At most N S3 requests per second (listings, deletes), for buckets that "
                          "production traffic also uses; default: no ceiling (throttling still slows "
                          "the run down).")(f)
    f = prices_option(f)
    return f


def _context(job: str, dsn, endpoint_url, profile, s3_max_attempts, retry_deadline, dry_run,
             max_rps=None) -> Context:
    ctx = Context(job=job, dsn=dsn, dry_run=dry_run, progress=progress,
                  s3=S3Settings(endpoint_url=endpoint_url, profile=profile, max_attempts=s3_max_attempts,
                                retry_deadline=retry_deadline, max_rps=max_rps))
    remember_report(ctx.report)
    return ctx


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ponos-toolkit")
def main() -> None:
    """Recurring maintenance of Ponos data in PostgreSQL and S3 (folded schema).

    \b
    Exit codes: 0 done; 1 part left (run again, see --report);
                2 bad usage or configuration, nothing changed; 3 another run holds the lock;
                75 S3 or PostgreSQL kept failing: run again later.
    """


@main.command()
@common_options
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=1000, show_default=True,
              help="Tasks per transaction.")
@click.option("--orphans", "with_orphans", is_flag=True,
              help="After the cleanup, sweep objects whose task no longer exists (see `orphans`).")
@click.option("--grace", default="7d", show_default=True, metavar="DURATION",
              help="With --orphans: only objects last modified longer ago than this.")
@click.option("--retry-set-aside", is_flag=True,
              help="Retry the outbox targets set aside after repeated S3 refusals (once their cause is fixed).")
@click.option("--max-tasks", type=click.IntRange(1), default=None, metavar="N",
              help="Delete at most N tasks this run (the first runs on a large backlog); if due tasks are "
                   "left, the report says how many and the exit code is 1.")
@expert_option("--list-prefixes", envvar="PONOS_LIST_PREFIXES", is_flag=True,
               help="List each task's artifacts prefix and delete what it holds, objects without a row "
                    "included (one LIST per task or group of tasks), instead of deleting the keys its rows "
                    "name (no listing).")
@run_job
def cleanup(dsn, endpoint_url, profile, retry_deadline, artifacts_bucket, logs_bucket, dry_run, report_path,
            verbosity, quiet, log_format, s3_max_attempts, before, allow_future_before, max_runtime, max_rps,
            prices, batch_size, with_orphans, grace, retry_set_aside, max_tasks, list_prefixes):
    """Delete the tasks of expired processes with their rows and their S3 files.

    A process is expired when it has tasks and all of them expired before now (PONOS_BEFORE
    in a rehearsal). Its tasks go with their artifact rows and parent links; a GPU is released; the
    process, its worker runs and activities stay. A process with an unfinished task is left
    alone and reported. S3 objects go after the commit; what S3 could not delete waits in the
    ponos_cleanup_outbox table and goes first on the next run.

    The S3 files deleted are the keys the database names (each artifact row's key and the
    task's log), without listing the bucket. An object under a task's prefix without a row is
    left to the orphan sweep (`ponos-maint orphans`, or --orphans), or PONOS_LIST_PREFIXES.
    The S3 files of the tasks `ponos-migrate db-fold-workflow --orphan-workflows delete` deleted (at
    their legacy keys) are deleted too. Before any change the run checks it may list and
    delete in both buckets (a canary under .ponos-toolkit-canary/); a dry run only lists,
    and reports the S3 requests the real run would make with their estimated cost.
    """
    init_logging(verbosity, quiet, log_format)
    artifacts, logs = _buckets(artifacts_bucket, logs_bucket)
    moment = parse_before(before, allow_future=allow_future_before)
    # Read here, not by click: a bad value is the one-line error of every ConfigError (exit 2).
    seconds = parse_duration("--max-runtime", max_runtime)
    grace_period = timedelta(seconds=parse_duration("--grace", grace))
    price_list = parse_prices(prices)
    stop = threading.Event()
    ctx = _context("cleanup", dsn, endpoint_url, profile, s3_max_attempts, retry_deadline, dry_run, max_rps)

    def job() -> JobResult:
        outcome = run_cleanup(ctx, CleanupOptions(artifacts, logs, moment, batch_size=batch_size,
                                                  max_runtime=seconds, stop=stop, retry_set_aside=retry_set_aside,
                                                  max_tasks=max_tasks, list_prefixes=list_prefixes,
                                                  prices=price_list))
        if not with_orphans or not outcome.done:
            return outcome
        return run_orphans(ctx, OrphanOptions(artifacts, logs, moment, grace_period,
                                              max_runtime=seconds, stop=stop, prices=price_list))

    return _execute(ctx, job, stop)


@main.command()
@common_options
@click.option("--grace", default="7d", show_default=True, metavar="DURATION",
              help="Only objects last modified longer ago than this (before --before).")
@run_job
def orphans(dsn, endpoint_url, profile, retry_deadline, artifacts_bucket, logs_bucket, dry_run, report_path,
            verbosity, quiet, log_format, s3_max_attempts, before, allow_future_before, max_runtime, max_rps,
            prices, grace):
    """Delete objects whose task no longer exists, in the new or the legacy layout.

    New layout: <task>/..., <task>.log; legacy layout: <workflow>/<task>/...,
    <workflow>/run_<N>/<task>.log, once their task is gone (the rename never moves those).
    A key whose task exists is never touched, nor an unrecognized key. Only objects older
    than --grace are deleted. Before any change the run checks it may list and delete in the
    buckets (a canary); a dry run only lists, and reports the S3 requests the real run would
    make with their estimated cost. Run it with --dry-run first.
    """
    init_logging(verbosity, quiet, log_format)
    artifacts, logs = _buckets(artifacts_bucket, logs_bucket)
    moment = parse_before(before, allow_future=allow_future_before)
    # Read here, not by click: a bad value is the one-line error of every ConfigError (exit 2).
    seconds = parse_duration("--max-runtime", max_runtime)
    grace_period = timedelta(seconds=parse_duration("--grace", grace))
    price_list = parse_prices(prices)
    stop = threading.Event()
    ctx = _context("orphans", dsn, endpoint_url, profile, s3_max_attempts, retry_deadline, dry_run, max_rps)
    return _execute(ctx, lambda: run_orphans(
        ctx, OrphanOptions(artifacts, logs, moment, grace_period, max_runtime=seconds, stop=stop,
                           prices=price_list)), stop)


if __name__ == "__main__":
    main()


# The console script (pyproject.toml): process tuning, then the group.
entry = console_entry(main)
