"""Batched deletes: DeleteObjects takes up to 1,000 keys and answers 200 even when some failed.

:func:`delete_keys` is a buffer flush function: it returns one entry per key, None when the
key is gone (a key that did not exist counts as gone), an :class:`ObjectDeleteError` when S3
refused it. A request that fails whole (after botocore's retries) raises.
"""

from __future__ import annotations

from typing import Optional, Sequence

MAX_KEYS_PER_REQUEST = 1000


class ObjectDeleteError(Exception):
    def __init__(self, bucket: str, key: str, code: str, message: str):
        self.bucket, self.key, self.code = bucket, key, code
        super().__init__(f"s3://{bucket}/{key}: {code} {message}".strip())


def delete_keys(client, bucket: str, keys: Sequence[str]) -> list[Optional[ObjectDeleteError]]:
    results: list[Optional[ObjectDeleteError]] = []
    for start in range(0, len(keys), MAX_KEYS_PER_REQUEST):
        chunk = list(keys[start:start + MAX_KEYS_PER_REQUEST])
        response = client.delete_objects(
            Bucket=bucket, Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True})
        errors = {err["Key"]: err for err in response.get("Errors", [])}
        for key in chunk:
            err = errors.get(key)
            results.append(None if err is None else
                           ObjectDeleteError(bucket, key, err.get("Code", ""), err.get("Message", "")))
    return results


def delete_buffer(context, bucket: str, *, name: Optional[str] = None, interval: float = 0.5):
    """The context's tracked buffer that deletes keys of ``bucket`` in batches of 1,000."""
    return context.buffer(name or f"delete:{bucket}", lambda batch: delete_keys(context.s3, bucket, batch),
                          max_size=MAX_KEYS_PER_REQUEST, interval=interval)
