"""Server-side copies within one bucket that keep everything the source had; bytes never leave S3.

What a plain CopyObject loses, and how each path keeps it:

- the storage class (a copy is STANDARD unless told): passed from the listing or the HEAD;
- SSE-KMS and its key, DSSE, SSE-S3 (a copy gets the bucket's default): passed from the HEAD
  when the source was inspected (see :class:`SourceFacts`);
- on the multipart path also tags, Content-Type, Cache-Control, Content-Disposition,
  Content-Encoding, Content-Language, Expires, website redirect and user metadata, which a
  CreateMultipartUpload does not take from anywhere: all read from the HEAD (tags with
  GetObjectTagging) and set explicitly. Some servers (Ceph RGW 16.2) drop the tags given to
  CreateMultipartUpload: the copy's tags are read back and set again if needed
  (:class:`TagsNotKept`, the copy deleted, if they still differ).

Every part of a multipart copy is pinned to the source's ETag (``x-amz-copy-source-if-match``)
so a source rewritten mid-copy fails the copy instead of mixing two versions. Where the server
ignores the pin (moto, Ceph RGW 16.2: the probe in :mod:`ponoskit.s3.capabilities` says), the
copy is proven afterwards instead: the source is HEADed again, and a copy of a source that
changed is deleted (:class:`SourceChanged`).

Never overwrite: with ``conditional``, CopyObject and CompleteMultipartUpload carry
``If-None-Match: *`` and a key that exists answers 412 (409 on a race), which the caller
settles. Archived objects (GLACIER, DEEP_ARCHIVE not restored, Intelligent-Tiering archive
tiers) are not copyable: :attr:`SourceFacts.archived` says so before anyone tries.

Three paths, by size and by what the key and the source need:
- :func:`obstore_copy`: small standard objects with keys obstore round-trips (the fast path);
- :func:`copy_object`: boto3 CopyObject up to the multipart threshold;
- :func:`multipart_copy`: above it, UploadPartCopy in parallel parts, each a request of its
  own with its own timeout (a 5 GiB CopyObject can take minutes); a failure aborts the upload.
"""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Optional, Union
from urllib.parse import quote

from botocore.exceptions import BotoCoreError, ClientError

from .errors import Kind, kind_of
from .listing import timestamp

MIN_PART_SIZE = 5 * 1024 ** 2
MAX_PARTS = 10_000
COPY_OBJECT_LIMIT = 5 * 1024 ** 3
MAX_PART_SIZE = 5 * 1024 ** 3
# Above this, a copy goes in parts: obstore's timeout is per request, and one part of a
# multipart copy is a request short enough for any timeout.
OBSTORE_MAX_SIZE = 1024 ** 3
DEFAULT_MULTIPART_THRESHOLD = 1024 ** 3
ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")
ARCHIVE_TIERS = ("ARCHIVE_ACCESS", "DEEP_ARCHIVE_ACCESS")  # Intelligent-Tiering's opt-in tiers
KMS_MODES = ("aws:kms", "aws:kms:dsse")
CONTENT_FIELDS = ("ContentType", "ContentEncoding", "ContentDisposition", "ContentLanguage", "CacheControl",
                  "Expires", "WebsiteRedirectLocation")
CHECKSUM_FIELDS = ("ChecksumCRC64NVME", "ChecksumCRC32C", "ChecksumCRC32", "ChecksumSHA256", "ChecksumSHA1")


def obstore_can_copy(key: str) -> bool:
    """True when obstore's path model round-trips ``key`` unchanged."""
    if not key or key.startswith("/") or key.endswith("/"):
        return False
    if any(part in ("", ".", "..") for part in key.split("/")):
        return False
    return not any(ord(char) < 32 or ord(char) == 127 or char == "\\" for char in key)


@dataclass(frozen=True)
class SourceFacts:
    """What a HEAD says about an object: enough to copy it whole and to compare it."""
    size: int
    etag: str
    version_id: Optional[str] = None
    storage_class: str = "STANDARD"
    sse: Optional[str] = None  # AES256, aws:kms, aws:kms:dsse
    kms_key: Optional[str] = None
    bucket_key: Optional[bool] = None
    sse_customer: bool = False  # SSE-C: not copyable without the customer's key
    restore: Optional[str] = None  # x-amz-restore: ongoing-request="false", expiry-date=...
    archive_status: Optional[str] = None
    tag_count: int = 0
    content: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    checksums: dict = field(default_factory=dict)
    checksum_type: Optional[str] = None  # FULL_OBJECT or COMPOSITE
    last_modified: Union[str, datetime, None] = None  # as the client gave it (see listing.timestamp)

    @classmethod
    def from_head(cls, head: dict) -> "SourceFacts":
        headers = head.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        return cls(
            size=head.get("ContentLength", 0), etag=normalize_etag(head.get("ETag", "")),
            version_id=_real_version(head.get("VersionId")),
            storage_class=head.get("StorageClass") or "STANDARD",
            sse=head.get("ServerSideEncryption"), kms_key=head.get("SSEKMSKeyId"),
            bucket_key=head.get("BucketKeyEnabled"), sse_customer=bool(head.get("SSECustomerAlgorithm")),
            restore=head.get("Restore"), archive_status=head.get("ArchiveStatus"),
            tag_count=int(headers.get("x-amz-tagging-count") or 0),
            content={name: head[name] for name in CONTENT_FIELDS if head.get(name)},
            metadata=dict(head.get("Metadata") or {}),
            checksums={name: head[name] for name in CHECKSUM_FIELDS if head.get(name)},
            checksum_type=head.get("ChecksumType"), last_modified=head.get("LastModified"))

    @property
    def archived(self) -> bool:
        """Not copyable until restored (InvalidObjectState)."""
        if self.archive_status in ARCHIVE_TIERS:
            return True
        return self.storage_class in ARCHIVE_CLASSES and 'ongoing-request="false"' not in (self.restore or "")

    @property
    def md5_etag(self) -> bool:
        """Whether the ETag is the MD5 of the bytes: single part, neither SSE-KMS nor SSE-C."""
        return "-" not in self.etag and self.sse not in KMS_MODES and not self.sse_customer

    def encryption(self) -> dict:
        """The parameters that give a copy the source's server-side encryption."""
        if self.sse in KMS_MODES:
            params = {"ServerSideEncryption": self.sse}
            if self.kms_key:
                params["SSEKMSKeyId"] = self.kms_key
            if self.bucket_key is not None:
                params["BucketKeyEnabled"] = self.bucket_key
            return params
        return {"ServerSideEncryption": self.sse} if self.sse else {}


class CopyNotExact(Exception):
    """A multipart copy completed, but is not an exact copy of its source: the source must stay."""


class SourceChanged(CopyNotExact):
    """The source changed while its parts were copied, on a server that ignores the pin: the
    new object (which may mix two versions) was deleted; the source is untouched."""


class TagsNotKept(CopyNotExact):
    """The copy's tags still differ from the source's after PutObjectTagging: the copy was
    deleted (a later run would take its bytes for a finished move), the source is kept."""


def normalize_etag(etag: Optional[str]) -> str:
    """ETags without their quotes: some servers quote them in HEAD and not in listings."""
    return (etag or "").strip().strip('"')


def _real_version(version: Optional[str]) -> Optional[str]:
    return None if version in (None, "", "null") else version


def head_facts(client, bucket: str, key: str, *, version_id: Optional[str] = None, retrier=None) -> SourceFacts:
    params = {"Bucket": bucket, "Key": key, "ChecksumMode": "ENABLED"}
    if version_id:
        params["VersionId"] = version_id
    head = retrier.call("HeadObject", client.head_object, **params) if retrier else client.head_object(**params)
    return SourceFacts.from_head(head)


def _call(retrier, what, fn, **params):
    return retrier.call(what, fn, **params) if retrier else fn(**params)


def copy_source(bucket: str, key: str, version_id: Optional[str]) -> dict:
    source = {"Bucket": bucket, "Key": key}
    if version_id:
        source["VersionId"] = version_id
    return source


def copy_object(client, bucket: str, source: str, destination: str, *, version_id: Optional[str] = None,
                storage_class: Optional[str] = None, facts: Optional[SourceFacts] = None,
                conditional: bool = False, retrier=None) -> Optional[str]:
    """CopyObject, keeping the storage class and (with ``facts``) the encryption; returns the
    version of the source that was copied (None on an unversioned bucket)."""
    params = {"Bucket": bucket, "Key": destination, "CopySource": copy_source(bucket, source, version_id)}
    storage_class = (facts.storage_class if facts else None) or storage_class
    if storage_class and storage_class != "STANDARD":
        params["StorageClass"] = storage_class
    if facts is not None:
        params.update(facts.encryption())
    if conditional:
        params["IfNoneMatch"] = "*"
    answer = _call(retrier, "CopyObject", client.copy_object, **params)
    return _real_version(answer.get("CopySourceVersionId")) or version_id


def obstore_copy(store, source: str, destination: str, *, conditional: bool, retrier=None) -> None:
    import obstore
    if retrier is None:
        obstore.copy(store, source, destination, overwrite=not conditional)
    else:
        retrier.call("CopyObject", obstore.copy, store, source, destination, overwrite=not conditional)


def part_ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """Inclusive byte ranges; parts grow if needed to stay within S3's 10,000 parts."""
    part_size = max(min(part_size, MAX_PART_SIZE), MIN_PART_SIZE, math.ceil(size / MAX_PARTS))
    return [(start, min(start + part_size, size) - 1) for start in range(0, size, part_size)] or [(0, -1)]


def multipart_copy(client, bucket: str, source: str, destination: str, facts: SourceFacts, *, part_size: int,
                   conditional: bool = False, pin_source: bool = True, retrier=None,
                   part_workers: int = 8) -> Optional[str]:
    """UploadPartCopy in parallel parts, everything of the source set on the new upload; returns
    the version of the source that was copied.

    ``pin_source``: the server honours ``x-amz-copy-source-if-match`` on each part. When it
    does not, the source is checked after the copy instead (:class:`SourceChanged`).
    """
    tags = _source_tags(client, bucket, source, facts, retrier) if facts.tag_count else []
    upload_id = _call(retrier, "CreateMultipartUpload", client.create_multipart_upload,
                      **_upload_params(bucket, destination, facts, tags))["UploadId"]
    source_ref = copy_source(bucket, source, facts.version_id)
    # Pin the source: if it changes mid-copy the parts would mix two versions. A server that
    # ignores the header gets none (one that does not know it may refuse it).
    pin = {"CopySourceIfMatch": f'"{facts.etag}"'} if pin_source else {}

    def copy_part(number: int, first: int, last: int) -> dict:
        answer = _call(retrier, "UploadPartCopy", client.upload_part_copy,
                       Bucket=bucket, Key=destination, UploadId=upload_id, PartNumber=number, CopySource=source_ref,
                       **pin, **({"CopySourceRange": f"bytes={first}-{last}"} if last >= first else {}))
        return {"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]}

    try:
        ranges = part_ranges(facts.size, part_size)
        with ThreadPoolExecutor(max_workers=max(1, min(part_workers, len(ranges))),
                                thread_name_prefix="s3-part") as parts_pool:
            futures = [parts_pool.submit(copy_part, n, first, last) for n, (first, last) in enumerate(ranges, 1)]
            parts = [future.result() for future in futures]
        done = _call(retrier, "CompleteMultipartUpload", client.complete_multipart_upload, Bucket=bucket,
                     Key=destination, UploadId=upload_id, MultipartUpload={"Parts": parts},
                     **({"IfNoneMatch": "*"} if conditional else {}))
    except BaseException:
        with contextlib.suppress(Exception):  # the copy's own error is the one to report
            client.abort_multipart_upload(Bucket=bucket, Key=destination, UploadId=upload_id)
        raise
    copied = _real_version(done.get("VersionId"))  # the new object's version: what we wrote
    if not pin_source:
        _prove_source_unchanged(client, bucket, source, destination, facts, copied, retrier)
    if tags:
        _keep_tags(client, bucket, destination, copied, tags, retrier)
    return facts.version_id


def _source_tags(client, bucket: str, source: str, facts: SourceFacts, retrier) -> list[dict]:
    return _call(retrier, "GetObjectTagging", client.get_object_tagging, Bucket=bucket, Key=source,
                 **({"VersionId": facts.version_id} if facts.version_id else {})).get("TagSet", [])


def _upload_params(bucket: str, destination: str, facts: SourceFacts, tags: list[dict]) -> dict:
    create = {"Bucket": bucket, "Key": destination, "Metadata": facts.metadata, **facts.content,
              **facts.encryption()}
    if facts.storage_class != "STANDARD":
        create["StorageClass"] = facts.storage_class
    if tags:  # AWS honours it; servers that drop it are caught by _keep_tags
        create["Tagging"] = "&".join(f"{quote(t['Key'], safe='')}={quote(t['Value'], safe='')}" for t in tags)
    return create


def _prove_source_unchanged(client, bucket: str, source: str, destination: str, facts: SourceFacts,
                            copied: Optional[str], retrier) -> None:
    """The parts were not pinned: the copy is exact only if the source is still what the HEAD
    before the copy saw. If not, or if that cannot be known, the new object goes."""
    try:
        now = head_facts(client, bucket, source, version_id=facts.version_id, retrier=retrier)
        changed = _what_changed(facts, now)
    except Exception as exc:
        if not isinstance(exc, (ClientError, BotoCoreError)) or kind_of(exc) is not Kind.NOT_FOUND:
            _delete_copy(client, bucket, destination, copied, retrier)
            raise  # unproven (S3 kept failing, say): the copy is gone, the caller reports why
        changed = "it is gone"
    if changed:
        _delete_copy(client, bucket, destination, copied, retrier)
        raise SourceChanged(f"{source!r} changed while it was copied in parts to {destination!r} ({changed}): "
                            "the copy may mix two versions and was deleted; the source is untouched")


def _what_changed(before: SourceFacts, now: SourceFacts) -> str:
    if now.etag != before.etag:
        return f"ETag {before.etag} became {now.etag}"
    if before.last_modified and now.last_modified and timestamp(now.last_modified) != timestamp(before.last_modified):
        return f"rewritten at {timestamp(now.last_modified).isoformat()}"
    return ""


def _delete_copy(client, bucket: str, destination: str, copied: Optional[str], retrier) -> None:
    """Delete the object this copy wrote: by its version where there is one, so another
    writer's version of the key (if any) stays."""
    with contextlib.suppress(ClientError, BotoCoreError):  # the reason to delete it is what to report
        _call(retrier, "DeleteObject", client.delete_object, Bucket=bucket, Key=destination,
              **({"VersionId": copied} if copied else {}))


def _keep_tags(client, bucket: str, destination: str, copied: Optional[str], tags: list[dict], retrier) -> None:
    """Ceph RGW 16.2 ignores x-amz-tagging on CreateMultipartUpload: read the copy's tags back,
    set them if they differ, and check once more."""
    wanted = _tag_dict(tags)
    target = {"Bucket": bucket, "Key": destination, **({"VersionId": copied} if copied else {})}

    def found() -> dict:
        # Ceph RGW answers an object without tags with no TagSet at all.
        return _tag_dict(_call(retrier, "GetObjectTagging", client.get_object_tagging, **target).get("TagSet", []))

    if found() == wanted:
        return
    _call(retrier, "PutObjectTagging", client.put_object_tagging, **target, Tagging={"TagSet": tags})
    after = found()
    if after != wanted:
        # Kept, the copy would pass for a finished move on the next run (same bytes) and its
        # source, tags and all, would be deleted: it goes, and the next run tries again.
        _delete_copy(client, bucket, destination, copied, retrier)
        raise TagsNotKept(f"{destination!r} had the tags {after} after PutObjectTagging, not its source's {wanted}: "
                          "the copy was deleted, its source is kept")


def _tag_dict(tags: list[dict]) -> dict:
    return {tag["Key"]: tag["Value"] for tag in tags}
