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

import contextlib
from typing import Optional

from ponoskit import keys
from ponoskit.bloom import UUIDBloomFilter
from ponoskit.errors import OutOfTime
from ponoskit.runtime import JobResult
from ponoskit.s3.bill import Bill, RequestCounter, merged
from ponoskit.s3.capabilities import BucketCapabilities
from ponoskit.s3.delete import MAX_KEYS_PER_REQUEST

from . import rename_check
from .low_water import LowWaterMark
from .rename_options import ALL, CONTRACT, EXPAND, PHASES, PROBLEMS, ROLLBACK, RenameOptions
from .rename_pass import move_range, record, scan_destinations
from .rename_start import checkpoint_problem, preflight, shared_claims, start_run
from .s3_mover import Mode, MoveOutcome, MoverOptions, ObjectMover

__all__ = ["ALL", "CONTRACT", "EXPAND", "PHASES", "PROBLEMS", "ROLLBACK", "BucketRun", "RenameOptions",
           "checkpoint_problem", "rename"]


def rename(context, options: RenameOptions) -> JobResult:
    """Run the rename: done when every legacy key in scope is at its new key, else left with
    what is (conflicts, failures...); raises OutOfTime at --max-runtime with the checkpoint saved."""
    passes = keys.bucket_passes(options.artifacts_bucket, options.logs_bucket)
    report = context.report
    report.expect("scanned")
    report.info.update(buckets=[p.bucket for p in passes], shard=str(options.shard),
                       use_db=context.use_db, workers=options.workers, phase=options.phase,
                       multipart_threshold=options.multipart_threshold)
    # A dry run's bill counts what it sends, the preflight's canaries included (ponoskit.s3.bill).
    with RequestCounter(context.s3) if context.dry_run else contextlib.nullcontext() as sent:
        with report.phase("preflight"):
            checkpoint, state, capabilities = preflight(context, passes, options)
        run = RenameRun(context, options, checkpoint, state, sent)
        catch_up = start_run(context, state, passes, options)
        try:
            for bucket_pass in passes:
                bucket = BucketRun(run, bucket_pass, capabilities[bucket_pass.bucket])
                if not (bucket.catch_up() if catch_up else bucket.go()):
                    break  # --max-runtime: the moves in flight are settled and the mark saved
            run.stop_if_out_of_time(passes)
        finally:
            report.info["s3"] = context.limiter.stats()
    run.report_bill()
    return JobResult.finished([f"{report.counts[name]} {name}" for name in PROBLEMS if report.counts[name]])


class RenameRun:
    """What the buckets of one run share: the context, the options, the checkpoint's state
    (saved about once a second, and at once between buckets) and a dry run's bill: the requests
    it sends (``sent``) and those it withholds (``bill``: copies, deletes, the final check)."""

    def __init__(self, context, options: RenameOptions, checkpoint, state: dict,
                 sent: Optional[RequestCounter] = None):
        self.context, self.options, self.state, self.sent = context, options, state, sent
        self.bill = Bill() if context.dry_run else None  # the movers fill it (MoverOptions.bill)
        self._saver = None
        if options.checkpoint and not context.dry_run:
            self._saver = context.buffer("checkpoint", lambda states: checkpoint.save(states[-1]),
                                         max_size=10_000, interval=1.0)

    def save_soon(self) -> None:
        if self._saver is not None:
            self._saver.fire_forget(_snapshot(self.state))

    def save_now(self) -> None:
        if self._saver is not None:
            self._saver.fire_and_wait(_snapshot(self.state))

    def stop_if_out_of_time(self, passes: list[keys.BucketPass]) -> None:
        if self.options.budget.spent() and not all(self.state[p.bucket].get("complete") for p in passes):
            self.save_now()
            self.context.report.info["stopped"] = "max_runtime"
            raise OutOfTime(f"stopped after --max-runtime {self.options.budget} with the checkpoint saved: "
                            "not done, run the same command again to resume")

    def not_billed(self):
        """Around what a dry run sends that the real run would not."""
        return self.sent.paused() if self.sent is not None else contextlib.nullcontext()

    def report_bill(self) -> None:
        if self.bill is not None:
            total = merged(self.sent.sent() if self.sent is not None else None, self.bill)
            self.context.report.info["bill"] = total.to_dict(self.options.prices)
            self.context.log.info("s3-rename (dry run) would make %s", total.summary(self.options.prices))


class BucketRun:
    """One bucket's part of a run: :meth:`scan`, :meth:`move`, :meth:`final_check` (:meth:`go`),
    or, after a finished expand, only the look at what changed since (:meth:`catch_up`)."""

    def __init__(self, run: RenameRun, bucket_pass: keys.BucketPass, caps: BucketCapabilities):
        self.run, self.bucket_pass, self.caps = run, bucket_pass, caps
        self.state = run.state[bucket_pass.bucket]
        self._moves_before = run.context.report.counts[MoveOutcome.WOULD_MOVE.value]

    def go(self) -> bool:
        """The whole pass; False when --max-runtime stopped it before its final check."""
        context, bucket = self.run.context, self.bucket_pass.bucket
        with self._mover() as mover:
            present = self.scan()
            if self.state["complete"]:  # done by the run this one resumes: only the check is left
                context.log.info("s3://%s: done before the interruption; checking what changed since", bucket)
                context.report.add("resumed_complete_buckets", bucket)
            else:
                self.move(mover, present)
            if self.run.options.budget.spent():
                return False
            self.final_check(mover, present, since=self.state["started_at"])
        self._finished()
        return True

    def catch_up(self) -> bool:
        """An expand finished before: the tasks changed since its check are all there is to
        look at (their legacy keys are looked up, nothing is listed whole)."""
        with self._mover() as mover:
            present = self.scan()
            self.run.context.log.info("s3://%s: catching up on the tasks changed since %s",
                                      self.bucket_pass.bucket, self.state["checked_at"])
            if self.run.options.budget.spent():
                return False
            self.final_check(mover, present, since=self.state["checked_at"])
        self._finished()
        return True

    def scan(self) -> Optional[UUIDBloomFilter]:
        """Where the server copies over existing keys (and for a dry run's predictions): the
        tasks that have objects at new keys already. None where the server refuses overwrites."""
        context = self.run.context
        if self.caps.conditional_copy and not context.dry_run:
            return None
        # Where the server refuses overwrites, only the dry run scans (to tell a half-done move).
        not_sent = self.run.not_billed() if self.caps.conditional_copy else contextlib.nullcontext()
        with context.report.phase("scan_destinations", bucket=self.bucket_pass.bucket) as phase, not_sent:
            present = scan_destinations(context, self.bucket_pass.bucket)
            phase["tasks_with_new_keys"] = present.added
        return present

    def move(self, mover: ObjectMover, present: Optional[UUIDBloomFilter]) -> None:
        """The listing pass over this shard's range, from the checkpoint on."""
        context, options = self.run.context, self.run.options
        with context.report.phase(options.mode.name, bucket=self.bucket_pass.bucket) as phase:
            mark = LowWaterMark(self.state, self.run.save_soon)
            phase["clean"] = move_range(context, self.bucket_pass, options, mover, present, mark)

    def final_check(self, mover: ObjectMover, present: Optional[UUIDBloomFilter], *, since: str) -> None:
        """Legacy keys written behind the listing (migrate.rename_check); a clean check marks
        the bucket complete in the checkpoint."""
        context, options = self.run.context, self.run.options
        with context.report.phase("final_check", bucket=self.bucket_pass.bucket) as phase:
            checked = rename_check.final_check(context, self.bucket_pass, options.shard.key_range, mover, present,
                                               since=since, mode=options.mode,
                                               record=lambda result: record(context.report, result))
            phase.update(checked)
            if checked.get("checked_at") and not context.dry_run:
                self.state.update(checked_at=checked["checked_at"], complete=True)

    def _mover(self) -> ObjectMover:
        context, options = self.run.context, self.run.options
        return ObjectMover(context, self.bucket_pass.bucket, self.caps, MoverOptions(
            workers=options.workers, multipart_threshold=options.multipart_threshold, part_size=options.part_size,
            read_limit=options.read_limit, inspect=options.inspect, dry_run=context.dry_run, mode=options.mode,
            bill=self.run.bill, claims=shared_claims(context, options, self.caps)))

    def _finished(self) -> None:
        if self.run.bill is not None:
            moves = self.run.context.report.counts[MoveOutcome.WOULD_MOVE.value] - self._moves_before
            bill_deletes(self.run.bill, self.run.options.mode, moves)
        self.run.save_now()


def bill_deletes(bill: Bill, mode: Mode, moves: int) -> None:
    """--dry-run: the DeleteObjects batches (up to 1,000 keys each) behind ``moves`` moves."""
    if mode.delete_after_copy and moves:
        bill.add("DELETE", -(-moves // MAX_KEYS_PER_REQUEST))


def _snapshot(state: dict) -> dict:
    return {bucket: dict(values) for bucket, values in state.items()}
