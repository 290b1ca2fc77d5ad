"""Server-side copies within one bucket; the bytes never leave S3.

- :func:`copy_object`: CopyObject, up to 5 GiB. The default metadata directive (COPY) keeps
  Content-Type and user metadata.
- :func:`multipart_copy`: above the threshold, CreateMultipartUpload with the source's
  Content-Type and metadata, then UploadPartCopy by byte ranges. A failure aborts the upload
  so no invisible parts are left to pay for.
- :func:`obstore_can_copy`: the fast path (obstore, async) addresses keys as paths and
  cannot express every key S3 allows; the others go through boto3.
"""

from __future__ import annotations

import contextlib
import math

MIN_PART_SIZE = 5 * 1024 ** 2
MAX_PARTS = 10_000
COPY_OBJECT_LIMIT = 5 * 1024 ** 3
MAX_PART_SIZE = 5 * 1024 ** 3


def obstore_can_copy(key: str) -> bool:
    """True when obstore's path model round-trips ``key`` unchanged."""
    if not key or key.startswith("/") or key.endswith("/"):
        return False
    if any(part in ("", ".", "..") for part in key.split("/")):
        return False
    return not any(ord(char) < 32 or ord(char) == 127 or char == "\\" for char in key)


def copy_object(client, bucket: str, source: str, destination: str) -> None:
    client.copy_object(Bucket=bucket, Key=destination, CopySource={"Bucket": bucket, "Key": source})


def part_ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """Inclusive byte ranges; parts grow if needed to stay within S3's 10,000 parts."""
    part_size = max(min(part_size, MAX_PART_SIZE), MIN_PART_SIZE, math.ceil(size / MAX_PARTS))
    return [(start, min(start + part_size, size) - 1) for start in range(0, size, part_size)] or [(0, -1)]


def multipart_copy(client, bucket: str, source: str, destination: str, size: int, part_size: int) -> None:
    head = client.head_object(Bucket=bucket, Key=source)
    create = {"Bucket": bucket, "Key": destination, "Metadata": head.get("Metadata", {})}
    for field in ("ContentType", "ContentEncoding", "ContentDisposition", "ContentLanguage", "CacheControl"):
        if head.get(field):
            create[field] = head[field]
    upload_id = client.create_multipart_upload(**create)["UploadId"]
    try:
        parts = []
        for number, (first, last) in enumerate(part_ranges(size, part_size), start=1):
            answer = client.upload_part_copy(
                Bucket=bucket, Key=destination, UploadId=upload_id, PartNumber=number,
                CopySource={"Bucket": bucket, "Key": source},
                # Pin the source: if it changes mid-copy the parts would mix two versions.
                CopySourceIfMatch=head["ETag"],
                **({"CopySourceRange": f"bytes={first}-{last}"} if last >= first else {}))
            parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
        client.complete_multipart_upload(Bucket=bucket, Key=destination, UploadId=upload_id,
                                         MultipartUpload={"Parts": parts})
    except BaseException:
        with contextlib.suppress(Exception):  # the copy's own error is the one to report
            client.abort_multipart_upload(Bucket=bucket, Key=destination, UploadId=upload_id)
        raise
