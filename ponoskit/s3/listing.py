"""Streamed listings: one page (up to 1,000 keys) in memory at a time, never the whole bucket."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


def iter_pages(client, bucket: str, *, prefix: str = "", start_after: Optional[str] = None,
               start_at: Optional[str] = None, end_before: Optional[str] = None,
               page_size: int = 1000) -> Iterator[list[ObjectInfo]]:
    """Pages of objects in key order, from after ``start_after`` (exclusive) or ``start_at``
    (inclusive; the later of the two wins) up to ``end_before`` (exclusive)."""
    params = {"Bucket": bucket, "Prefix": prefix, "PaginationConfig": {"PageSize": page_size}}
    # S3 only knows an exclusive StartAfter: start just before start_at and drop the few keys
    # that sort between its prefix and itself.
    floor = start_at[:-1] if start_at else None
    if start_after and (floor is None or start_after >= start_at):
        floor, start_at = start_after, None
    if floor:
        params["StartAfter"] = floor
    for page in client.get_paginator("list_objects_v2").paginate(**params):
        objects = [ObjectInfo(o["Key"], o["Size"], o.get("ETag", "")) for o in page.get("Contents", [])]
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
    for page in client.get_paginator("list_objects_v2").paginate(**params):
        entries = sorted([p["Prefix"] for p in page.get("CommonPrefixes", [])] +
                         [o["Key"] for o in page.get("Contents", [])])
        for entry in entries:
            if end_before is not None and entry >= end_before:
                return
            yield entry
