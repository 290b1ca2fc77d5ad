"""``ponos-maint orphans``: delete objects whose task no longer exists, in either layout.

Objects can outlive their task: deleted before the outbox existed, by hand, by an old bug, a
file without an artifact row (the cleanup deletes the keys rows name), or a legacy key the
rename never moved because its task was gone. The sweep walks the top level of each bucket
(one entry per task: ``<task>/`` or ``<task>.log``; per workflow for legacy keys), asks
PostgreSQL which of those ids are tasks, a page at a time, and looks inside the entries that
are not. keys.classify decides what each object is: new-layout objects of missing tasks and
legacy-shaped keys of missing tasks (``orphan_legacy``, as the rename reports them), last
modified before ``before - grace``, are deleted. A key whose task exists (a legacy key the
rename may still move) and anything unrecognized are left alone, and counted.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Iterator, Optional

import psycopg
from botocore.exceptions import BotoCoreError, ClientError

from ponoskit import keys, tasks
from ponoskit.budget import RuntimeBudget, why_stop
from ponoskit.runtime import JobResult, database_error
from ponoskit.errors import FlushError, PonosError, TransientError
from ponoskit.s3.bill import RequestCounter, merged
from ponoskit.s3.delete import delete_buffer
from ponoskit.s3.listing import iter_pages, iter_top_level, timestamp

from . import billing, preflight

LOCK_KEY = preflight.lock_key("ponos-maint orphans")
PAGE = 1000


@dataclass
class OrphanOptions:
    artifacts_bucket: str
    logs_bucket: str
    before: datetime
    grace: timedelta
    max_runtime: Optional[float] = None
    stop: Optional[threading.Event] = None
    prices: Optional[dict] = None  # USD per 1,000 requests for the dry run's bill (ponoskit.s3.bill)


def run_orphans(ctx, opts: OrphanOptions) -> JobResult:
    with RequestCounter(ctx.s3) as requests:
        return _sweep(ctx, opts, requests)


def _sweep(ctx, opts: OrphanOptions, requests: RequestCounter) -> JobResult:
    budget = RuntimeBudget(opts.max_runtime)
    cutoff = opts.before - opts.grace
    ctx.report.info.update(orphans_modified_before=cutoff.isoformat(),
                           artifacts_bucket=opts.artifacts_bucket, logs_bucket=opts.logs_bucket)
    ctx.report.expect("orphan_objects_scanned")
    passes = keys.bucket_passes(opts.artifacts_bucket, opts.logs_bucket)
    found_before = ctx.report.counts["orphan_objects"]
    reasons: list[str] = []
    transient, stopped = False, ""
    with ctx.advisory_lock(LOCK_KEY, "ponos-maint orphans"):
        preflight.require_folded(ctx.db)
        preflight.check_permissions(ctx, *(p.bucket for p in passes))
        try:
            for bucket_pass in passes:
                with ctx.report.phase("orphans", bucket=bucket_pass.bucket):
                    stopped = sweep_bucket(ctx, bucket_pass.bucket, logs=bucket_pass.logs,
                                           artifacts=bucket_pass.artifacts, cutoff=cutoff, opts=opts,
                                           budget=budget)
                if stopped:
                    reasons.append(stopped)
                    break
        except psycopg.Error as exc:
            raise database_error(exc, "the orphan sweep") from exc
        except (BotoCoreError, ClientError) as exc:
            raise PonosError(f"S3 failed during the orphan sweep, run again: {' '.join(str(exc).split())}") \
                from None
        finally:
            try:
                ctx.drain_buffers()
            except FlushError as err:
                transient = any(isinstance(e, TransientError) for e in err.errors)
                ctx.report.count("orphan_objects_failed", len(err.errors))
                for error in err.errors[:100]:
                    ctx.report.error(f"could not delete orphan: {error}")
                reasons.append(f"{len(err.errors)} orphan object(s) could not be deleted")
    c = ctx.report.counts
    if ctx.dry_run:
        bill = merged(requests.sent(), billing.canary_requests(len(passes)))
        # The delete buffers send 1,000 keys a request (more often when the sweep is slow).
        bill.add("DELETE", billing.delete_requests({"all": c["orphan_objects"] - found_before}))
        total = billing.record(ctx.report, "bill", bill, opts.prices)
        ctx.log.info("a real run: %s", total.summary(opts.prices))
    else:
        billing.record(ctx.report, "s3_requests", requests.sent())
    ctx.log.info("%s %d orphan object(s) (%d bytes; %d of them legacy-shaped keys of missing tasks); "
                 "%d newer than the grace period kept; %d object(s) under ids that are not tasks left alone "
                 "(unrecognized, or a legacy key of an existing task)",
                 "would delete" if ctx.dry_run else "deleted", c["orphan_objects"], c["orphan_bytes"],
                 c["orphan_legacy_objects"], c["orphans_within_grace"], c["orphan_scan_not_new_layout"])
    for reason in reasons:
        ctx.log.warning("incomplete: %s", reason)
    return JobResult.finished(reasons, transient=transient, stopped=stopped,
                              terminated=opts.stop is not None and opts.stop.is_set())


def sweep_bucket(ctx, bucket: str, *, logs: bool, artifacts: bool, cutoff: datetime,
                 opts: OrphanOptions, budget: RuntimeBudget) -> str:
    deleter = None if ctx.dry_run else delete_buffer(ctx, bucket)
    for entries in _chunks(iter_top_level(ctx.s3, bucket, retrier=ctx.retrier), PAGE):
        reason = why_stop(opts.stop, budget)
        if reason:
            return reason
        entry_tasks = {entry: keys.top_level_task(entry) for entry in entries}
        existing = tasks.existing_task_ids(ctx.db, [t for t in entry_tasks.values() if t])
        for entry, task in entry_tasks.items():
            if task is not None and task not in existing:
                sweep_entry(ctx, bucket, entry, deleter, logs=logs, artifacts=artifacts, cutoff=cutoff)
            elif not entry.endswith("/"):
                ctx.report.count("orphan_objects_scanned")  # a top-level object, looked at here only
    return ""


def sweep_entry(ctx, bucket: str, entry: str, deleter, *, logs: bool, artifacts: bool,
                cutoff: datetime) -> None:
    """Everything under one top-level entry whose id is not a task (any more): a missing
    task's prefix or log, or a legacy ``<workflow>/`` folder."""
    for page in iter_pages(ctx.s3, bucket, prefix=entry, retrier=ctx.retrier):
        ctx.report.count("orphan_objects_scanned", len(page))
        known = tasks.known_tasks_of_keys(ctx.db, (obj.key for obj in page))
        for obj in page:
            found = keys.classify(obj.key, known, logs=logs, artifacts=artifacts)
            legacy = found.kind is keys.KeyKind.ORPHAN_LEGACY
            if not (legacy or found.is_new) or found.task_id in known:
                ctx.report.count("orphan_scan_not_new_layout")
            elif timestamp(obj.last_modified) >= cutoff:
                ctx.report.count("orphans_within_grace")
            else:
                ctx.report.count("orphan_objects")
                ctx.report.count("orphan_bytes", obj.size)
                if legacy:
                    ctx.report.count("orphan_legacy_objects")
                if deleter is not None:
                    deleter.fire_forget(obj.key)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
