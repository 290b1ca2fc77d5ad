"""Streamed listings: one page (up to 1,000 keys) in memory at a time, never the whole bucket.

Parsing listings is most of the jobs' own CPU (py-spy on a cleanup: three quarters, half of
it dateutil parsing LastModified), so the clients of :mod:`ponoskit.connections` leave
timestamps as the strings S3 sent; :func:`timestamp` parses one when a job needs it. Pages
come from a plain ``list_objects_v2`` loop: a paginator's first use in each of many threads
loads the service's paginator model again. botocore asks for URL-encoded keys and decodes
them, so keys XML cannot carry (control characters) list exactly.

A listing that fails after its retries raises a typed error (transient: exit 75;
permission: exit 2), never a botocore traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterator, Optional, Union

from botocore.exceptions import BotoCoreError, ClientError
from botocore.utils import parse_timestamp

from ..keyrange import KeyRange
from .errors import raise_typed


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    last_modified: str = ""  # as S3 sent it: see timestamp()
    storage_class: str = "STANDARD"


def timestamp(value: Union[str, datetime]) -> datetime:
    """An S3 timestamp as an aware datetime, whether the client parsed it already or not."""
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(value)  # what listings send: 2026-11-23T13:20:30.000Z
    except ValueError:
        return parse_timestamp(value)  # HTTP dates, from HEAD and GET


def iter_responses(client, *, retrier=None, **params) -> Iterator[dict]:
    """Every ListObjectsV2 response for these parameters, following continuation tokens."""
    while True:
        try:
            if retrier is None:
                response = client.list_objects_v2(**params)
            else:
                response = retrier.call("ListObjectsV2", client.list_objects_v2, **params)
        except (ClientError, BotoCoreError) as exc:
            raise_typed(exc, f"listing s3://{params['Bucket']}/{params.get('Prefix', '')}")
        yield response
        token = response.get("NextContinuationToken")
        if not response.get("IsTruncated") or not token:
            return
        params["ContinuationToken"] = token


def iter_pages(client, bucket: str, *, prefix: str = "", start_after: Optional[str] = None,
               key_range: KeyRange = KeyRange(), page_size: int = 1000,
               retrier=None) -> Iterator[list[ObjectInfo]]:
    """Pages of objects of ``key_range`` in key order, from after ``start_after`` (exclusive)."""
    params = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
    start_at = key_range.start
    # S3 only knows an exclusive StartAfter: start just before the range's start and drop the
    # few keys that sort between its prefix and itself. The later of the two starts wins.
    floor = start_at[:-1] if start_at else None
    if start_after and (start_at is None or start_after >= start_at):
        floor, start_at = start_after, None
    if floor:
        params["StartAfter"] = floor
    end_before = key_range.end
    for page in iter_responses(client, retrier=retrier, **params):
        objects = [ObjectInfo(o["Key"], o["Size"], o.get("ETag", ""), o.get("LastModified", ""),
                              o.get("StorageClass") or "STANDARD")
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


def iter_top_level(client, bucket: str, *, retrier=None) -> Iterator[str]:
    """Top-level entries: folder prefixes (``x/``) and top-level object keys, in key order.

    Only for sweeps that tolerate a server leaving out a folder (some omit one whose objects
    all sit deeper): nothing that must never overwrite may rest on it.
    """
    for page in iter_responses(client, retrier=retrier, Bucket=bucket, Delimiter="/"):
        yield from sorted([p["Prefix"] for p in page.get("CommonPrefixes", [])] +
                          [o["Key"] for o in page.get("Contents", [])])
