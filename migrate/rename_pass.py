"""One listing pass over a bucket's key range: classify each key, move the legacy ones.

The pass streams the listing page by page from the checkpoint's low-water mark, asks the
database which UUIDs are tasks (and which still run), classifies each key (ponoskit.keys),
hands each legacy key to the mover (migrate.s3_mover) and keeps and counts the rest. The
destination scan before it notes, where the server would copy over an existing key, which
tasks already have new keys.
"""

from __future__ import annotations

from typing import Iterable, Optional

from ponoskit import keys
from ponoskit.bloom import UUIDBloomFilter
from ponoskit.s3.listing import ObjectInfo, iter_pages
from ponoskit.tasks import UNFINISHED_STATES, legacy_places, task_states_of_keys

from .low_water import LowWaterMark
from .rename_options import PROBLEMS, RenameOptions
from .s3_mover import RESTORE, MoveOutcome, MoveResult, ObjectMover

# Keys left alone can number millions: the report lists the first ones and counts them all.
LISTED_KEYS_LIMIT = 1000
# Objects in flight between the listing and their delete (bounds memory; above the
# 1,000-key delete batch so DeleteObjects requests go out full).
MAX_IN_FLIGHT = 4000


def scan_destinations(context, bucket: str) -> UUIDBloomFilter:
    """Tasks that may already have objects at new keys (``<task>/...`` or ``<task>.log``).

    A full listing, not a delimiter listing: some servers leave out of a delimiter listing a
    folder whose objects all sit deeper, and a check resting on it would overwrite.
    """
    present = UUIDBloomFilter()
    with context.bar(f"scan s3://{bucket}", unit="key") as bar:
        for page in iter_pages(context.s3, bucket, retrier=context.retrier):
            for obj in page:
                task_id = keys.listing_group(obj.key)
                if keys.is_uuid(task_id):
                    present.add(task_id.lower())
            bar.update(len(page))
    return present


def task_states(context, page: Iterable[ObjectInfo]) -> Optional[dict[str, str]]:
    """Task id -> state for the UUIDs of this page (None without a database)."""
    if not context.use_db:
        return None
    return context.with_db("the page's task lookup", lambda db: task_states_of_keys(db, (obj.key for obj in page)))


def needs_check(found: keys.Classified, states: Optional[dict], present: Optional[UUIDBloomFilter]) -> bool:
    """Whether the new key may exist already: its task had new keys when scanned, or may be
    writing them now (unfinished when the run began)."""
    if present is None:
        return False  # the server refuses overwrites by itself
    return found.task_id in present or (states is not None and states.get(found.task_id) in UNFINISHED_STATES)


def move_range(context, bucket_pass: keys.BucketPass, options: RenameOptions, mover: ObjectMover,
               present: Optional[UUIDBloomFilter], mark: LowWaterMark) -> bool:
    """Stream, classify and move this shard's range of one bucket; True when nothing was left."""
    report = context.report
    bar = context.bar(f"move s3://{bucket_pass.bucket}", unit="key")
    try:
        listing = iter_pages(context.s3, bucket_pass.bucket, start_after=mark.state["after"],
                             key_range=options.shard.key_range, retrier=context.retrier)
        restoring = options.mode is RESTORE
        for page in listing:
            page = [obj for obj in page if not keys.is_canary(obj.key)]  # another shard's probe, for a moment
            if not page:
                continue
            states = task_states(context, page)
            places = context.with_db("the page's legacy places",
                                     lambda db: legacy_places(db, states)) if restoring else {}
            futures, decided = [], True
            for obj in page:
                found = keys.classify(obj.key, states, logs=bucket_pass.logs, artifacts=bucket_pass.artifacts)
                target = restore_target(found, places) if restoring else (found.new_key if found.is_legacy else None)
                if target is not None:
                    futures.append(mover.submit(obj, target, check_destination=restoring or
                                                needs_check(found, states, present)))
                else:
                    decided &= record_left_alone(report, found)
            report.count("scanned", len(page))
            if mover.options.bill is not None:
                mover.options.bill.add("LIST")  # the final check's listing of this page (a dry run skips it)
            mark.add(resume_point(page), futures, decided)
            mark.settle(MAX_IN_FLIGHT, lambda result: record(report, result))
            bar.update(len(page))
            bar.set_postfix(moved=report.counts["moved"],
                            problems=sum(report.counts[name] for name in PROBLEMS), refresh=False)
            if options.budget.spent():
                context.log.info("s3://%s: --max-runtime %s reached; stopping after this page",
                                 bucket_pass.bucket, options.budget)
                break
        return mark.finish(lambda result: record(report, result))
    except BaseException:
        context.retrier.stopping.set()  # the run stops: nobody waits out a retry any more
        mark.abandon()
        raise
    finally:
        bar.close()


def restore_target(found: keys.Classified, places: dict) -> Optional[str]:
    """--rollback: the legacy key a new-layout object of a known task goes back to."""
    if not found.is_new or found.task_id not in places:
        return None
    return keys.legacy_key_of(found, *places[found.task_id])


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
    if result.outcome is MoveOutcome.SOURCE_GONE:
        report.add(result.outcome.value, result.key, limit=LISTED_KEYS_LIMIT)
        return True
    report.count(result.outcome.value)
    return True


def record_left_alone(report, found: keys.Classified) -> bool:
    """Count a key the rename keeps; False when it may be legacy but could not be decided."""
    if found.is_new:
        report.count("new_layout")
    elif found.is_legacy:
        report.count("legacy_layout")  # --rollback: the legacy keys stay where they are
    elif found.kind is keys.KeyKind.UNDECIDED:
        report.add("undecided", found.key, limit=LISTED_KEYS_LIMIT)
        return False
    elif found.kind is keys.KeyKind.ORPHAN_LEGACY:
        report.add("orphan_legacy", found.key, limit=LISTED_KEYS_LIMIT)
    else:
        report.add("unrecognized", found.key, limit=LISTED_KEYS_LIMIT)
    return True
