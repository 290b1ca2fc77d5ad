"""Helpers shared by the integration tests (plain functions; fixtures live in conftest.py and
tests/fixtures/)."""

from __future__ import annotations


def list_keys(s3, bucket: str) -> dict[str, dict]:
    """Every object of a bucket: key -> {size, etag}."""
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = {"size": obj["Size"], "etag": obj["ETag"]}
    return found
