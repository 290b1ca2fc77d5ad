"""The S3 key rename: every legacy artifact and log moves to its new key.

Runbook, per bucket (the artifacts bucket, then the logs bucket; once when they are one):
  1. Preflight, before any change: buckets reachable, database reachable and holding
     ``ponos_task`` (unless --no-db), checkpoint readable and of this run.
  2. Scan destinations: note, in a fixed-size filter, every task that already has objects at
     new keys, so a move checks its destination only when one may exist.
  3. Move: stream the listing of this shard's key range from the checkpoint on, page by page;
     ask the database which UUIDs are task ids; classify each key (ponoskit.keys); move each
     legacy key (copy, then batched delete); keep the rest and count it.
  4. Checkpoint: a key is passed once every key before it is done; that low-water mark is
     saved atomically about once a second, so a killed run resumes from it. Past a conflict or
     failure the mark stops, so a re-run looks at those keys again.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Iterable, Optional

from ponoskit import keys
from ponoskit.bloom import UUIDBloomFilter
from ponoskit.checkpoint import Checkpoint
from ponoskit.cli import progress
from ponoskit.connections import check_bucket
from ponoskit.errors import ConfigError
from ponoskit.s3.copy import COPY_OBJECT_LIMIT
from ponoskit.s3.listing import ObjectInfo, iter_pages, iter_top_level
from ponoskit.schema import table_exists
from ponoskit.shard import Shard
from ponoskit.tasks import known_tasks_of_keys

from .s3_mover import MoveResult, ObjectMover

# Keys left alone can number millions: the report lists the first ones and counts them all.
LISTED_KEYS_LIMIT = 1000
# Objects in flight between the listing and their delete (bounds memory; above the
# 1,000-key delete batch so DeleteObjects requests go out full).
MAX_IN_FLIGHT = 4000


@dataclass
class RenameOptions:
    artifacts_bucket: Optional[str] = None
    logs_bucket: Optional[str] = None
    workers: int = 64
    multipart_threshold: int = COPY_OBJECT_LIMIT
    part_size: int = 256 * 1024 ** 2
    checkpoint: Optional[str] = None
    shard: Shard = field(default_factory=Shard)


def rename(context, options: RenameOptions) -> bool:
    """Run the rename; True when every legacy key in scope is at its new key (exit 0)."""
    passes = keys.bucket_passes(options.artifacts_bucket, options.logs_bucket)
    report = context.report
    report.info.update(buckets=[p.bucket for p in passes], shard=str(options.shard),
                       use_db=context.use_db, workers=options.workers,
                       multipart_threshold=options.multipart_threshold)
    checkpoint = Checkpoint(options.checkpoint, {
        "job": "s3-rename", "buckets": [p.bucket for p in passes], "shard": str(options.shard),
        "use_db": context.use_db})
    with report.phase("preflight"):
        state = preflight(context, passes, checkpoint)
    saver = None
    if options.checkpoint and not context.dry_run:
        saver = context.buffer("checkpoint", lambda states: checkpoint.save(states[-1]),
                               max_size=10_000, interval=1.0)
    for bucket_pass in passes:
        progress_state = state.setdefault(bucket_pass.bucket, {"after": None, "complete": False})
        if progress_state["complete"]:
            context.log.info("s3://%s: complete according to the checkpoint, skipped", bucket_pass.bucket)
            report.add("skipped_buckets", bucket_pass.bucket)
            continue
        with report.phase("scan_destinations", bucket=bucket_pass.bucket) as phase:
            present = scan_destinations(context, bucket_pass.bucket)
            phase["tasks_with_new_keys"] = present.added
        with report.phase("move", bucket=bucket_pass.bucket) as phase:
            clean = move_bucket(context, bucket_pass, options, present, progress_state,
                                lambda: saver and saver.fire_forget(_snapshot(state)))
            phase["clean"] = clean
        if saver:
            saver.fire_and_wait(_snapshot(state))
    undone = sum(report.counts[name] for name in ("conflicts", "failed", "undecided"))
    return undone == 0


def _snapshot(state: dict) -> dict:
    return {bucket: dict(values) for bucket, values in state.items()}


def preflight(context, passes: list[keys.BucketPass], checkpoint: Checkpoint) -> dict:
    """Check everything that could make the run fail before anything changes."""
    state = checkpoint.load()
    if context.use_db and not table_exists(context.db, "ponos_task"):
        raise ConfigError("the database has no ponos_task table: is --dsn the Arkindex database?")
    for bucket_pass in passes:
        check_bucket(context.s3, bucket_pass.bucket)
    return state


def scan_destinations(context, bucket: str) -> UUIDBloomFilter:
    """Tasks that may already have objects at new keys (``<task>/`` or ``<task>.log``)."""
    present = UUIDBloomFilter()
    with progress(desc=f"scan s3://{bucket}", unit="entry") as bar:
        for entry in iter_top_level(context.s3, bucket):
            task_id = keys.top_level_task(entry)
            if task_id:
                present.add(task_id)
            bar.update()
    return present


def known_tasks(context, page: Iterable[ObjectInfo]) -> Optional[set[str]]:
    """Which UUIDs of this page are task ids (None without a database)."""
    return known_tasks_of_keys(context.db, (obj.key for obj in page)) if context.use_db else None


def move_bucket(context, bucket_pass: keys.BucketPass, options: RenameOptions, present: UUIDBloomFilter,
                progress_state: dict, save) -> bool:
    """Stream, classify and move one bucket's shard; True when nothing was left behind."""
    report, shard = context.report, options.shard
    pages: deque[tuple[Optional[str], list[Future], bool]] = deque()
    in_flight = 0
    clean = True

    def settle(limit: int) -> None:
        """Record finished pages in key order until at most ``limit`` objects are in flight."""
        nonlocal in_flight, clean
        while pages:
            last_key, futures, decided = pages[0]
            if in_flight > limit:
                # A page leaves the window whole, in key order: wait for all of it at once
                # (waiting for the first of 1,000 futures again and again cost O(n^2)).
                wait(futures)
            elif not all(f.done() for f in futures):
                return
            pages.popleft()
            in_flight -= len(futures)
            clean &= decided
            for future in futures:
                clean &= record(report, future.result())
            # Past a conflict or failure, the mark stays so a re-run sees it again.
            if clean and last_key is not None:
                progress_state["after"] = last_key
                save()

    with ObjectMover(context, bucket_pass.bucket, workers=options.workers, dry_run=context.dry_run,
                     multipart_threshold=options.multipart_threshold, part_size=options.part_size) as mover, \
            progress(desc=f"move s3://{bucket_pass.bucket}", unit="key") as bar:
        listing = iter_pages(context.s3, bucket_pass.bucket, start_after=progress_state["after"],
                             start_at=shard.start, end_before=shard.end)
        for page in listing:
            tasks = known_tasks(context, page)
            futures, decided = [], True
            for obj in page:
                found = keys.classify(obj.key, tasks, logs=bucket_pass.logs, artifacts=bucket_pass.artifacts)
                if found.is_legacy:
                    futures.append(mover.submit(obj, found.new_key, check_destination=found.task_id in present))
                else:
                    decided &= record_left_alone(report, found)
            report.count("scanned", len(page))
            pages.append((resume_point(page), futures, decided))
            in_flight += len(futures)
            settle(MAX_IN_FLIGHT)
            bar.update(len(page))
            bar.set_postfix(moved=report.counts["moved"], problems=report.counts["conflicts"] + report.counts["failed"],
                            refresh=False)
        settle(0)
    progress_state["complete"] = clean
    save()
    return clean


def resume_point(page: list[ObjectInfo]) -> Optional[str]:
    """The key to resume after once this page is done: its last key that is not a folder
    marker (None when it has none: the mark then stays where it was).

    Some servers (SeaweedFS) list a folder's keys as a tree and take ``StartAfter=<folder>/`` as
    "after the whole folder": resuming there would skip the keys inside it.
    """
    for obj in reversed(page):
        if not obj.key.endswith("/"):
            return obj.key
    return None


def record(report, result: MoveResult) -> bool:
    """Count one move; problems are listed whole (they are what exit 1 is about)."""
    if result.outcome.is_problem:
        report.add(result.outcome.value, {"key": result.key, "new_key": result.new_key, "reason": result.detail})
        return False
    report.count(result.outcome.value)
    return True


def record_left_alone(report, found: keys.Classified) -> bool:
    """Count a key the rename keeps; False when it may be legacy but could not be decided."""
    if found.is_new:
        report.count("new_layout")
    elif found.kind is keys.Kind.UNDECIDED:
        report.add("undecided", found.key, limit=LISTED_KEYS_LIMIT)
        return False
    elif found.kind is keys.Kind.ORPHAN_LEGACY:
        report.add("orphan_legacy", found.key, limit=LISTED_KEYS_LIMIT)
    else:
        report.add("unrecognized", found.key, limit=LISTED_KEYS_LIMIT)
    return True
