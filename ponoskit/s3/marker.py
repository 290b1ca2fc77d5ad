"""Folder markers: keys ending in ``/``, moved like any other key of a task's folder.

A marker is a key like any other (``<task>/dir/``; S3 lets it hold bytes too), but not every
server can copy one: SeaweedFS keeps such a key as a directory and answers CopyObject with
NoSuchKey. An empty marker is therefore written anew at its new key with PutObject, carrying
what the source had (Content-Type, metadata, storage class, encryption). PutObject honours
``If-None-Match: *`` on every server tried (AWS, SeaweedFS, moto, Ceph RGW), so a marker
never overwrites. A marker holding bytes goes through CopyObject, byte for byte.

SeaweedFS also answers 412 where no object is but a folder is: the keys inside it moved first
made ``<task>/dir/`` a folder, which a listing does not show as a key. The marker is then
written without the condition: there is no object to overwrite, and without it the new
layout would lack the marker the legacy one had.
"""

from __future__ import annotations

from urllib.parse import quote

from botocore.exceptions import ClientError

from .copy import SourceFacts
from .errors import error_code


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
    try:
        _call(retrier, "PutObject", client.put_object, **params)
    except ClientError as exc:
        if error_code(exc) not in ("PreconditionFailed", "412") or _listed(client, bucket, destination, retrier):
            raise
        params.pop("IfNoneMatch")
        _call(retrier, "PutObject", client.put_object, **params)


def _listed(client, bucket: str, key: str, retrier) -> bool:
    """Whether a listing shows ``key`` itself: an object, not a folder alone."""
    found = _call(retrier, "ListObjectsV2", client.list_objects_v2, Bucket=bucket, Prefix=key, MaxKeys=1)
    return any(entry["Key"] == key for entry in found.get("Contents", []))


def _call(retrier, what, fn, **params):
    return retrier.call(what, fn, **params) if retrier else fn(**params)
