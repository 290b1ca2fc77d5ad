"""What a maintenance run's bill adds by hand (ponoskit.s3.bill counts the rest).

A real run reports what it sent (``report.info["s3_requests"]``, a RequestCounter); a dry run
sends the same listings as the real run would and adds what it does not send itself (the
canaries, the DeleteObjects batches), then reports the bill with an estimated cost
(``report.info["bill"]``).
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Mapping, Optional

from ponoskit.s3.bill import Bill, merged

_recorded_lock = threading.Lock()


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


_recorded: "weakref.WeakKeyDictionary[object, dict[str, Bill]]" = weakref.WeakKeyDictionary()


def record(report, name: str, bill: Bill, prices: Optional[dict] = None) -> Bill:
    """Put ``bill`` in ``report.info[name]``, added to what an earlier job of the same run put
    there (``cleanup --orphans`` runs two jobs on one report); returns the total."""
    with _recorded_lock:
        kept = _recorded.setdefault(report, {})
        total = kept[name] = merged(kept.get(name), bill)
    report.info[name] = total.to_dict(prices) if name == "bill" else dict(total.to_dict()["requests"])
    return total
