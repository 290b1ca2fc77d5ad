"""Delete what outbox targets cover, after the commit: list, then DeleteObjects in batches.

Flow of one target (a task's log key, or its artifacts prefix):
  list the objects it covers  ->  the bucket's delete buffers (DeleteObjects, 1,000 keys)
  -> once every listed key is confirmed gone, the outbox row goes to the ack buffer, which
  deletes outbox rows in batches. A target that fails anywhere keeps its row for the next run.

Listing: one LIST per target by default. When the caller says a batch is *dense* (its tasks
are most of the tasks in their id range: the usual backlog), targets that share a key prefix
are listed together with one ``Prefix=`` listing (see :mod:`maint.listing_plan`), and every key
found is matched to its target by bisection over the sorted target keys. Only Prefix
semantics are relied on, never the order of a listing, which differs between servers
(SeaweedFS lists in directory-tree order, S3 in byte order).

Memory is bounded: at most ``max_in_flight`` targets are tracked at once (``submit`` blocks
beyond that), the buffers' queues are bounded, listings stream one page at a time.
If S3 fails a whole request, the purger is *broken*: queued work fails fast without calling
S3 again (its rows stay in the outbox) and the job stops starting new batches.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Optional

from ponoskit.s3.delete import MAX_KEYS_PER_REQUEST, delete_keys
from ponoskit.s3.listing import ObjectInfo, iter_objects

from . import outbox
from .listing_plan import plan_listings
from .outbox import Target

_instances = itertools.count(1)
MAX_LISTED_ERRORS = 100


class _Progress:
    """One target being worked on: settled once listed and every delete it caused answered."""

    __slots__ = ("target", "outstanding", "listed", "failed", "settled")

    def __init__(self, target: Target):
        self.target = target
        self.outstanding = 0
        self.listed = False
        self.failed = False
        self.settled = False


class Purger:
    def __init__(self, ctx, *, count_only: bool, listing_threads: int = 16, delete_shards: int = 4,
                 max_in_flight: int = 4000, group_size: int = 1000):
        self.ctx = ctx
        self.client = ctx.s3  # built here, in the caller's thread, before workers share it
        self.report = ctx.report
        self.count_only = count_only
        self.group_size = group_size
        self.broken: Optional[BaseException] = None
        self._serial = next(_instances)
        self._pool = ThreadPoolExecutor(listing_threads, thread_name_prefix=f"purge-list-{self._serial}")
        self._slots = threading.BoundedSemaphore(max(max_in_flight, 2 * group_size))
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0
        self._shards = delete_shards
        self._buffers = []
        self._delete_buffers: dict[tuple[str, int], object] = {}
        self._errors_listed = 0
        if not count_only:
            self._ack_conn = ctx.connect()  # the ack buffer's own thread, its own connection
            self._ack = self._buffer("outbox-ack", self._flush_acks)

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
        disjoint: list[_Progress] = []
        for target in group:
            self._slots.acquire()
            with self._lock:
                self._in_flight += 1
            progress = _Progress(target)
            # Matching by bisection needs disjoint targets; a duplicate or nested one goes alone.
            if disjoint and (disjoint[-1].target.key == target.key or disjoint[-1].target.covers(target.key)):
                self._pool.submit(self._guarded, progress.target.key, [progress])
            else:
                disjoint.append(progress)
        by_key = {p.target.key: p for p in disjoint}
        for prefix, keys in plan_listings([p.target.key for p in disjoint], dense=dense):
            self._pool.submit(self._guarded, prefix, [by_key[k] for k in keys])

    # --- listing (pool threads) -----------------------------------------------------
    def _guarded(self, prefix: str, progresses: list[_Progress]) -> None:
        try:
            self._list(prefix, progresses)
        except BaseException as exc:  # noqa: BLE001 - a target must always settle
            self._give_up([p for p in progresses if not p.listed], exc)

    def _list(self, prefix: str, progresses: list[_Progress]) -> None:
        """List ``prefix`` whole; each key goes to the target covering it, if any."""
        if self.broken is not None:
            return self._give_up(progresses, self.broken)
        self.report.count("s3_listings")
        bucket = progresses[0].target.bucket
        target_keys = [p.target.key for p in progresses]
        for obj in iter_objects(self.client, bucket, prefix=prefix):
            # The covering target, if any, is the greatest target key <= obj.key (targets are
            # disjoint: a target between it and obj.key would be nested in it).
            index = bisect.bisect_right(target_keys, obj.key) - 1
            if index >= 0 and progresses[index].target.covers(obj.key):
                self._found(progresses[index], obj)
        for progress in progresses:
            self._listed(progress)

    def _found(self, progress: _Progress, obj: ObjectInfo) -> None:
        if self.count_only:
            self.report.count("s3_objects")
            self.report.count("s3_bytes", obj.size)
            return
        with self._lock:
            progress.outstanding += 1
        shard = hash(obj.key) % self._shards
        self._delete_buffer(progress.target.bucket, shard).fire_forget((progress, obj))

    def _listed(self, progress: _Progress) -> None:
        with self._lock:
            progress.listed = True
        self._settle(progress)

    def _give_up(self, progresses: list[_Progress], exc: BaseException) -> None:
        if self.broken is None:
            self.broken = exc
            self._note_error(f"S3 failed, stopping S3 work: {_one_line(exc)}")
        for progress in progresses:
            with self._lock:
                progress.failed = True
                progress.listed = True
            self._settle(progress)

    # --- deleting (buffer threads) --------------------------------------------------
    def _delete_buffer(self, bucket: str, shard: int):
        key = (bucket, shard)
        if key not in self._delete_buffers:
            with self._lock:
                if key not in self._delete_buffers:
                    # One batch queued behind the one in flight: enough to keep S3 busy, and
                    # what bounds memory (listings block once their shard's queue is full).
                    self._delete_buffers[key] = self._buffer(
                        f"delete:{bucket}:{shard}", lambda items: self._flush_deletes(bucket, items),
                        max_size=MAX_KEYS_PER_REQUEST, max_pending=2 * MAX_KEYS_PER_REQUEST)
        return self._delete_buffers[key]

    def _flush_deletes(self, bucket: str, items: list[tuple[_Progress, ObjectInfo]]) -> None:
        unique = list(dict.fromkeys(obj.key for _, obj in items))
        if self.broken is not None:
            outcome = {key: self.broken for key in unique}
        else:
            try:
                outcome = dict(zip(unique, delete_keys(self.client, bucket, unique)))
            except Exception as exc:  # noqa: BLE001 - the whole request failed after retries
                if self.broken is None:
                    self.broken = exc
                    self._note_error(f"S3 DeleteObjects failed on bucket {bucket!r}, stopping S3 work: "
                                     f"{_one_line(exc)}")
                outcome = {key: exc for key in unique}
        counted: set[str] = set()
        for progress, obj in items:
            error = outcome[obj.key]
            if error is None:
                if obj.key not in counted:
                    counted.add(obj.key)
                    self.report.count("s3_objects")
                    self.report.count("s3_bytes", obj.size)
            elif error is not self.broken:
                self.report.count("s3_keys_failed")
                self._note_error(f"could not delete {error}")
            with self._lock:
                progress.failed = progress.failed or error is not None
                progress.outstanding -= 1
            self._settle(progress)
        # Each result was settled on its target above: nothing is left for close() to raise.
        return None

    def _flush_acks(self, ids: list[int]) -> None:
        try:
            removed = outbox.remove(self._ack_conn, ids)
            self.report.count("outbox_rows_removed", removed)
        except Exception as exc:  # noqa: BLE001 - the rows stay; the next run re-checks them
            self.report.count("outbox_rows_not_removed", len(ids))
            self._note_error(f"could not remove {len(ids)} outbox rows (the next run re-checks them): "
                             f"{_one_line(exc)}")
        return None

    # --- settling -------------------------------------------------------------------
    def _settle(self, progress: _Progress) -> None:
        with self._lock:
            if progress.settled or not progress.listed or progress.outstanding:
                return
            progress.settled = True
        target = progress.target
        if progress.failed:
            self.report.count("outbox_targets_failed")
        else:
            self.report.count("targets_done")
            if not self.count_only and target.id is not None:
                self._ack.fire_forget(target.id)
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
        """Wait, then flush the acks and release threads and the ack connection."""
        try:
            self.wait()
            self._pool.shutdown(wait=True)
            for buffer in self._buffers:
                buffer.close()
        finally:
            if not self.count_only and not self._ack_conn.closed:
                self._ack_conn.close()

    # --- helpers --------------------------------------------------------------------
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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__

