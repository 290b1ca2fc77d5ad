"""Streamed listings: one page (up to 1,000 keys) in memory at a time, never the whole bucket.

Parsing listings is most of the jobs' own CPU (py-spy on a cleanup: three quarters, half of
it dateutil parsing LastModified), so the clients of :mod:`ponoskit.connections` leave
timestamps as the strings S3 sent; :func:`timestamp` parses one when a job needs it. Pages
come from a plain ``list_objects_v2`` loop: a paginator's first use in each of many threads
loads the service's paginator model again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterator, Optional, Union

from botocore.utils import parse_timestamp


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: str = ""  # as S3 sent it: see timestamp()


def timestamp(value: Union[str, datetime]) -> datetime:
    """An S3 timestamp as an aware datetime, whether the client parsed it already or not."""
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(value)  # what listings send: 2026-11-23T13:20:30.000Z
    except ValueError:
        return parse_timestamp(value)  # HTTP dates, from HEAD and GET


def iter_responses(client, **params) -> Iterator[dict]:
    """Every ListObjectsV2 response for these parameters, following continuation tokens."""
    while True:
        response = client.list_objects_v2(**params)
        yield response
        token = response.get("NextContinuationToken")
        if not response.get("IsTruncated") or not token:
            return
        params["ContinuationToken"] = token


def iter_pages(client, bucket: str, *, prefix: str = "", start_after: Optional[str] = None,
               start_at: Optional[str] = None, end_before: Optional[str] = None,
               page_size: int = 1000) -> Iterator[list[ObjectInfo]]:
    """Pages of objects in key order, from after ``start_after`` (exclusive) or ``start_at``
    (inclusive; the later of the two wins) up to ``end_before`` (exclusive)."""
    params = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
    # S3 only knows an exclusive StartAfter: start just before start_at and drop the few keys
    # that sort between its prefix and itself.
    floor = start_at[:-1] if start_at else None
    if start_after and (floor is None or start_after >= start_at):
        floor, start_at = start_after, None
    if floor:
        params["StartAfter"] = floor
    for page in iter_responses(client, **params):
        objects = [ObjectInfo(o["Key"], o["Size"], o.get("ETag", ""), o.get("LastModified", ""))
                   for o in page.get("Contents", [])]
        if start_at is not None:
            objects = [o for o in objects if o.key >= start_at]
        if end_before is not None:
            inside = [o for o in objects if o.key < end_before]
            if inside:
                yield inside
            if len(inside) < len(objects):
                return
            continue
        if objects:
            yield objects


def iter_objects(client, bucket: str, **kwargs) -> Iterator[ObjectInfo]:
    for page in iter_pages(client, bucket, **kwargs):
        yield from page


def iter_top_level(client, bucket: str, *, start_after: Optional[str] = None,
                   end_before: Optional[str] = None) -> Iterator[str]:
    """Top-level entries: folder prefixes (``x/``) and top-level object keys, in key order."""
    params = {"Bucket": bucket, "Delimiter": "/"}
    if start_after:
        params["StartAfter"] = start_after
    for page in iter_responses(client, **params):
        entries = sorted([p["Prefix"] for p in page.get("CommonPrefixes", [])] +
                         [o["Key"] for o in page.get("Contents", [])])
        for entry in entries:
            if end_before is not None and entry >= end_before:
                return
            yield entry
