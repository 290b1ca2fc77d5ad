"""What a run's S3 requests cost: counted by type, priced per 1,000 requests.

A dry run's bill is made one way for every job: the requests the dry run sends are counted as
they go out (:class:`RequestCounter`, botocore's retries included: S3 bills them), and the job
adds by hand only what the real run would send and the dry run withholds (the copies, the
DeleteObjects batches, the canaries). An operator sees the bill before paying it. Prices
default to AWS S3 Standard's us-east-1 list prices and are overridden with
``--prices LIST=0.005,HEAD=0.0004`` (USD per 1,000 requests; storage in USD per GB-month).
DeleteObjects is counted as DELETE: AWS does not charge deletes.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Optional

from ponoskit.errors import ConfigError

REQUEST_TYPES = ("LIST", "COPY", "PUT", "HEAD", "GET", "DELETE")
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
# USD per 1,000 requests (S3 Standard, us-east-1); STORAGE is USD per GB-month.
DEFAULT_PRICES = {"LIST": 0.005, "COPY": 0.005, "PUT": 0.005, "HEAD": 0.0004, "GET": 0.0004,
                  "DELETE": 0.0, "STORAGE": 0.023}


def parse_prices(text: Optional[str]) -> dict[str, float]:
    """``LIST=0.005,COPY=0.005`` over the defaults; ConfigError on anything else."""
    prices = dict(DEFAULT_PRICES)
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, _, value = part.partition("=")
        name = name.strip().upper()
        try:
            price = float(value)
        except ValueError:
            price = -1.0
        if name not in prices or price < 0:
            raise ConfigError(f"--prices: {part!r} is not TYPE=USD with TYPE one of "
                              f"{', '.join(prices)} (example: LIST=0.005,HEAD=0.0004)")
        prices[name] = price
    return prices


@dataclass
class Bill:
    requests: Counter = field(default_factory=Counter)
    bytes_copied: int = 0
    storage_doubled_bytes: int = 0  # what a copy phase keeps twice until its delete phase
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, kind: str, n: int = 1, *, copied: int = 0, doubled: int = 0) -> None:
        """``n`` requests of ``kind``; ``copied`` bytes the copies move, ``doubled`` bytes kept twice."""
        if kind not in REQUEST_TYPES:
            raise ValueError(f"unknown S3 request type {kind!r}")
        with self._lock:  # worker threads add at once
            self.requests[kind] += n
            self.bytes_copied += copied
            self.storage_doubled_bytes += doubled

    def to_dict(self, prices: Optional[dict[str, float]] = None) -> dict:
        prices = prices or DEFAULT_PRICES
        request_usd = sum(n * prices[kind] / 1000 for kind, n in self.requests.items())
        storage_usd = self.storage_doubled_bytes / 1e9 * prices["STORAGE"]
        return {
            "requests": {kind: self.requests[kind] for kind in REQUEST_TYPES if self.requests[kind]},
            "bytes_copied": self.bytes_copied,
            "storage_doubled_bytes": self.storage_doubled_bytes,
            "estimated_usd": {"requests": round(request_usd, 4),
                              "storage_per_month": round(storage_usd, 4)},
            "prices": {k: v for k, v in prices.items()},
        }

    def summary(self, prices: Optional[dict[str, float]] = None) -> str:
        bill = self.to_dict(prices)
        requests = ", ".join(f"{kind} {n:,}" for kind, n in bill["requests"].items()) or "none"
        line = (f"S3 requests: {requests}; {self.bytes_copied / 2**30:.2f} GiB copied; "
                f"about ${bill['estimated_usd']['requests']:.2f} in requests")
        if self.storage_doubled_bytes:
            line += (f"; {self.storage_doubled_bytes / 2**30:.2f} GiB stored twice until the delete phase "
                     f"(about ${bill['estimated_usd']['storage_per_month']:.2f} per month)")
        return line


def merged(*bills: Optional[Bill]) -> Bill:
    total = Bill()
    for bill in bills:
        if bill is not None:
            total.requests.update(bill.requests)
            total.bytes_copied += bill.bytes_copied
            total.storage_doubled_bytes += bill.storage_doubled_bytes
    return total


class RequestCounter:
    """Counts the requests one boto3 client sends, by type (thread-safe), while it is entered:
    the botocore hook is registered on enter and removed on exit, so nothing outlives the job."""

    def __init__(self, client):
        self.bill = Bill()
        self._client = client
        self._lock = threading.Lock()
        self._paused = False
        self._hook_id = f"ponos-request-counter-{id(self)}"

    def __enter__(self) -> "RequestCounter":
        self._client.meta.events.register("before-send.s3", self._sent, unique_id=self._hook_id)
        return self

    def __exit__(self, *exc) -> None:
        self._client.meta.events.unregister("before-send.s3", unique_id=self._hook_id)

    def _sent(self, event_name: str = "", **_) -> None:
        kind = OPERATION_TYPES.get(event_name.rsplit(".", 1)[-1], "GET")
        with self._lock:
            if not self._paused:
                self.bill.add(kind)
        return None  # a before-send handler that returns something replaces the response

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Requests a dry run sends that the real run would not (not billed)."""
        with self._lock:
            self._paused = True
        try:
            yield
        finally:
            with self._lock:
                self._paused = False

    def sent(self) -> Bill:
        """The requests sent since it was entered (a copy)."""
        with self._lock:
            return merged(self.bill)
