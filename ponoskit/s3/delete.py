"""Deletes that never strand a batch and count a key gone only when S3 says so.

DeleteObjects takes 1,000 keys in an XML body and answers 200 even when some failed. Three
ways it goes wrong, each handled here:

- A key XML 1.0 cannot carry (``\\x07``, ``\\uffff``; ``\\r``, which XML turns into ``\\n``)
  fails the whole request (MalformedXML; 500 on some servers): such keys never go in a batch,
  they are deleted one by one with DeleteObject, whose key travels in the URL.
- A batch the server still refuses whole for something other than an outage is split in
  halves, down to single DeleteObject calls, so one bad key costs a few requests, not 999
  stranded neighbours.
- A key counts as deleted only with an explicit ``Deleted`` entry for exactly that key (and
  version). A key the answer does not mention, or mentions under another spelling, is
  deleted again on its own.

:func:`delete_objects` returns one entry per object: None once it is gone, an
:class:`ObjectDeleteError` when S3 refused it. A whole request that keeps failing (throttled,
5xx, unreachable past the retries) raises: the caller stops, nothing is counted as done.
On a versioned bucket an :class:`ObjectRef` with a ``version_id`` deletes exactly that version;
with an ``etag`` and ``conditional`` the delete happens only if the object is still that
content (a rewrite since is a per-key PreconditionFailed, never lost).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from botocore.exceptions import BotoCoreError, ClientError

from .errors import Kind, S3PermissionError, error_code, kind_of, kind_of_code, one_line

MAX_KEYS_PER_REQUEST = 1000
BATCH, SINGLE = "batch", "single"  # where the server honours an ETag condition on deletes
# Characters outside XML 1.0 (and \r, which parsers normalize to \n).
_NOT_IN_XML = re.compile("[\x00-\x08\x0b\x0c\x0d\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class ObjectRef:
    key: str
    version_id: Optional[str] = None
    etag: Optional[str] = None  # with ``conditional``: delete only if the object still has it


class ObjectDeleteError(Exception):
    def __init__(self, bucket: str, key: str, code: str, message: str):
        self.bucket, self.key, self.code = bucket, key, code
        super().__init__(f"s3://{bucket}/{key}: {code} {message}".strip())

    @property
    def kind(self) -> Kind:
        return kind_of_code(self.code)


def xml_safe(key: str) -> bool:
    """True when a DeleteObjects XML body carries ``key`` unchanged."""
    return not _NOT_IN_XML.search(key)


def _ref(item: Union[str, ObjectRef]) -> ObjectRef:
    return item if isinstance(item, ObjectRef) else ObjectRef(item)


class _Call:
    """How this module reaches S3: through the run's retry loop when there is one."""

    def __init__(self, client, retrier):
        self.client, self.retrier = client, retrier

    def __call__(self, what: str, fn, **params):
        if self.retrier is None:
            return fn(**params)
        return self.retrier.call(what, fn, **params)


def delete_objects(client, bucket: str, items: Sequence[Union[str, ObjectRef]], *, retrier=None,
                   conditional: Union[bool, str] = False) -> list[Optional[ObjectDeleteError]]:
    """``conditional``: "batch" (or True) when DeleteObjects honours an ETag per key, "single"
    when only DeleteObject's If-Match is honoured (then objects with an ETag go one by one)."""
    given = [_ref(item) for item in items]
    refs = list(dict.fromkeys(given))  # a key twice in one request: S3 may refuse the whole batch
    if len(refs) < len(given):
        answers = dict(zip(refs, delete_objects(client, bucket, refs, retrier=retrier, conditional=conditional)))
        return [answers[ref] for ref in given]
    results: list[Optional[ObjectDeleteError]] = [None] * len(refs)
    call = _Call(client, retrier)
    one_by_one = conditional == SINGLE
    batchable, singles = [], []
    for i, ref in enumerate(refs):
        (batchable if xml_safe(ref.key) and not (one_by_one and ref.etag) else singles).append(i)
    for start in range(0, len(batchable), MAX_KEYS_PER_REQUEST):
        singles += _delete_batch(call, bucket, refs, batchable[start:start + MAX_KEYS_PER_REQUEST], results,
                                 conditional)
    for index in sorted(set(singles)):
        results[index] = _delete_one(call, bucket, refs[index], conditional)
    return results


def _entry(ref: ObjectRef, conditional: bool) -> dict:
    entry = {"Key": ref.key}
    if ref.version_id:
        entry["VersionId"] = ref.version_id
    if conditional in (True, BATCH) and ref.etag:
        entry["ETag"] = _quoted(ref.etag)
    return entry


def _delete_batch(call: _Call, bucket: str, refs: list[ObjectRef], indexes: list[int],
                  results: list, conditional: bool) -> list[int]:
    """Delete ``indexes`` in one request; return the indexes still to delete one by one."""
    if len(indexes) == 1:
        return indexes
    try:
        response = call("DeleteObjects", call.client.delete_objects, Bucket=bucket, Delete={
            "Objects": [_entry(refs[i], conditional) for i in indexes], "Quiet": False})
    except (ClientError, BotoCoreError) as exc:
        kind = kind_of(exc)
        if kind is Kind.PERMISSION:
            raise S3PermissionError(f"DeleteObjects on bucket {bucket!r} denied ({one_line(exc)}): "
                                    "the job needs s3:DeleteObject (and s3:DeleteObjectVersion on a "
                                    "versioned bucket)") from None
        if kind in (Kind.THROTTLED, Kind.TRANSIENT):
            raise
        # Refused whole (MalformedXML and the like): halve until the bad key is alone.
        middle = len(indexes) // 2
        return (_delete_batch(call, bucket, refs, indexes[:middle], results, conditional)
                + _delete_batch(call, bucket, refs, indexes[middle:], results, conditional))
    # A version we named comes back as VersionId; a delete by key comes back without one.
    deleted = {(d.get("Key"), d.get("VersionId")) for d in response.get("Deleted", [])}
    errors = {e.get("Key"): e for e in response.get("Errors", [])}
    again = []
    for i in indexes:
        ref = refs[i]
        if (ref.key, ref.version_id) in deleted:
            results[i] = None
        elif ref.key in errors and _per_key_final(errors[ref.key]):
            error = errors[ref.key]
            results[i] = ObjectDeleteError(bucket, ref.key, error.get("Code", ""), error.get("Message", ""))
        else:
            again.append(i)  # not confirmed, or a per-key error worth one more try alone
    return again


def _per_key_final(error: dict) -> bool:
    """A per-key error that another attempt will not change (InternalError and SlowDown may)."""
    return kind_of_code(error.get("Code", "")) not in (Kind.THROTTLED, Kind.TRANSIENT)


def _delete_one(call: _Call, bucket: str, ref: ObjectRef, conditional: bool) -> Optional[ObjectDeleteError]:
    params = {"Bucket": bucket, "Key": ref.key}
    if ref.version_id:
        params["VersionId"] = ref.version_id
    if conditional and ref.etag:
        params["IfMatch"] = _quoted(ref.etag)
    try:
        call("DeleteObject", call.client.delete_object, **params)
        return None
    except (ClientError, BotoCoreError) as exc:
        kind = kind_of(exc)
        if kind in (Kind.THROTTLED, Kind.TRANSIENT):
            raise
        if kind is Kind.NOT_FOUND:
            return None  # gone already: what a delete wants
        error = exc.response.get("Error", {}) if isinstance(exc, ClientError) else {}
        return ObjectDeleteError(bucket, ref.key, error_code(exc) or type(exc).__name__,
                                 error.get("Message", "") or one_line(exc))


def _quoted(etag: str) -> str:
    return f'"{etag.strip(chr(34))}"'


def delete_keys(client, bucket: str, keys: Sequence[Union[str, ObjectRef]]) -> list[Optional[ObjectDeleteError]]:
    """:func:`delete_objects` without the run's retry loop (callers that have none)."""
    return delete_objects(client, bucket, keys)


def delete_buffer(context, bucket: str, *, name: Optional[str] = None, interval: float = 0.5,
                  conditional: Union[bool, str] = False, max_pending: Optional[int] = None,
                  halted: Callable[[], Optional[BaseException]] = lambda: None):
    """The context's tracked buffer that deletes objects of ``bucket`` in batches of 1,000.

    ``halted`` returns the error that broke the run, if any: batches still queued then fail
    with it at once instead of asking S3 again. ``max_pending`` bounds the queue (producers
    wait once it is full: memory stays flat behind a slow server)."""
    client, retrier = context.s3, context.retrier  # built in the caller's thread, shared after

    def flush(batch: list) -> list:
        error = halted()
        if error is not None:
            return [error] * len(batch)
        return delete_objects(client, bucket, batch, retrier=retrier, conditional=conditional)

    return context.buffer(name or f"delete:{bucket}", flush, max_size=MAX_KEYS_PER_REQUEST, interval=interval,
                          max_pending=max_pending)
