"""``ponos-migrate s3-rename``: the command layer over :func:`migrate.s3_rename.rename`."""

from __future__ import annotations

import click

from ponoskit.budget import RuntimeBudget
from ponoskit.cli import (ByteSize, Duration, bucket_options, dsn_option, expert_option, init_logging,
                          job_report, prices_option, progress, run_job, run_options, s3_options)
from ponoskit.connections import S3Settings, describe_dsn
from ponoskit.context import Context
from ponoskit.s3.bill import parse_prices
from ponoskit.shard import Shard

from ..s3_mover import INSPECT_ALWAYS, INSPECT_AUTO
from ..rename_options import OLD_PHASE_WORDS
from ..s3_rename import ALL, PHASES, PROBLEMS, ROLLBACK, RenameOptions, rename


class PhaseChoice(click.Choice):
    """The phases; the words of the release before (copy, delete) are still read, for one release."""

    def convert(self, value, param, ctx):
        if value in OLD_PHASE_WORDS:
            click.echo(f"Note: --phase {value} is now --phase {OLD_PHASE_WORDS[value]} (the database's word for "
                       "the same step); the old word goes in the next release.", err=True)
            value = OLD_PHASE_WORDS[value]
        return super().convert(value, param, ctx)


@click.command("s3-rename")
@bucket_options
@s3_options
@dsn_option
@click.option("--no-db", is_flag=True,
              help="Classify keys by shape alone; keys that may be either layout are reported, not moved.")
@click.option("--workers", type=click.IntRange(1, 1024), default=64, show_default=True,
              help="Copies in flight at most (fewer while S3 throttles: the window adapts).")
@click.option("--max-rps", type=click.FloatRange(min=0.1), default=None, metavar="N",
              help="At most N S3 requests per second, all workers together (a bucket production also uses).")
@expert_option("--multipart-threshold", envvar="PONOS_MULTIPART_THRESHOLD", type=ByteSize(), default="1GiB", show_default=True,
              help="Objects larger than this are copied in parallel parts (UploadPartCopy).")
@expert_option("--part-size", envvar="PONOS_PART_SIZE", type=ByteSize(), default="256MiB", show_default=True,
              help="Part size of multipart copies (at least 5MiB; grows to stay within 10,000 parts).")
@expert_option("--inspect-sources", envvar="PONOS_INSPECT_SOURCES", type=click.Choice([INSPECT_AUTO, INSPECT_ALWAYS]), default=INSPECT_AUTO,
              show_default=True,
              help="HEAD every source before copying it, to keep its own SSE-KMS key: 'auto' does when the "
                   "bucket's default encryption is KMS (or unreadable), 'always' everywhere.")
@expert_option("--compare-read-limit", envvar="PONOS_COMPARE_READ_LIMIT", type=ByteSize(), default="64MiB", show_default=True,
              help="A key already at its new key is compared by checksum or MD5 ETag; without either, objects "
                   "up to this size are read and compared, larger ones are conflicts.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Progress file: a killed run resumes from it. One per shard.")
@click.option("--shard", default=None, metavar="I/N",
              help="Handle the I-th of N disjoint key ranges (0-based), e.g. a Kubernetes Indexed Job.")
@click.option("--phase", type=PhaseChoice(PHASES), default=ALL, show_default=True,
              help="expand: copy every legacy object to its new key and keep it (both releases find it; run again "
                   "to catch up); contract: move what is left and delete each source whose copy is the same; "
                   "all: move everything now (expand + contract). The database's words: the same runbook.")
@click.option("--max-runtime", type=Duration(), default=None, metavar="DURATION",
              help="Stop cleanly at a page boundary after this long (8h, 30m), the checkpoint saved, exit 75: "
                   "run the same command again to go on (a huge bucket over several nights). Needs --checkpoint.")
@prices_option
@click.option("--rollback", is_flag=True,
              help="Before the fold's contract: copy what the new release wrote at new keys to the legacy keys "
                   "its tasks map to, and remove copies identical to their legacy object.")
@run_options
@run_job
def command(artifacts_bucket, logs_bucket, endpoint_url, profile, retry_deadline, dsn, no_db, workers, max_rps,
            multipart_threshold, part_size, inspect_sources, compare_read_limit, checkpoint, shard, phase, max_runtime,
            prices, rollback, dry_run, report_path, verbosity, quiet, log_format):
    """Move legacy artifacts and logs to their new keys, server-side.

    \b
    artifacts: <workflow>/<task>/<path>          -> <task>/<path>
    logs:      <workflow>/run_<N>/<task>.log     -> <task>.log

    The task table decides which keys are legacy, so the rename runs before or after the
    fold. Nothing is ever overwritten: a key already at its new key with the same content
    finishes a half-done move, other content is a conflict (both kept). Storage class,
    encryption, tags and headers are kept. Exit 0 when a final check found no legacy key in
    scope left, 1 when some are (conflicts, failures, archived: see the report), 2 for bad
    usage or configuration (nothing changed), 75 when S3 or PostgreSQL kept failing (run again).
    """
    init_logging(verbosity, quiet, log_format)
    if rollback and phase != ALL:
        raise click.UsageError("--rollback undoes the copy: give it without --phase")
    if max_runtime is not None and not checkpoint and not dry_run:
        raise click.UsageError("--max-runtime needs --checkpoint: the next run resumes from it")
    options = RenameOptions(phase=ROLLBACK if rollback else phase, artifacts_bucket=artifacts_bucket,
                            logs_bucket=logs_bucket, workers=workers,
                            multipart_threshold=multipart_threshold, part_size=part_size,
                            read_limit=compare_read_limit, inspect=inspect_sources,
                            checkpoint=checkpoint, shard=Shard.parse(shard),
                            budget=RuntimeBudget(max_runtime), prices=parse_prices(prices))
    report = job_report("s3-rename", dry_run=dry_run)
    settings = S3Settings(endpoint_url=endpoint_url, profile=profile, max_pool_connections=max(64, 2 * workers),
                          concurrency=workers, max_rps=max_rps, retry_deadline=retry_deadline)
    with Context(job="s3-rename", dsn=dsn, use_db=not no_db, s3=settings, dry_run=dry_run,
                 report=report, progress=progress) as context:
        if context.use_db:
            report.info["database"] = describe_dsn(context.dsn)
        report.info["endpoint"] = context.endpoint
        result = rename(context, options)
        summarize(context)
    return result


def summarize(context) -> None:
    counts = context.report.counts
    names = ("would_move", "would_complete") if context.dry_run else (
        "moved", "already_moved", "copied", "already_copied", "restored", "copies_removed")
    names += (*PROBLEMS, "orphan_legacy", "unrecognized", "new_layout", "source_gone", "scanned")
    context.log.info("s3-rename%s: %s", " (dry run)" if context.dry_run else "",
                     ", ".join(f"{name} {counts[name]}" for name in names))
