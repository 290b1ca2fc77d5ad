"""``ponos-migrate verify``: the command layer over :func:`migrate.verify.verify`."""

from __future__ import annotations

import click

from ponoskit.cli import (bucket_options, dsn_option, init_logging, job_report,
                          output_options, progress, run_job, s3_options)
from ponoskit.connections import S3Settings, describe_dsn
from ponoskit.context import Context

from ..verify import PROBLEMS, verify


@click.command("verify")
@bucket_options
@s3_options
@dsn_option
@output_options
@run_job
def command(artifacts_bucket, logs_bucket, endpoint_url, profile, retry_deadline, dsn, report_path, verbosity, quiet,
            log_format):
    """Check that the database and the buckets agree (read only).

    Every artifact row has its object at <task>/<path> with the row's size, and no legacy key
    is left. Finished tasks without a log, orphans (objects of deleted tasks) and keys of
    neither layout are reported but not fatal. One streamed listing per bucket, no HEADs.
    Exit 0 when they agree, 1 when they do not (see the report), 2 for bad usage or configuration,
    75 when S3 or PostgreSQL kept failing (run again).
    """
    init_logging(verbosity, quiet, log_format)
    report = job_report("verify")
    settings = S3Settings(endpoint_url=endpoint_url, profile=profile, retry_deadline=retry_deadline)
    with Context(job="verify", dsn=dsn, s3=settings, report=report, progress=progress) as context:
        report.info.update(database=describe_dsn(context.dsn), endpoint=context.endpoint)
        result = verify(context, artifacts_bucket=artifacts_bucket, logs_bucket=logs_bucket)
        counts = report.counts
        context.log.info("verify: %s", ", ".join(f"{name} {counts[name]}" for name in (
            "artifacts_found", "logs_found", *PROBLEMS, "missing_logs", "orphans", "orphan_legacy", "unindexed_objects",
            "unrecognized", "objects")))
        if not result.done:
            context.log.warning("database and buckets disagree: see the report for the keys")
    return result
