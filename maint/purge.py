"""Delete what outbox targets cover, after the commit: DeleteObjects in batches.

Each target (an exact key, or a prefix) gets a future of its own (:class:`TargetWork`),
settled once every delete it caused has answered:

  an exact key goes straight to the bucket's delete buffers; a prefix is listed first, and
  each object found goes there  ->  DeleteObjects, 1,000 keys, with the robust splitting of
  ponoskit.s3.delete -> the target's future -> done: the outbox row goes to the outbox
  buffer, which deletes rows in batches; refused: the row counts a failed attempt (set aside
  after a few, see maint.outbox) and stays for the next run.

With ``list_keys`` (``--list-prefixes``, the behaviour before keys came from the database)
exact keys are listed too, so a key that is not there is not counted as an object.

Listing: one LIST per target by default. When the caller says a batch is *dense* (its tasks
are most of the tasks in their id range: the usual backlog), targets that share a key prefix
are listed together with one ``Prefix=`` listing (see :mod:`maint.listing_plan`), and every key
found is matched to its target by bisection over the sorted target keys. Only Prefix
semantics are relied on, never the order of a listing, which differs between servers.

Memory is bounded: at most ``max_in_flight`` targets are tracked at once (``submit`` blocks
beyond that), the buffers' queues are bounded, listings stream one page at a time. If S3
fails a whole request past the retries, the purger is *broken*: queued work fails fast
without calling S3 again (its rows stay in the outbox) and the job stops starting batches.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import Counter, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterable, Optional

from ponoskit.s3.delete import MAX_KEYS_PER_REQUEST, ObjectDeleteError, ObjectRef, delete_objects
from ponoskit.s3.errors import one_line
from ponoskit.s3.listing import ObjectInfo, iter_objects

from . import outbox
from .listing_plan import plan_listings
from .outbox import KEY, Target

_instances = itertools.count(1)
MAX_LISTED_ERRORS = 100
_DONE, _FAILED = "done", "failed"


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


class Purger:
    def __init__(self, ctx, *, count_only: bool, list_keys: bool = False, listing_threads: int = 16,
                 delete_shards: int = 4, max_in_flight: int = 4000, group_size: int = 1000):
        self.ctx = ctx
        self.client = ctx.s3  # built here, in the caller's thread, before workers share it
        self.retrier = ctx.retrier
        self.report = ctx.report
        self.count_only = count_only
        self.list_keys = list_keys
        self.shards = delete_shards
        # Keys deleted (or, counting only, that would be) per bucket: a dry run's DELETE estimate.
        self.keys_by_bucket: Counter = Counter()
        self.group_size = group_size
        self.broken: Optional[BaseException] = None
        self._serial = next(_instances)
        self._pool = ThreadPoolExecutor(listing_threads, thread_name_prefix=f"purge-list-{self._serial}")
        self._slots = threading.BoundedSemaphore(max(max_in_flight, 2 * group_size))
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._buffers = []
        self._delete_buffers: dict[tuple[str, int], object] = {}
        self._errors_listed = 0
        if not count_only:
            self._outbox_conn = ctx.connect()  # the outbox buffer's own thread, its own connection
            self._outbox = self._buffer("outbox", self._flush_outbox)

    # --- intake ---------------------------------------------------------------------
    def submit(self, targets: Iterable[Target], *, dense: bool = False) -> None:
        """Start work on committed targets; blocks while too much is in flight."""
        by_bucket: dict[str, list[Target]] = defaultdict(list)
        for target in targets:
            by_bucket[target.bucket].append(target)
        for bucket_targets in by_bucket.values():
            bucket_targets.sort(key=lambda t: t.key)
            for start in range(0, len(bucket_targets), self.group_size):
                self._submit_group(bucket_targets[start:start + self.group_size], dense)

    def _submit_group(self, group: list[Target], dense: bool) -> None:
        disjoint: list[TargetWork] = []
        for target in group:
            self._slots.acquire()
            with self._lock:
                self._in_flight += 1
            work = TargetWork(target)
            work.future.add_done_callback(lambda done: self._settle(done.result()))
            if target.kind == KEY and not self.list_keys:
                self._delete_key(work)
            # Matching by bisection needs disjoint targets; a duplicate or nested one goes alone.
            elif disjoint and (disjoint[-1].target.key == target.key or disjoint[-1].target.covers(target.key)):
                self._pool.submit(self._list, target.key, [work])
            else:
                disjoint.append(work)
        by_key = {w.target.key: w for w in disjoint}
        for prefix, keys in plan_listings([w.target.key for w in disjoint], dense=dense):
            self._pool.submit(self._list, prefix, [by_key[k] for k in keys])

    # --- listing (pool threads) -----------------------------------------------------
    def _list(self, prefix: str, works: list[TargetWork]) -> None:
        """List ``prefix`` whole; each key goes to the target covering it, if any."""
        if self.broken is not None:
            for work in works:
                work.give_up(self.broken)
            return
        listed = 0
        try:
            self.report.count("s3_listings")
            bucket = works[0].target.bucket
            target_keys = [w.target.key for w in works]
            for obj in iter_objects(self.client, bucket, prefix=prefix, retrier=self.retrier):
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
        """An exact key the database named: no listing, straight to the delete buffers."""
        if self.broken is not None:
            work.give_up(self.broken)
            return
        self._found(work, ObjectInfo(work.target.key, 0, ""), listed=False)
        work.listed()

    def _found(self, work: TargetWork, obj: ObjectInfo, *, listed: bool = True) -> None:
        if self.count_only:
            self._count_deleted(work.target.bucket, obj, listed)
            return
        shard = hash(obj.key) % self.shards
        delete = self._delete_buffer(work.target.bucket, shard).submit(ObjectRef(obj.key))
        work.expect(delete, lambda: self._count_deleted(work.target.bucket, obj, listed))

    def _count_deleted(self, bucket: str, obj: ObjectInfo, listed: bool) -> None:
        """One key S3 confirmed gone. A key that was not listed may not have existed: S3 answers
        a delete of a missing key with success, so its size is unknown (not in s3_bytes)."""
        self.report.count("s3_objects")
        if listed:
            self.report.count("s3_bytes", obj.size)
        with self._lock:
            self.keys_by_bucket[bucket] += 1

    # --- deleting (buffer threads) --------------------------------------------------
    def _delete_buffer(self, bucket: str, shard: int):
        key = (bucket, shard)
        if key not in self._delete_buffers:
            with self._lock:
                if key not in self._delete_buffers:
                    # One batch queued behind the one in flight: enough to keep S3 busy, and
                    # what bounds memory (listings block once their shard's queue is full).
                    self._delete_buffers[key] = self._buffer(
                        f"delete:{bucket}:{shard}", lambda refs: self._flush_deletes(bucket, refs),
                        max_size=MAX_KEYS_PER_REQUEST, max_pending=2 * MAX_KEYS_PER_REQUEST)
        return self._delete_buffers[key]

    def _flush_deletes(self, bucket: str, refs: list[ObjectRef]) -> list:
        if self.broken is not None:
            return [self.broken] * len(refs)  # fail fast: S3 is not answering
        unique = list(dict.fromkeys(refs))
        try:
            outcome = dict(zip(unique, delete_objects(self.client, bucket, unique, retrier=self.retrier)))
        except Exception as exc:  # noqa: BLE001 - the whole request failed past the retries
            self._break(exc, f"DeleteObjects on bucket {bucket!r}")
            return [exc] * len(refs)
        for error in outcome.values():
            if error is not None:
                self.report.count("s3_keys_failed")
                self._note_error(f"could not delete {error}")
        return [outcome[ref] for ref in refs]

    def _flush_outbox(self, items: list[tuple]) -> None:
        done = [row_id for verdict, row_id, _ in items if verdict == _DONE]
        failed = {row_id: error for verdict, row_id, error in items if verdict == _FAILED}
        try:
            if done:
                self.report.count("outbox_rows_removed", outbox.remove(self._outbox_conn, done))
            if failed:
                self.report.count("outbox_rows_set_aside", outbox.note_failures(self._outbox_conn, failed))
        except Exception as exc:  # noqa: BLE001 - the rows stay; the next run re-checks them
            self.report.count("outbox_rows_not_removed", len(done))
            self._note_error(f"could not update {len(items)} outbox rows (the next run re-checks them): "
                             f"{one_line(exc)}")
        return None

    # --- settling -------------------------------------------------------------------
    def _settle(self, work: TargetWork) -> None:
        target = work.target
        if work.ok:
            self.report.count("targets_done")
            if not self.count_only and target.id is not None:
                self._outbox.fire_forget((_DONE, target.id, None))
        else:
            self.report.count("outbox_targets_failed")
            if work.errors and not self.count_only and target.id is not None:
                self._outbox.fire_forget((_FAILED, target.id, "; ".join(work.errors[:3])))
        self._slots.release()
        with self._lock:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.notify_all()

    @property
    def failures(self) -> int:
        counts = self.report.counts
        return (counts.get("outbox_targets_failed", 0) + counts.get("s3_keys_failed", 0)
                + counts.get("outbox_rows_not_removed", 0))

    def wait(self) -> None:
        """Return once every submitted target is settled (done, or failed and kept)."""
        with self._lock:
            while self._in_flight:
                self._idle.wait(timeout=1.0)

    def close(self) -> None:
        """Wait, then flush the outbox updates and release threads and the connection."""
        try:
            self.wait()
            self._pool.shutdown(wait=True)
            for buffer in self._buffers:
                buffer.close()
        finally:
            if not self.count_only and not self._outbox_conn.closed:
                self._outbox_conn.close()

    # --- helpers --------------------------------------------------------------------
    def _break(self, exc: BaseException, what: str) -> None:
        with self._lock:
            first = self.broken is None
            if first:
                self.broken = exc
        if first:
            self.retrier.stopping.set()
            self._note_error(f"S3 failed ({what}), stopping S3 work: {one_line(exc)}")

    def _buffer(self, name: str, flush, **options):
        buffer = self.ctx.buffer(f"cleanup-{self._serial}-{name}", flush, interval=0.1, **options)
        self._buffers.append(buffer)
        return buffer

    def _note_error(self, message: str) -> None:
        with self._lock:
            self._errors_listed += 1
            listed = self._errors_listed <= MAX_LISTED_ERRORS
        if listed:
            self.report.error(message)
            self.ctx.log.error(message)
