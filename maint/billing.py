"""The S3 requests a maintenance run makes, by billing type: counted, and estimated for a dry run.

Every HTTP attempt the run's client sends is counted (botocore's ``before-send`` event, so
botocore's own retries count too: S3 bills them). A real run reports what it sent
(``report.info["s3_requests"]``); a dry run sends the same listings as the real run would and
adds what it does not send itself (the canaries, the DeleteObjects batches), then reports the
bill with an estimated cost (``report.info["bill"]``, ponoskit.s3.bill).
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Mapping, Optional

from ponoskit.s3.bill import Bill

# S3 operation -> the price tier AWS bills it in. What is not named here is billed as GET
# ("GET and all other requests"); DeleteObjects is a DELETE (not charged).
OPERATION_TYPES = {
    "ListObjectsV2": "LIST", "ListObjects": "LIST", "ListObjectVersions": "LIST",
    "ListMultipartUploads": "LIST", "ListParts": "LIST",
    "DeleteObjects": "DELETE", "DeleteObject": "DELETE",
    "PutObject": "PUT", "CreateMultipartUpload": "PUT", "UploadPart": "PUT", "CompleteMultipartUpload": "PUT",
    "CopyObject": "COPY", "UploadPartCopy": "COPY",
    "HeadObject": "HEAD", "HeadBucket": "HEAD",
}
_recorded_lock = threading.Lock()


class RequestCounter:
    """Counts the requests one boto3 client sends, by type (thread-safe), while it is entered:
    the botocore hook is registered on enter and removed on exit, so nothing outlives the job."""

    def __init__(self, client):
        self.bill = Bill()
        self._client = client
        self._lock = threading.Lock()
        self._hook_id = f"ponos-request-counter-{id(self)}"

    def __enter__(self) -> "RequestCounter":
        self._client.meta.events.register("before-send.s3", self._sent, unique_id=self._hook_id)
        return self

    def __exit__(self, *exc) -> None:
        self._client.meta.events.unregister("before-send.s3", unique_id=self._hook_id)

    def _sent(self, event_name: str = "", **_) -> None:
        kind = OPERATION_TYPES.get(event_name.rsplit(".", 1)[-1], "GET")
        with self._lock:
            self.bill.add(kind)
        return None  # a before-send handler that returns something replaces the response

    def sent(self) -> Bill:
        """The requests sent since it was entered (a copy)."""
        with self._lock:
            copy = Bill()
            copy.requests.update(self.bill.requests)
            return copy


def delete_requests(keys_by_bucket: Mapping[str, int], *, shards: int = 1, per_request: int = 1000) -> int:
    """DeleteObjects requests for one batch of keys per bucket: 1,000 keys a request, and at
    least one request per delete shard that gets keys (the purger spreads a batch over shards)."""
    return sum(max(math.ceil(n / per_request), min(shards, n)) for n in keys_by_bucket.values() if n)


def canary_requests(buckets: int) -> Bill:
    """What the permission preflight of a real run sends per bucket that a dry run does not:
    the stale-canary listing, the canary's PUT and its DELETE."""
    bill = Bill()
    for kind in ("LIST", "PUT", "DELETE"):
        bill.add(kind, buckets)
    return bill


def merged(*bills: Optional[Bill]) -> Bill:
    total = Bill()
    for bill in bills:
        if bill is not None:
            total.requests.update(bill.requests)
    return total


_recorded: "weakref.WeakKeyDictionary[object, dict[str, Bill]]" = weakref.WeakKeyDictionary()


def record(report, name: str, bill: Bill, prices: Optional[dict] = None) -> Bill:
    """Put ``bill`` in ``report.info[name]``, added to what an earlier job of the same run put
    there (``cleanup --orphans`` runs two jobs on one report); returns the total."""
    with _recorded_lock:
        kept = _recorded.setdefault(report, {})
        total = kept[name] = merged(kept.get(name), bill)
    report.info[name] = total.to_dict(prices) if name == "bill" else dict(total.to_dict()["requests"])
    return total
