"""The S3 key rename: every legacy artifact and log moves to its new key.

Runbook, per bucket (the artifacts bucket, then the logs bucket; once when they are one):
  1. Preflight, before any change: the database holds ``ponos_task`` (unless --no-db); each
     bucket answers and its server is probed on canaries (conditional copies and deletes,
     obstore's key handling, versioning, default encryption; see ponoskit.s3.capabilities);
     the checkpoint is readable, well-formed and of this run (job, buckets, shard, endpoint,
     database).
  2. Scan destinations, only where the server does not refuse overwrites (and for a dry run):
     a full listing notes, in a fixed-size filter, every task that has objects at new keys.
  3. Move: stream the listing of this shard's key range from the checkpoint on, page by page;
     ask the database which UUIDs are task ids, and which tasks still run; classify each key
     (ponoskit.keys); move each legacy key (migrate.s3_mover); keep and count the rest.
  4. Checkpoint: the low-water mark (migrate.low_water) is saved about once a second; past a
     conflict or failure it stays, so a re-run looks at those keys again. A finished pass
     leaves nothing to skip: the next run starts a new pass.
  5. Final check (migrate.rename_check): legacy keys written behind the listing while the run
     went on (tasks of the legacy release still running) are looked up and moved. Exit 0 means
     this check found nothing in scope left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Optional

import psycopg

from ponoskit import keys
from ponoskit.bloom import UUIDBloomFilter
from ponoskit.budget import RuntimeBudget
from ponoskit.checkpoint import Checkpoint, database_identity
from ponoskit.errors import ConfigError, OutOfTime
from ponoskit.s3.bill import Bill
from ponoskit.s3.copy import DEFAULT_MULTIPART_THRESHOLD
from ponoskit.s3.delete import MAX_KEYS_PER_REQUEST
from ponoskit.s3.listing import ObjectInfo, iter_pages
from ponoskit.runtime import JobResult
from ponoskit.schema import column_exists, table_exists
from ponoskit.shard import Shard
from ponoskit.tasks import UNFINISHED_STATES, legacy_places, task_states_of_keys

from . import rename_check
from .claims import CLAIMS_TABLE, SharedClaims, create_table
from .low_water import LowWaterMark
from .s3_mover import COPY, INSPECT_AUTO, MOVE, RESTORE, Mode, MoveOutcome, MoverOptions, MoveResult, ObjectMover

# Keys left alone can number millions: the report lists the first ones and counts them all.
LISTED_KEYS_LIMIT = 1000
# Objects in flight between the listing and their delete (bounds memory; above the
# 1,000-key delete batch so DeleteObjects requests go out full).
MAX_IN_FLIGHT = 4000
PROBLEMS = ("conflicts", "failed", "undecided", "archived", "legacy_appearing")
ALL, COPY_PHASE, DELETE, ROLLBACK = "all", "copy", "delete", "rollback"
PHASES = (ALL, COPY_PHASE, DELETE)


@dataclass
class RenameOptions:
    artifacts_bucket: Optional[str] = None
    logs_bucket: Optional[str] = None
    workers: int = 64
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD
    part_size: int = 256 * 1024 ** 2
    read_limit: int = 64 * 1024 ** 2
    inspect: str = INSPECT_AUTO
    checkpoint: Optional[str] = None
    shard: Shard = field(default_factory=Shard)
    phase: str = ALL  # all or delete (move), copy (expand the buckets), rollback (restore legacy keys)
    budget: RuntimeBudget = field(default_factory=lambda: RuntimeBudget(None))  # --max-runtime
    prices: Optional[dict] = None  # --dry-run's bill (ponoskit.s3.bill); None: AWS list prices

    @property
    def mode(self) -> Mode:
        return {ALL: MOVE, DELETE: MOVE, COPY_PHASE: COPY, ROLLBACK: RESTORE}[self.phase]


def rename(context, options: RenameOptions) -> JobResult:
    """Run the rename: done when every legacy key in scope is at its new key, else left with
    what is (conflicts, failures...); raises OutOfTime at --max-runtime with the checkpoint saved."""
    passes = keys.bucket_passes(options.artifacts_bucket, options.logs_bucket)
    report = context.report
    report.expect("scanned")
    report.info.update(buckets=[p.bucket for p in passes], shard=str(options.shard),
                       use_db=context.use_db, workers=options.workers, phase=options.phase,
                       multipart_threshold=options.multipart_threshold)
    with report.phase("preflight"):
        checkpoint, state, capabilities = preflight(context, passes, options)
    saver = None
    if options.checkpoint and not context.dry_run:
        saver = context.buffer("checkpoint", lambda states: checkpoint.save(states[-1]),
                               max_size=10_000, interval=1.0)

    def save() -> None:
        if saver is not None:
            saver.fire_forget(_snapshot(state))

    catch_up = start_run(context, state, passes, options)
    bill = Bill() if context.dry_run else None  # the movers fill it (MoverOptions.bill)
    try:
        for bucket_pass in passes:
            bucket_state = state[bucket_pass.bucket]
            caps = capabilities[bucket_pass.bucket]
            mover_options = MoverOptions(workers=options.workers, multipart_threshold=options.multipart_threshold,
                                         part_size=options.part_size, read_limit=options.read_limit,
                                         inspect=options.inspect, dry_run=context.dry_run, mode=options.mode,
                                         bill=bill, claims=shared_claims(context, options, caps))
            moves_before = report.counts[MoveOutcome.WOULD_MOVE.value]
            with ObjectMover(context, bucket_pass.bucket, caps, mover_options) as mover:
                present = None
                if not caps.conditional_copy or context.dry_run:
                    with report.phase("scan_destinations", bucket=bucket_pass.bucket) as phase:
                        present = scan_destinations(context, bucket_pass.bucket,
                                                    bill if not caps.conditional_copy else None)
                        phase["tasks_with_new_keys"] = present.added
                if catch_up:  # a finished copy phase before: what changed since its check is all
                    context.log.info("s3://%s: catching up on the tasks changed since %s", bucket_pass.bucket,
                                     bucket_state["checked_at"])
                elif bucket_state["complete"]:  # done by the run this one resumes: only the check is left
                    context.log.info("s3://%s: done before the interruption; checking what changed since",
                                     bucket_pass.bucket)
                    report.add("resumed_complete_buckets", bucket_pass.bucket)
                else:
                    with report.phase(options.mode.name, bucket=bucket_pass.bucket) as phase:
                        mark = LowWaterMark(bucket_state, save)
                        phase["clean"] = move_range(context, bucket_pass, options, mover, present, mark)
                if options.budget.spent():
                    break  # the moves in flight are settled and the mark saved: the next run resumes
                with report.phase("final_check", bucket=bucket_pass.bucket) as phase:
                    since = bucket_state["checked_at"] if catch_up else bucket_state["started_at"]
                    checked = rename_check.final_check(context, bucket_pass, options.shard.key_range, mover,
                                                       present, since=since, mode=options.mode,
                                                       record=lambda result: record(report, result))
                    phase.update(checked)
                    if checked.get("checked_at") and not context.dry_run:
                        bucket_state.update(checked_at=checked["checked_at"], complete=True)
            if bill is not None:
                bill_deletes(bill, options.mode, report.counts[MoveOutcome.WOULD_MOVE.value] - moves_before)
            if saver:
                saver.fire_and_wait(_snapshot(state))
        if options.budget.spent() and not all(state[p.bucket].get("complete") for p in passes):
            if saver:
                saver.fire_and_wait(_snapshot(state))
            report.info["stopped"] = "max_runtime"
            raise OutOfTime(f"stopped after --max-runtime {options.budget} with the checkpoint saved: "
                            "not done, run the same command again to resume")
    finally:
        context.report.info["s3"] = context.limiter.stats()
    if bill is not None:
        report.info["bill"] = bill.to_dict(options.prices)
        context.log.info("s3-rename (dry run) would make %s", bill.summary(options.prices))
    return JobResult.finished([f"{report.counts[name]} {name}" for name in PROBLEMS if report.counts[name]])


def needs_shared_claims(context, options: RenameOptions, caps) -> bool:
    """Shards of one run on a server that copies over existing keys agree through the database."""
    return not caps.conditional_copy and options.shard.count > 1 and not context.dry_run and options.phase != ROLLBACK


def shared_claims(context, options: RenameOptions, caps) -> Optional[SharedClaims]:
    return SharedClaims(context.connect, caps.bucket) if needs_shared_claims(context, options, caps) else None


def bill_deletes(bill: Bill, mode: Mode, moves: int) -> None:
    """--dry-run: the DeleteObjects batches (up to 1,000 keys each) behind ``moves`` moves."""
    if mode.delete_after_copy and moves:
        bill.add("DELETE", -(-moves // MAX_KEYS_PER_REQUEST))


def _snapshot(state: dict) -> dict:
    return {bucket: dict(values) for bucket, values in state.items()}


def preflight(context, passes: list[keys.BucketPass], options: RenameOptions):
    """Check everything that could make the run fail before anything changes."""
    identity = {"job": "s3-rename", "buckets": [p.bucket for p in passes], "shard": str(options.shard),
                "use_db": context.use_db, "endpoint": context.endpoint, "phase": options.phase}
    if context.use_db:
        if not table_exists(context.db, "ponos_task"):
            raise ConfigError("the database has no ponos_task table: is --dsn the Arkindex database?")
        identity["database"] = database_identity(context.db)
    if options.phase == ROLLBACK:
        if not context.use_db:
            raise ConfigError("--rollback needs the database: it finds each task's legacy keys through its workflow")
        if not column_exists(context.db, "ponos_task", "workflow_id"):
            raise ConfigError("--rollback: the fold's contract has run, tasks have no workflow any more, so no "
                              "legacy key can be computed; nothing changed (see the README's Rollback)")
    checkpoint = Checkpoint(options.checkpoint, identity, validate=checkpoint_problem)
    state = checkpoint.load()
    capabilities = {p.bucket: context.bucket(p.bucket, probe=True) for p in passes}
    context.report.info["capabilities"] = {name: caps.to_dict() for name, caps in capabilities.items()}
    for caps in capabilities.values():
        for note in caps.notes:
            context.log.warning("s3://%s: %s", caps.bucket, note)
    if any(needs_shared_claims(context, options, caps) for caps in capabilities.values()):
        check_shared_claims(context)
    return checkpoint, state, capabilities


def check_shared_claims(context) -> None:
    """Shards on a server that ignores If-None-Match need the database's claims table."""
    what = ("--shard on a server that copies over existing keys (it ignores If-None-Match): the shards "
            "agree on who moves what through the table " + CLAIMS_TABLE)
    if not context.use_db:
        raise ConfigError(f"{what}, so they need the database: drop --no-db or run one process")
    try:
        create_table(context.db)
    except psycopg.Error as exc:
        raise ConfigError(f"{what}, which this role cannot create ({type(exc).__name__}): grant CREATE on the "
                          "schema, or run one process without --shard; nothing changed") from None


def checkpoint_problem(state: dict) -> Optional[str]:
    """None when ``state`` is what this job saves: bucket -> {after, complete, started_at}."""
    for bucket, values in state.items():
        if not isinstance(values, dict):
            return f"the entry of bucket {bucket!r} is not an object"
        if not isinstance(values.get("after"), (str, type(None))):
            return f"'after' of bucket {bucket!r} is not a key"
        if not isinstance(values.get("complete", False), bool):
            return f"'complete' of bucket {bucket!r} is not true or false"
        for name in ("started_at", "checked_at"):
            moment = values.get(name)
            if moment is not None:
                try:
                    datetime.fromisoformat(moment)
                except (TypeError, ValueError):
                    return f"'{name}' of bucket {bucket!r} is not a time"
    return None


def start_run(context, state: dict, passes: list[keys.BucketPass], options: RenameOptions) -> bool:
    """Resume the run the checkpoint holds, or start a new one; True for a copy phase's catch-up.

    A run that finished leaves nothing to skip (legacy keys may have been written since): the
    next one lists every key again, except after a finished copy phase, when the next copy
    run only catches up: the database says which tasks changed since its check, and only
    their legacy keys are looked up. An interrupted run resumes each bucket where it stopped;
    a bucket it had finished gets its final check again, over what changed since it began.
    """
    finished = bool(state) and all(state.get(p.bucket, {}).get("complete") for p in passes)
    if finished and options.phase == COPY_PHASE and all(state[p.bucket].get("checked_at") for p in passes):
        context.report.info["catch_up"] = True
        return True
    if finished:
        context.log.info("the last run finished; this run checks every key again")
        state.clear()
    for bucket_pass in passes:
        current = state.get(bucket_pass.bucket)
        if current and current.get("started_at"):
            context.log.info("s3://%s: resuming after %r (pass started %s)", bucket_pass.bucket, current.get("after"),
                             current["started_at"])
            context.report.info.setdefault("resumed", {})[bucket_pass.bucket] = current.get("after")
        else:
            state[bucket_pass.bucket] = {"after": None, "complete": False, "started_at": _now(context)}
    return False


def _now(context) -> str:
    """The pass's start, on the database's clock when there is one (what tasks' times use)."""
    if context.use_db:
        return context.with_db("the database's clock", lambda db: db.execute("SELECT now()").fetchone()[0]).isoformat()
    return datetime.now(timezone.utc).isoformat()


def scan_destinations(context, bucket: str, bill: Optional[Bill] = None) -> UUIDBloomFilter:
    """Tasks that may already have objects at new keys (``<task>/...`` or ``<task>.log``).

    A full listing, not a delimiter listing: some servers leave out of a delimiter listing a
    folder whose objects all sit deeper, and a check resting on it would overwrite.
    """
    present = UUIDBloomFilter()
    with context.bar(f"scan s3://{bucket}", unit="key") as bar:
        for page in iter_pages(context.s3, bucket, retrier=context.retrier):
            if bill is not None:
                bill.add("LIST")
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
                mover.options.bill.add("LIST", 2)  # this page, and the final check's listing of it
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
    elif found.kind is keys.Kind.UNDECIDED:
        report.add("undecided", found.key, limit=LISTED_KEYS_LIMIT)
        return False
    elif found.kind is keys.Kind.ORPHAN_LEGACY:
        report.add("orphan_legacy", found.key, limit=LISTED_KEYS_LIMIT)
    else:
        report.add("unrecognized", found.key, limit=LISTED_KEYS_LIMIT)
    return True
