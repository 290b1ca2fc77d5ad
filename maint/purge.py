"""Delete what outbox targets cover, after the commit: DeleteObjects in batches.

Three parts, each small enough to test alone:

- :func:`plan_work`, pure: committed targets -> what to ask S3. An exact key goes straight to
  a delete (no listing); prefixes are listed, several at once when the batch is *dense* (its
  tasks are most of the tasks in their id range: the usual backlog; see
  :mod:`maint.listing_plan`). Only Prefix semantics are relied on, never listing order.
- :class:`Purger`: runs the plan. Listings stream one page at a time on a small pool; each
  object found goes to the bucket's shared delete buffer (``ponoskit.s3.delete``, the one the
  rename's mover and the orphan sweep use). Each target is a :class:`TargetWork` whose future
  settles once its listing and every delete it caused have answered.
- :class:`OutboxAcks`: what settled. A done target's outbox row is removed; a refused one
  counts a failed attempt (set aside after a few, see maint.outbox) and stays for the next
  run. The rows are written from the job's own thread on the job's connection (between
  batches and at the end), so a lost connection is the job's to handle, as every other.

With ``list_keys`` (``--list-prefixes``, the behaviour before keys came from the database)
exact keys are listed too, so a key that is not there is not counted as an object.

Memory is bounded: at most ``max_in_flight`` targets are tracked at once (``submit`` blocks
beyond that), the delete queues are bounded, listings stream. If S3 fails a whole request
past the retries, the purger is *broken*: queued deletes fail fast without calling S3 again
(their rows stay in the outbox) and the job stops starting batches.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

from ponoskit.s3.delete import MAX_KEYS_PER_REQUEST, ObjectDeleteError, ObjectRef, delete_buffer
from ponoskit.s3.errors import one_line
from ponoskit.s3.listing import ObjectInfo, iter_objects

from . import outbox
from .listing_plan import plan_listings
from .outbox import KEY, Target

MAX_LISTED_ERRORS = 100


def plan_work(targets: Iterable[Target], *, dense: bool, list_keys: bool,
              group_size: int = 1000) -> Iterator[tuple[Optional[str], list[Target]]]:
    """(prefix to list, the targets it serves), or (None, [target]) for an exact key deleted
    without a listing. Per bucket, in key order, ``group_size`` targets at a time."""
    by_bucket: dict[str, list[Target]] = defaultdict(list)
    for target in targets:
        by_bucket[target.bucket].append(target)
    for bucket_targets in by_bucket.values():
        bucket_targets.sort(key=lambda t: t.key)
        for start in range(0, len(bucket_targets), group_size):
            yield from _plan_group(bucket_targets[start:start + group_size], dense, list_keys)


def _plan_group(group: list[Target], dense: bool, list_keys: bool) -> Iterator[tuple[Optional[str], list[Target]]]:
    disjoint: list[Target] = []
    for target in group:
        if target.kind == KEY and not list_keys:
            yield None, [target]
        # Matching by bisection needs disjoint targets; a duplicate or nested one goes alone.
        elif disjoint and (disjoint[-1].key == target.key or disjoint[-1].covers(target.key)):
            yield target.key, [target]
        else:
            disjoint.append(target)
    by_key = {t.key: t for t in disjoint}
    for prefix, served in plan_listings([t.key for t in disjoint], dense=dense):
        yield prefix, [by_key[k] for k in served]


class TargetWork:
    """One target: a future settled when its listing and all its deletes have answered."""

    def __init__(self, target: Target):
        self.target = target
        self.future: Future = Future()
        self.errors: list[str] = []  # per-key refusals: the target failed, S3 works
        self.broken: Optional[BaseException] = None  # a whole request failed: S3 does not work
        self._pending = 1  # the listing itself
        self._lock = threading.Lock()

    def expect(self, delete: Future, on_deleted) -> None:
        with self._lock:
            self._pending += 1
        delete.add_done_callback(lambda done: self._answered(done, on_deleted))

    def listed(self) -> None:
        self._one_done()

    def give_up(self, error: BaseException) -> None:
        self.broken = self.broken or error
        self._one_done()

    def _answered(self, done: Future, on_deleted) -> None:
        error = done.exception()
        if error is None and isinstance(done.result(), ObjectDeleteError):
            error = done.result()
        if error is None:
            on_deleted()
        elif isinstance(error, ObjectDeleteError):
            with self._lock:
                self.errors.append(str(error))
        else:
            self.broken = self.broken or error
        self._one_done()

    def _one_done(self) -> None:
        with self._lock:
            self._pending -= 1
            last = self._pending == 0
        if last:
            self.future.set_result(self)

    @property
    def ok(self) -> bool:
        return not self.errors and self.broken is None


class OutboxAcks:
    """Settled outbox rows, gathered from any thread, written from the job's thread."""

    def __init__(self, report):
        self.report = report
        self._done: list[int] = []
        self._failed: dict[int, str] = {}
        self._lock = threading.Lock()

    def done(self, row_id: int) -> None:
        with self._lock:
            self._done.append(row_id)

    def failed(self, row_id: int, error: str) -> None:
        with self._lock:
            self._failed[row_id] = error

    def write(self, conn) -> None:
        """Remove the done rows, count an attempt on the failed ones. Should this fail (the
        connection lost), the rows stay: the next drain deletes their objects again (a delete
        of a missing key succeeds) and removes them."""
        with self._lock:
            done, self._done = self._done, []
            failed, self._failed = self._failed, {}
        if done:
            self.report.count("outbox_rows_removed", outbox.remove(conn, done))
        if failed:
            self.report.count("outbox_rows_set_aside", outbox.note_failures(conn, failed))


@dataclass
class Tally:
    """What went wrong in this purger (the report keeps the run's totals)."""
    broken: Optional[BaseException] = None  # the first whole request that failed past the retries
    targets_failed: int = 0
    keys_failed: int = 0
    errors_listed: int = 0
    keys_by_bucket: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class PurgeSettings:
    count_only: bool  # a dry run: list and count, delete nothing
    list_keys: bool = False  # list exact keys too (--list-prefixes)
    shards: int = 4  # delete buffers per bucket: DeleteObjects requests in flight at once
    group_size: int = 1000  # targets planned together


class Purger:
    def __init__(self, ctx, *, count_only: bool, list_keys: bool = False, listing_threads: int = 16,
                 delete_shards: int = 4, max_in_flight: int = 4000, group_size: int = 1000):
        self.ctx = ctx
        self.settings = PurgeSettings(count_only, list_keys, delete_shards, group_size)
        self.tally = Tally()
        self.acks = OutboxAcks(ctx.report)
        self._slots = _InFlight(max(max_in_flight, 2 * group_size))
        self._pool = ThreadPoolExecutor(listing_threads, thread_name_prefix="purge-list")
        self._buffers: dict[tuple[str, int], object] = {}  # (bucket, shard) -> its delete buffer, closed with it
        ctx.s3  # noqa: B018 - the client is built here, in the caller's thread, before workers share it

    @property
    def shards(self) -> int:
        return self.settings.shards

    @property
    def keys_by_bucket(self) -> Counter:
        """Keys deleted (or, counting only, that would be) per bucket: a dry run's DELETE estimate."""
        return self.tally.keys_by_bucket

    @property
    def broken(self) -> Optional[BaseException]:
        return self.tally.broken

    @property
    def failures(self) -> int:
        return self.tally.targets_failed + self.tally.keys_failed

    # --- intake (the job's thread) ---------------------------------------------------
    def submit(self, targets: Iterable[Target], *, dense: bool = False) -> None:
        """Start work on committed targets; blocks while too much is in flight."""
        for prefix, served in plan_work(targets, dense=dense, list_keys=self.settings.list_keys,
                                        group_size=self.settings.group_size):
            works = [self._track(target) for target in served]
            if prefix is None:
                self._delete_key(works[0])
            else:
                self._pool.submit(self._list, prefix, works)

    def _track(self, target: Target) -> TargetWork:
        self._slots.take()
        work = TargetWork(target)
        work.future.add_done_callback(lambda done: self._settle(done.result()))
        return work

    def wait(self) -> None:
        """Return once every submitted target is settled (done, or failed and kept)."""
        while not self._slots.wait_idle(timeout=1.0):
            self.acknowledge()
        self.acknowledge()

    def close(self) -> None:
        """Wait, then release the threads and the delete buffers."""
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)
            for buffer in self._buffers.values():
                buffer.close()

    def acknowledge(self) -> None:
        """Write the outbox rows of what settled so far (the job's thread, between batches)."""
        if not self.settings.count_only:
            self.acks.write(self.ctx.db)

    # --- listing (pool threads) -----------------------------------------------------
    def _list(self, prefix: str, works: list[TargetWork]) -> None:
        """List ``prefix`` whole; each key goes to the target covering it, if any."""
        if self.broken is not None:
            for work in works:
                work.give_up(self.broken)
            return
        listed = 0
        try:
            self.ctx.report.count("s3_listings")
            target_keys = [w.target.key for w in works]
            for obj in iter_objects(self.ctx.s3, works[0].target.bucket, prefix=prefix, retrier=self.ctx.retrier):
                # The covering target, if any, is the greatest target key <= obj.key (targets
                # are disjoint: a target between it and obj.key would be nested in it).
                index = bisect.bisect_right(target_keys, obj.key) - 1
                if index >= 0 and works[index].target.covers(obj.key):
                    self._found(works[index], obj)
            for listed, work in enumerate(works, 1):
                work.listed()
        except BaseException as exc:  # noqa: BLE001 - a target must always settle
            self._break(exc, f"listing {prefix!r}")
            for work in works[listed:]:
                work.give_up(exc)

    def _delete_key(self, work: TargetWork) -> None:
        """An exact key the database named: no listing, straight to the delete buffer."""
        if self.broken is not None:
            work.give_up(self.broken)
            return
        self._found(work, ObjectInfo(work.target.key, 0, ""), listed=False)
        work.listed()

    def _found(self, work: TargetWork, obj: ObjectInfo, *, listed: bool = True) -> None:
        bucket = work.target.bucket
        if self.settings.count_only:
            self._count_deleted(bucket, obj, listed)
            return
        deletes = self._delete_buffer(bucket, hash(obj.key) % self.settings.shards)
        work.expect(deletes.submit(ObjectRef(obj.key)), lambda: self._count_deleted(bucket, obj, listed))

    def _delete_buffer(self, bucket: str, shard: int):
        found = self._buffers.get((bucket, shard))  # once per object: no name built here
        if found is None:
            with self._slots.lock:
                found = self._buffers.get((bucket, shard))
                if found is None:
                    # One batch queued behind the one in flight: enough to keep S3 busy, and
                    # what bounds memory (listings block once their shard's queue is full).
                    found = self._buffers[bucket, shard] = delete_buffer(
                        self.ctx, bucket, name=f"purge:{bucket}:{shard}", interval=0.1, max_pending=2 * MAX_KEYS_PER_REQUEST,
                        halted=lambda: self.broken)
        return found

    def _count_deleted(self, bucket: str, obj: ObjectInfo, listed: bool) -> None:
        """One key S3 confirmed gone. A key that was not listed may not have existed: S3 answers
        a delete of a missing key with success, so its size is unknown (not in s3_bytes)."""
        self.ctx.report.count("s3_objects")
        if listed:
            self.ctx.report.count("s3_bytes", obj.size)
        with self._slots.lock:
            self.keys_by_bucket[bucket] += 1

    # --- settling (any thread) ------------------------------------------------------
    def _settle(self, work: TargetWork) -> None:
        target, report = work.target, self.ctx.report
        if work.broken is not None and work.broken is not self.broken:
            self._break(work.broken, f"DeleteObjects on bucket {target.bucket!r}")
        for error in work.errors:
            self._count_failure("keys_failed", "s3_keys_failed", f"could not delete {error}")
        if work.ok:
            report.count("targets_done")
            if not self.settings.count_only and target.id is not None:
                self.acks.done(target.id)
        else:
            self._count_failure("targets_failed", "outbox_targets_failed")
            if work.errors and not self.settings.count_only and target.id is not None:
                self.acks.failed(target.id, "; ".join(work.errors[:3]))
        self._slots.give_back()

    def _count_failure(self, tally_field: str, count: str, message: str = "") -> None:
        with self._slots.lock:
            setattr(self.tally, tally_field, getattr(self.tally, tally_field) + 1)
        self.ctx.report.count(count)
        if message:
            self._note_error(message)

    def _break(self, exc: BaseException, what: str) -> None:
        with self._slots.lock:
            first = self.tally.broken is None
            if first:
                self.tally.broken = exc
        if first:
            self.ctx.retrier.stopping.set()
            self._note_error(f"S3 failed ({what}), stopping S3 work: {one_line(exc)}")

    def _note_error(self, message: str) -> None:
        with self._slots.lock:
            self.tally.errors_listed += 1
            listed = self.tally.errors_listed <= MAX_LISTED_ERRORS
        if listed:
            self.ctx.report.error(message)
            self.ctx.log.error(message)


class _InFlight:
    """How many targets are tracked: ``take`` blocks at the bound, ``wait_idle`` until none."""

    def __init__(self, bound: int):
        self._slots = threading.BoundedSemaphore(bound)
        self.lock = threading.Lock()
        self._idle = threading.Condition(self.lock)
        self._count = 0

    def take(self) -> None:
        self._slots.acquire()
        with self.lock:
            self._count += 1

    def give_back(self) -> None:
        self._slots.release()
        with self.lock:
            self._count -= 1
            if self._count == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self.lock:
            if self._count:
                self._idle.wait(timeout)
            return self._count == 0
