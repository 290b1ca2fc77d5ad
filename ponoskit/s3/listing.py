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
               end_before: Optional[str] = None, page_size: int = 1000) -> Iterator[list[ObjectInfo]]:
    """Pages of objects in key order, from after ``start_after`` up to (excluding) ``end_before``."""
    params = {"Bucket": bucket, "Prefix": prefix, "PaginationConfig": {"PageSize": page_size}}
    if start_after:
        params["StartAfter"] = start_after
    for page in client.get_paginator("list_objects_v2").paginate(**params):
        objects = [ObjectInfo(o["Key"], o["Size"], o.get("ETag", "")) for o in page.get("Contents", [])]
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
