"""``ponos-maint orphans``: delete new-layout objects whose task no longer exists.

Objects can outlive their task: deleted before the outbox existed, by hand, by an old bug. The
sweep walks the top level of each bucket (one entry per task: ``<task>/`` or ``<task>.log``),
asks PostgreSQL which of those tasks exist, a page at a time, and looks inside the entries
whose task is gone. keys.classify decides what each object is: only new-layout objects of
missing tasks, last modified before ``before - grace``, are deleted. Legacy-shaped keys
(``<workflow>/<task>/...``, which the rename may still have to move) and anything unrecognized
are left alone, and counted.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Iterator, Optional

import psycopg
from botocore.exceptions import BotoCoreError, ClientError

from ponoskit import keys, tasks
from ponoskit.errors import FlushError, PonosError, TransientError
from ponoskit.s3.delete import delete_buffer
from ponoskit.s3.listing import iter_pages, iter_top_level, timestamp

from . import preflight
from .cleanup import Outcome

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


def run_orphans(ctx, opts: OrphanOptions) -> Outcome:
    started = time.monotonic()
    cutoff = opts.before - opts.grace
    ctx.report.info.update(orphans_modified_before=cutoff.isoformat(),
                           artifacts_bucket=opts.artifacts_bucket, logs_bucket=opts.logs_bucket)
    passes = keys.bucket_passes(opts.artifacts_bucket, opts.logs_bucket)
    reasons: list[str] = []
    transient = False
    with ctx.advisory_lock(LOCK_KEY, "ponos-maint orphans"):
        preflight.require_folded(ctx.db)
        preflight.check_buckets(ctx, *(p.bucket for p in passes))
        try:
            for bucket_pass in passes:
                with ctx.report.phase("orphans", bucket=bucket_pass.bucket):
                    stopped = sweep_bucket(ctx, bucket_pass.bucket, logs=bucket_pass.logs,
                                           artifacts=bucket_pass.artifacts, cutoff=cutoff, opts=opts,
                                           started=started)
                if stopped:
                    reasons.append(stopped)
                    break
        except psycopg.Error as exc:
            raise preflight.database_error(exc) from None
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
    ctx.log.info("%s %d orphan object(s) (%d bytes); %d newer than the grace period kept; "
                 "%d object(s) under missing tasks not in the new layout left alone",
                 "would delete" if ctx.dry_run else "deleted", c["orphan_objects"], c["orphan_bytes"],
                 c["orphans_within_grace"], c["orphan_scan_not_new_layout"])
    for reason in reasons:
        ctx.log.warning("incomplete: %s", reason)
    return Outcome(not reasons, reasons, transient=transient)


def sweep_bucket(ctx, bucket: str, *, logs: bool, artifacts: bool, cutoff: datetime,
                 opts: OrphanOptions, started: float) -> str:
    deleter = None if ctx.dry_run else delete_buffer(ctx, bucket)
    for entries in _chunks(iter_top_level(ctx.s3, bucket), PAGE):
        if opts.stop is not None and opts.stop.is_set():
            return "stopped by a signal"
        if opts.max_runtime is not None and time.monotonic() - started >= opts.max_runtime:
            return f"--max-runtime ({opts.max_runtime:g}s) reached"
        entry_tasks = {entry: keys.top_level_task(entry) for entry in entries}
        existing = tasks.existing_task_ids(ctx.db, [t for t in entry_tasks.values() if t])
        for entry, task in entry_tasks.items():
            if task is not None and task not in existing:
                sweep_entry(ctx, bucket, entry, deleter, logs=logs, artifacts=artifacts, cutoff=cutoff)
    return ""


def sweep_entry(ctx, bucket: str, entry: str, deleter, *, logs: bool, artifacts: bool,
                cutoff: datetime) -> None:
    """Everything under one top-level entry whose task id is not a task (any more)."""
    for page in iter_pages(ctx.s3, bucket, prefix=entry):
        known = tasks.known_tasks_of_keys(ctx.db, (obj.key for obj in page))
        for obj in page:
            found = keys.classify(obj.key, known, logs=logs, artifacts=artifacts)
            if not found.is_new or found.task_id in known:
                ctx.report.count("orphan_scan_not_new_layout")
            elif timestamp(obj.last_modified) >= cutoff:
                ctx.report.count("orphans_within_grace")
            else:
                ctx.report.count("orphan_objects")
                ctx.report.count("orphan_bytes", obj.size)
                if deleter is not None:
                    deleter.fire_forget(obj.key)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
