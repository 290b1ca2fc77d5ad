"""Server-side copies within one bucket that keep everything the source had; bytes never leave S3.

What a plain CopyObject loses, and how each path keeps it:

- the storage class (a copy is STANDARD unless told): passed from the listing or the HEAD;
- SSE-KMS and its key, DSSE, SSE-S3 (a copy gets the bucket's default): passed from the HEAD
  when the source was inspected (see :class:`SourceFacts`);
- on the multipart path also tags, Content-Type, Cache-Control, Content-Disposition,
  Content-Encoding, Content-Language, Expires, website redirect and user metadata, which a
  CreateMultipartUpload does not take from anywhere: all read from the HEAD (tags with
  GetObjectTagging) and set explicitly.

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
from typing import Optional
from urllib.parse import quote

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
            checksum_type=head.get("ChecksumType"))

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
                   conditional: bool = False, retrier=None, part_workers: int = 8) -> Optional[str]:
    """UploadPartCopy in parallel parts, everything of the source set on the new upload; returns
    the version of the source that was copied."""
    create = {"Bucket": bucket, "Key": destination, "Metadata": facts.metadata, **facts.content,
              **facts.encryption()}
    if facts.storage_class != "STANDARD":
        create["StorageClass"] = facts.storage_class
    if facts.tag_count:
        tags = _call(retrier, "GetObjectTagging", client.get_object_tagging, Bucket=bucket, Key=source,
                     **({"VersionId": facts.version_id} if facts.version_id else {}))["TagSet"]
        create["Tagging"] = "&".join(f"{quote(t['Key'], safe='')}={quote(t['Value'], safe='')}" for t in tags)
    upload_id = _call(retrier, "CreateMultipartUpload", client.create_multipart_upload, **create)["UploadId"]
    source_ref = copy_source(bucket, source, facts.version_id)

    def copy_part(number: int, first: int, last: int) -> dict:
        answer = _call(retrier, "UploadPartCopy", client.upload_part_copy,
                       Bucket=bucket, Key=destination, UploadId=upload_id, PartNumber=number, CopySource=source_ref,
                       # Pin the source: if it changes mid-copy the parts would mix two versions.
                       CopySourceIfMatch=f'"{facts.etag}"',
                       **({"CopySourceRange": f"bytes={first}-{last}"} if last >= first else {}))
        return {"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]}

    try:
        ranges = part_ranges(facts.size, part_size)
        with ThreadPoolExecutor(max_workers=max(1, min(part_workers, len(ranges))),
                                thread_name_prefix="s3-part") as parts_pool:
            futures = [parts_pool.submit(copy_part, n, first, last) for n, (first, last) in enumerate(ranges, 1)]
            parts = [future.result() for future in futures]
        _call(retrier, "CompleteMultipartUpload", client.complete_multipart_upload, Bucket=bucket, Key=destination,
              UploadId=upload_id, MultipartUpload={"Parts": parts}, **({"IfNoneMatch": "*"} if conditional else {}))
    except BaseException:
        with contextlib.suppress(Exception):  # the copy's own error is the one to report
            client.abort_multipart_upload(Bucket=bucket, Key=destination, UploadId=upload_id)
        raise
    return facts.version_id
