"""Folder markers: keys ending in ``/``, moved like any other key of a task's folder.

A marker is a key like any other (``<task>/dir/``; S3 lets it hold bytes too), but not every
server can copy one: SeaweedFS keeps such a key as a directory and answers CopyObject with
NoSuchKey. An empty marker is therefore written anew at its new key with PutObject, carrying
what the source had (Content-Type, metadata, storage class, encryption). PutObject honours
``If-None-Match: *`` on every server tried (AWS, SeaweedFS, moto, Ceph RGW), so a marker
never overwrites. A marker holding bytes goes through CopyObject, byte for byte.
"""

from __future__ import annotations

from urllib.parse import quote

from .copy import SourceFacts


def is_empty_marker(key: str, size: int) -> bool:
    return key.endswith("/") and size == 0


def put_marker(client, bucket: str, source: str, destination: str, facts: SourceFacts, *, retrier=None) -> None:
    """Write the empty marker ``source`` anew at ``destination``, never over an existing key."""
    params = {"Bucket": bucket, "Key": destination, "Body": b"", "IfNoneMatch": "*", "Metadata": facts.metadata,
              **facts.content, **facts.encryption()}
    if facts.storage_class != "STANDARD":
        params["StorageClass"] = facts.storage_class
    if facts.tag_count:
        version = {"VersionId": facts.version_id} if facts.version_id else {}
        tags = _call(retrier, "GetObjectTagging", client.get_object_tagging, Bucket=bucket, Key=source,
                     **version)["TagSet"]
        params["Tagging"] = "&".join(f"{quote(t['Key'], safe='')}={quote(t['Value'], safe='')}" for t in tags)
    _call(retrier, "PutObject", client.put_object, **params)


def _call(retrier, what, fn, **params):
    return retrier.call(what, fn, **params) if retrier else fn(**params)
