"""Moving one object inside a bucket: copy it whole, never over another, then delete exactly it.

One pool of ``workers`` threads runs every move; each returns a future, settled once the
source's delete (batched by the context's delete buffer) has answered. A move, in order:

1. Inspect the source when needed (HEAD): archived (GLACIER, DEEP_ARCHIVE not restored) is
   reported as ``archived``; SSE-C cannot be copied without its key; a KMS key, a storage
   class, tags and headers are kept; on a versioned bucket the version is pinned.
2. Copy without overwriting: ``If-None-Match: *`` where the server honours it (probed, see
   :mod:`ponoskit.s3.capabilities`); elsewhere the run's own claims (:mod:`migrate.claims`)
   stand in for the server, and the destination is checked first when it may exist (its
   task had new keys at the scan, or was still running when the run began, or another
   legacy key also moves there). An empty folder marker is written anew (PutObject).
3. A destination in the way is settled by content (:mod:`ponoskit.s3.content`): the same
   bytes finish a half-done move (``already_moved``); other bytes, or bytes nobody can
   compare, are a conflict: both kept, reported.
4. Delete the source through the context's delete buffer (DeleteObjects, 1,000 keys): by
   version on a versioned bucket, and only if its ETag is unchanged where the server honours
   that, so a source rewritten since its copy is kept (a conflict), never lost. Where it does
   not (Ceph RGW), a HEAD right before the delete proves the source unchanged; what is
   rewritten in the moment between that HEAD and the batch's delete is the window left.

Small objects go through obstore when the probe showed it copies keys exactly (its sync calls
release the GIL and cost a fifth of boto3's CPU); the rest through boto3, above the multipart
threshold in parallel parts. Every request goes through the run's retry loop and limiter:
throttling slows every worker down and is never a per-key failure. What stops the run (S3
failing past the retry deadline, a long run of identical permission refusals) is raised from
the move's future.
"""

from __future__ import annotations

import enum
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Optional, Union

from botocore.exceptions import BotoCoreError, ClientError

from ponoskit.s3 import content
from ponoskit.s3.marker import is_empty_marker, put_marker
from ponoskit.s3.bill import Bill
from ponoskit.workers import WorkerPool
from ponoskit.s3.capabilities import BucketCapabilities
from ponoskit.s3.copy import (ARCHIVE_CLASSES, DEFAULT_MULTIPART_THRESHOLD, OBSTORE_MAX_SIZE, CopyNotExact,
                              SourceChanged, SourceFacts, copy_object, head_facts, multipart_copy, normalize_etag,
                              obstore_can_copy, obstore_copy, part_ranges)
from ponoskit.s3.delete import ObjectDeleteError, ObjectRef, delete_buffer
from ponoskit.s3.errors import Kind, S3PermissionError, kind_of, one_line
from ponoskit.s3.listing import ObjectInfo

from .claims import Claim, Claims

INSPECT_AUTO, INSPECT_ALWAYS = "auto", "always"


class MoveOutcome(enum.Enum):
    MOVED = "moved"
    ALREADY_MOVED = "already_moved"        # its copy was already there (a killed run's): source now deleted
    CONFLICT = "conflicts"                 # another object holds the new key, or the source changed: both kept
    FAILED = "failed"
    ARCHIVED = "archived"                  # not copyable until restored
    SOURCE_GONE = "source_gone"            # deleted since the listing (by its task's cleanup, another run)
    COPIED = "copied"                      # --phase expand: the source stays for the legacy release
    ALREADY_COPIED = "already_copied"      # --phase expand: an identical copy was there
    RESTORED = "restored"                  # --rollback: a new-release object copied to its legacy key
    COPY_REMOVED = "copies_removed"        # --rollback: a copy of a legacy object, identical, removed
    WOULD_MOVE = "would_move"              # --dry-run
    WOULD_COMPLETE = "would_complete"      # --dry-run, half-done move

    @property
    def is_problem(self) -> bool:
        return self in (MoveOutcome.CONFLICT, MoveOutcome.FAILED, MoveOutcome.ARCHIVED)


@dataclass(frozen=True)
class MoveResult:
    outcome: MoveOutcome
    key: str
    new_key: str
    detail: Optional[str] = None


@dataclass(frozen=True)
class Mode:
    """What a move is: after a fresh copy, and when the destination holds the same bytes."""
    name: str
    after_copy: MoveOutcome
    delete_after_copy: bool
    when_same: MoveOutcome
    delete_when_same: bool


MOVE = Mode("move", MoveOutcome.MOVED, True, MoveOutcome.ALREADY_MOVED, True)
COPY = Mode("copy", MoveOutcome.COPIED, False, MoveOutcome.ALREADY_COPIED, False)
# The rename's way back: the "source" is a new key, the destination its legacy key.
RESTORE = Mode("restore", MoveOutcome.RESTORED, False, MoveOutcome.COPY_REMOVED, True)


@dataclass(frozen=True)
class MoverOptions:
    workers: int = 64
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD
    part_size: int = 256 * 1024 ** 2
    read_limit: int = content.DEFAULT_READ_LIMIT
    inspect: str = INSPECT_AUTO
    dry_run: bool = False
    bill: Optional[Bill] = None  # --dry-run: the requests the real run would make
    mode: Mode = MOVE
    claims: Optional[Claims] = None  # where the server ignores If-None-Match (None: one per mover)


@dataclass(frozen=True)
class _Delete:
    """A copy is in place: what to delete, and what the move is once the delete is confirmed."""
    ref: ObjectRef
    outcome: MoveOutcome
    new_key: str


PERMISSIONS = {"CopyObject": "s3:GetObject on the source and s3:PutObject",
               "DeleteObject": "s3:DeleteObject (s3:DeleteObjectVersion on a versioned bucket)",
               "HeadObject": "s3:GetObject (s3:GetObjectVersion on a versioned bucket)",
               "GetObjectTagging": "s3:GetObjectTagging"}


class PermissionStreak:
    """Stop after ``limit`` identical refusals in a row instead of collecting millions of them."""

    def __init__(self, limit: int = 100):
        self.limit = limit
        self._lock = threading.Lock()
        self._last: Optional[tuple[str, str]] = None
        self._count = 0

    def success(self) -> None:
        with self._lock:
            self._count, self._last = 0, None

    def refused(self, operation: str, code: str) -> None:
        with self._lock:
            same = self._last == (operation, code)
            self._count = self._count + 1 if same else 1
            self._last = (operation, code)
            count = self._count
        if count >= self.limit:
            raise S3PermissionError(
                f"{count} {operation} requests in a row were refused ({code}): the job needs "
                f"{PERMISSIONS.get(operation, operation)}; stopped early, nothing more was attempted")


class ObjectMover:
    def __init__(self, context, bucket: str, capabilities: BucketCapabilities, options: MoverOptions):
        self.client = context.s3
        self.retrier = context.retrier
        self.options = options
        self.caps = capabilities
        # obstore only where it gives the same guarantees as boto3 here.
        self.store = (context.object_store(bucket, concurrency=options.workers,
                                           conditional=capabilities.obstore_conditional_copy)
                      if capabilities.obstore_exact and capabilities.obstore_conditional_copy == self.guarded
                      else None)
        self.deletes = None if options.dry_run else delete_buffer(
            context, bucket, conditional=capabilities.conditional_delete)
        # The server copies over what exists: the run keeps its own claims (a rollback writes
        # each legacy key from exactly one new key, and always looks first).
        self.claims = None if self.guarded or options.mode is RESTORE else (options.claims or Claims())
        self.permissions = PermissionStreak()
        self.fatal: Optional[BaseException] = None  # what stops the run, once something did
        self._pool = WorkerPool(options.workers, f"move-{bucket}")

    @property
    def bucket(self) -> str:
        return self.caps.bucket

    @property
    def guarded(self) -> bool:
        """The server refuses a copy over an existing key by itself (If-None-Match honoured)."""
        return self.caps.conditional_copy

    @property
    def inspect_all(self) -> bool:
        return self.options.inspect == INSPECT_ALWAYS or self.caps.sse_may_vary

    @property
    def unguarded_delete(self) -> bool:
        """Deletes cannot be made conditional: a HEAD right before one proves the source unchanged."""
        return not self.caps.conditional_delete and not self.caps.versioned

    # --- the public side -----------------------------------------------------------
    def submit(self, source: ObjectInfo, new_key: str, *, check_destination: bool) -> "Future[MoveResult]":
        """Start moving ``source`` to ``new_key``; ``check_destination`` when the new key may exist
        already and the server does not refuse overwrites by itself."""
        if self.fatal is not None:
            raise self.fatal  # the run is stopping: submit nothing more
        result: Future = Future()
        claim = self.claims.claim(source.key, new_key) if self.claims is not None else None

        def work() -> None:
            if self.fatal is not None:
                self._settled(claim)
                result.set_exception(self.fatal)  # queued before the run began to stop: fail fast
                return
            try:
                step = self._copy_step(source, new_key, check_destination, claim)
            except BaseException as exc:  # noqa: BLE001 - the run stops on it (see the module)
                self._stop(exc, result)
                return
            finally:
                self._settled(claim)
            if isinstance(step, MoveResult):
                result.set_result(step)
                return
            self.deletes.submit_callback(step.ref, lambda answer, error: self._after_delete(step, source, answer,
                                                                                           error, result))

        self._pool.submit(work)
        return result

    def _settled(self, claim: Optional[Claim]) -> None:
        if claim is not None:
            self.claims.settled(claim)

    def _stop(self, exc: BaseException, result: Future) -> None:
        if self.fatal is None:
            self.fatal = exc
            self.retrier.stopping.set()
        result.set_exception(exc)

    def close(self) -> None:
        self._pool.close()
        if self.claims is not None:
            self.claims.close()

    def __enter__(self) -> "ObjectMover":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    # --- one move, in a worker thread ----------------------------------------------
    def _copy_step(self, source: ObjectInfo, new_key: str, check_destination: bool,
                   claim: Optional[Claim]) -> Union[MoveResult, _Delete]:
        try:
            if claim is not None and (claim.contested or claim.earlier is not None):
                claim.wait_for_earlier()  # an earlier copy to this key: look once it is done
                check_destination = True
            return self._try_move(source, new_key, check_destination, claim)
        except Exception as exc:  # noqa: BLE001 - sorted here; what stops the run is re-raised
            return self._failed(exc, source, new_key)

    def _try_move(self, source: ObjectInfo, new_key: str, check_destination: bool,
                  claim: Optional[Claim] = None) -> Union[MoveResult, _Delete]:
        facts = None
        if self._needs_inspection(source):
            facts = self._head(source.key)
            if facts is None:
                return MoveResult(MoveOutcome.SOURCE_GONE, source.key, new_key, "deleted since the listing")
            refusal = self._not_copyable(facts, source, new_key)
            if refusal:
                return refusal
        if self.options.dry_run:
            return self._plan(source, new_key, facts, check_destination)
        size = facts.size if facts else source.size
        for _ in range(3):
            existing = None
            if self._heads_destination(check_destination, size):
                existing = self._head(new_key)
            if existing is None:
                if claim is not None and claim.contested and not self.claims.take(
                        claim, exists=lambda key: self._head(key) is not None):
                    return MoveResult(MoveOutcome.CONFLICT, source.key, new_key,
                                      f"another legacy key is being moved to {new_key!r} (another shard): both "
                                      "kept; run again once it is done")
                try:
                    version = self._copy(source, new_key, facts)
                    self.permissions.success()
                    mode = self.options.mode
                    if not mode.delete_after_copy:
                        return MoveResult(mode.after_copy, source.key, new_key)
                    return self._delete_step(source, facts, version, mode.after_copy, new_key)
                except Exception as exc:  # noqa: BLE001
                    if kind_of(exc) is not Kind.PRECONDITION:  # If-None-Match lost: something is there
                        raise
            settled = self._settle_existing(source, new_key, facts, existing)
            if settled is not None:
                return settled
        return MoveResult(MoveOutcome.CONFLICT, source.key, new_key,
                          f"{new_key!r} kept appearing and disappearing while moving: both kept")

    def _failed(self, exc: BaseException, source: ObjectInfo, new_key: str) -> MoveResult:
        kind = kind_of(exc)
        if isinstance(exc, S3PermissionError) or kind in (Kind.THROTTLED, Kind.TRANSIENT) \
                or getattr(exc, "exit_code", None) == 75:
            raise exc
        if kind is Kind.ARCHIVED:
            return MoveResult(MoveOutcome.ARCHIVED, source.key, new_key,
                              f"archived ({one_line(exc)}): restore it, then run again")
        if isinstance(exc, CopyNotExact):  # a copy in parts the server could not pin or tag: source kept
            outcome = MoveOutcome.CONFLICT if isinstance(exc, SourceChanged) else MoveOutcome.FAILED
            return MoveResult(outcome, source.key, new_key, f"copy in parts: {one_line(exc)}; the source is kept")
        if kind is Kind.NOT_FOUND or isinstance(exc, _SourceGone):
            return MoveResult(MoveOutcome.SOURCE_GONE, source.key, new_key, "deleted since the listing")
        if kind is Kind.PERMISSION:
            self.permissions.refused(getattr(exc, "operation_name", "") or "CopyObject", _code(exc))
        return MoveResult(MoveOutcome.FAILED, source.key, new_key, f"copy: {one_line(exc)}{_by_hand(exc)}")

    def _heads_destination(self, check_destination: bool, size: int) -> bool:
        """Whether the move HEADs the new key before copying (the real move and the dry run's
        bill ask the same): only where the server does not refuse overwrites itself, for a key
        that may exist or an object copied in parts."""
        return not self.guarded and (check_destination or size > self.options.multipart_threshold)

    def _needs_inspection(self, source: ObjectInfo) -> bool:
        return (self.inspect_all or self.caps.versioned or source.storage_class in ARCHIVE_CLASSES
                or source.storage_class == "INTELLIGENT_TIERING" or source.size > self.options.multipart_threshold)

    def _not_copyable(self, facts: SourceFacts, source: ObjectInfo, new_key: str) -> Optional[MoveResult]:
        if facts.archived:
            return MoveResult(MoveOutcome.ARCHIVED, source.key, new_key,
                              f"archived ({facts.storage_class}{', ' + facts.archive_status if facts.archive_status else ''}"
                              "): restore it, then run again")
        if facts.sse_customer:
            return MoveResult(MoveOutcome.FAILED, source.key, new_key,
                              "encrypted with a customer key (SSE-C): cannot be copied without that key")
        return None

    def _copy(self, source: ObjectInfo, new_key: str, facts: Optional[SourceFacts]) -> Optional[str]:
        size = facts.size if facts else source.size
        version = facts.version_id if facts else None
        if size > self.options.multipart_threshold:
            return multipart_copy(self.client, self.bucket, source.key, new_key, facts, part_size=self.options.part_size,
                                  conditional=self.guarded, pin_source=self.caps.pinned_copy_source,
                                  retrier=self.retrier)
        if is_empty_marker(source.key, size):
            facts = facts or self._head(source.key)
            if facts is None:
                raise _SourceGone()
            put_marker(self.client, self.bucket, source.key, new_key, facts, retrier=self.retrier)
            return facts.version_id
        plain = source.storage_class == "STANDARD" and (facts is None or not facts.encryption())
        if (self.store is not None and plain and size <= OBSTORE_MAX_SIZE and obstore_can_copy(source.key)
                and obstore_can_copy(new_key)):
            try:
                obstore_copy(self.store, source.key, new_key, conditional=self.guarded, retrier=self.retrier)
                return version  # obstore cannot pin a version: a rewrite since the HEAD is kept (see delete)
            except Exception as exc:  # noqa: BLE001 - only its typed errors say what happened
                if kind_of(exc) is not Kind.UNTYPED:
                    raise
                # obstore's generic error has no code: boto3 asks again and its answer has one
                # (a refused SSE-C object fails here, an outage is retried, a 412 is settled).
        return copy_object(self.client, self.bucket, source.key, new_key, version_id=version,
                           storage_class=source.storage_class, facts=facts, conditional=self.guarded,
                           retrier=self.retrier)

    def _delete_step(self, source: ObjectInfo, facts: Optional[SourceFacts], version: Optional[str],
                     outcome: MoveOutcome, new_key: str) -> Union[MoveResult, _Delete]:
        """The copy is in place: what to delete. Where the server ignores a delete's condition,
        a HEAD first proves the source is still what was copied."""
        ref = self._source_ref(source, facts, version)
        if self.unguarded_delete and not self.options.dry_run:
            now = self._head(source.key)
            if now is None:
                return MoveResult(MoveOutcome.SOURCE_GONE, source.key, new_key,
                                  "deleted by someone else once copied")
            if ref.etag and now.etag != normalize_etag(ref.etag):
                return MoveResult(MoveOutcome.CONFLICT, source.key, new_key,
                                  "the source changed after it was copied: both kept")
        return _Delete(ref, outcome, new_key)

    def _settle_existing(self, source: ObjectInfo, new_key: str, facts: Optional[SourceFacts],
                         existing: Optional[SourceFacts]) -> Union[MoveResult, _Delete, None]:
        """Something is at the new key: finish a half-done move, or report a conflict; None when
        the new key is empty again (someone else's write went away): the caller copies again."""
        existing = existing or self._head(new_key)
        if existing is None:
            return None
        facts = facts or self._head(source.key)
        if facts is None:
            return MoveResult(MoveOutcome.SOURCE_GONE, source.key, new_key, "deleted since the listing")
        verdict = content.compare(
            facts, existing, read_limit=self.options.read_limit,
            read_both=lambda: content.read_equal(self.client, self.bucket, source.key, new_key,
                                                 first_version=facts.version_id, retrier=self.retrier))
        if verdict.same:
            mode = self.options.mode
            if self.options.dry_run:
                return MoveResult(MoveOutcome.WOULD_COMPLETE, source.key, new_key, verdict.how)
            if not mode.delete_when_same:
                return MoveResult(mode.when_same, source.key, new_key, verdict.how)
            return self._delete_step(source, facts, facts.version_id, mode.when_same, new_key)
        reason = (f"{new_key!r} exists with other content ({verdict.how})" if verdict.same is False
                  else f"{new_key!r} exists and {verdict.how}")
        return MoveResult(MoveOutcome.CONFLICT, source.key, new_key, reason)

    def _plan(self, source: ObjectInfo, new_key: str, facts: Optional[SourceFacts],
              check_destination: bool) -> MoveResult:
        """--dry-run: what the move would be, from HEADs only where the new key may exist."""
        if check_destination:
            settled = self._settle_existing(source, new_key, facts, self._head(new_key))
            if isinstance(settled, MoveResult):
                return settled
        self._bill(source, facts, check_destination)
        return MoveResult(MoveOutcome.WOULD_MOVE, source.key, new_key)

    def _bill(self, source: ObjectInfo, facts: Optional[SourceFacts], check_destination: bool) -> None:
        """--dry-run: the requests the real move of ``source`` makes beyond the HEADs the dry run
        sent itself (counted as they went out): see _try_move and _delete_step."""
        bill = self.options.bill
        if bill is None:
            return
        size = facts.size if facts else source.size
        large = size > self.options.multipart_threshold
        withheld_heads = int(self._heads_destination(check_destination, size) and not check_destination)
        withheld_heads += int(self.options.mode.delete_after_copy and self.unguarded_delete)
        if withheld_heads:
            bill.add("HEAD", withheld_heads)
        doubled = 0 if self.options.mode.delete_after_copy else size
        if large:
            bill.add("COPY", len(part_ranges(size, self.options.part_size)), copied=size,
                     doubled=doubled)  # UploadPartCopy
            bill.add("PUT", 2)  # CreateMultipartUpload, CompleteMultipartUpload
        else:
            bill.add("COPY", copied=size, doubled=doubled)

    def _head(self, key: str) -> Optional[SourceFacts]:
        try:
            return head_facts(self.client, self.bucket, key, retrier=self.retrier)
        except ClientError as exc:
            if kind_of(exc) is Kind.NOT_FOUND:
                return None
            raise

    def _source_ref(self, source: ObjectInfo, facts: Optional[SourceFacts], version: Optional[str]) -> ObjectRef:
        # A version is the exact object copied; without one, the ETag guards against a rewrite
        # (where the server honours it). Both at once would test the ETag of the current object.
        version = version if self.caps.versioned else None
        etag = None if version else (facts.etag if facts else normalize_etag(source.etag))
        return ObjectRef(source.key, version_id=version, etag=etag)

    # --- after the delete, in the delete buffer's thread -----------------------------
    def _after_delete(self, step: _Delete, source: ObjectInfo, answer, error: Optional[BaseException],
                      result: Future) -> None:
        try:
            if error is None:
                if not isinstance(answer, ObjectDeleteError):
                    result.set_result(MoveResult(step.outcome, source.key, step.new_key))
                    return
                error = answer
            if isinstance(error, ObjectDeleteError):
                result.set_result(self._delete_refused(step, source, error))
            else:
                self._stop(error, result)  # the whole request kept failing: the run stops
        except BaseException as exc:  # noqa: BLE001 - the permission streak stops the run
            self._stop(exc, result)

    def _delete_refused(self, step: _Delete, source: ObjectInfo, error: ObjectDeleteError) -> MoveResult:
        if error.kind is Kind.PRECONDITION:
            return MoveResult(MoveOutcome.CONFLICT, source.key, step.new_key,
                              "the source changed after it was copied: both kept")
        if error.kind is Kind.PERMISSION:
            self.permissions.refused("DeleteObject", error.code)
        return MoveResult(MoveOutcome.FAILED, source.key, step.new_key,
                          f"copied, but the source was not deleted: {error}")


class _SourceGone(Exception):
    """The source vanished between the listing and its copy."""


def _by_hand(exc: BaseException) -> str:
    """How to move by hand an object the server refuses to copy (a 400 on this key alone)."""
    if _code(exc) not in ("InvalidRequest", "NotImplemented"):
        return ""
    return ("; if it is encrypted with a customer key (SSE-C), move it by hand with that key: aws s3 cp "
            "s3://BUCKET/OLD s3://BUCKET/NEW --sse-c AES256 --sse-c-key KEY --sse-c-copy-source AES256 "
            "--sse-c-copy-source-key KEY, then aws s3 rm s3://BUCKET/OLD")


def _code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code", "") or "403"
    if isinstance(exc, BotoCoreError):
        return type(exc).__name__
    return type(exc).__name__
