"""Moving one object inside a bucket: check the destination, copy server-side, delete the source.

Many objects move at once: each move is a coroutine on a private event loop thread, at most
``workers`` of them copying at a time. Small objects go through obstore's async client (one
CopyObject each, without a thread per request); objects above the multipart threshold, and keys
obstore cannot address, go through boto3 in a bounded thread pool. Sources are deleted through
the context's delete buffer (DeleteObjects, 1,000 keys a request) once their copy succeeded.
"""

from __future__ import annotations

import asyncio
import enum
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import obstore
from botocore.exceptions import ClientError

from ponoskit.s3 import copy
from ponoskit.s3.delete import delete_buffer
from ponoskit.s3.listing import ObjectInfo


class Outcome(enum.Enum):
    MOVED = "moved"
    ALREADY_MOVED = "already_moved"      # a half-done move: the copy was there, the source is now gone
    CONFLICT = "conflicts"               # another object holds the new key: both kept
    FAILED = "failed"
    WOULD_MOVE = "would_move"            # --dry-run
    WOULD_COMPLETE = "would_complete"    # --dry-run, half-done move

    @property
    def is_problem(self) -> bool:
        return self in (Outcome.CONFLICT, Outcome.FAILED)


@dataclass(frozen=True)
class MoveResult:
    outcome: Outcome
    key: str
    new_key: str
    detail: Optional[str] = None


def _is_multipart_etag(etag: str) -> bool:
    return "-" in etag.strip('"')


def same_content(source: ObjectInfo, destination: dict) -> bool:
    """Whether the object at the new key is a copy of the source.

    Single-part ETags are MD5s of the content and compare exactly. A multipart ETag (a copy
    made in parts, or a source uploaded in parts) is not a content hash: sizes decide then.
    """
    if destination["ContentLength"] != source.size:
        return False
    etag = destination.get("ETag", "")
    return etag == source.etag or _is_multipart_etag(etag) or _is_multipart_etag(source.etag)


class ObjectMover:
    def __init__(self, context, bucket: str, *, workers: int, multipart_threshold: int,
                 part_size: int, dry_run: bool):
        self.bucket = bucket
        self.client = context.s3
        self.store = context.object_store(bucket, concurrency=workers)
        self.deletes = None if dry_run else delete_buffer(context, bucket)
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.dry_run = dry_run
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"s3-{bucket}")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"mover-{bucket}", daemon=True)
        self._thread.start()
        # Bound to the mover's loop on first use (Python 3.10+), where every move awaits it.
        self._limit = asyncio.Semaphore(workers)

    def submit(self, source: ObjectInfo, new_key: str, *, check_destination: bool) -> "Future[MoveResult]":
        """Start moving ``source`` to ``new_key``; ``check_destination`` when it may exist already."""
        return asyncio.run_coroutine_threadsafe(self._move(source, new_key, check_destination), self._loop)

    async def _move(self, source: ObjectInfo, new_key: str, check_destination: bool) -> MoveResult:
        try:
            async with self._limit:
                outcome = Outcome.WOULD_MOVE if self.dry_run else Outcome.MOVED
                if check_destination:
                    existing = await self._in_pool(self._head, new_key)
                    if existing is not None:
                        if not same_content(source, existing):
                            return MoveResult(Outcome.CONFLICT, source.key, new_key,
                                              f"{new_key!r} exists with other content "
                                              f"({existing['ContentLength']} bytes, ETag {existing.get('ETag')})")
                        outcome = Outcome.WOULD_COMPLETE if self.dry_run else Outcome.ALREADY_MOVED
                if self.dry_run:
                    return MoveResult(outcome, source.key, new_key)
                if outcome is Outcome.MOVED:
                    await self._copy(source, new_key)
        except Exception as exc:  # noqa: BLE001 - every failure is reported per key
            return MoveResult(Outcome.FAILED, source.key, new_key, f"copy: {exc}")
        try:
            await asyncio.wrap_future(self.deletes.submit(source.key))
        except Exception as exc:  # noqa: BLE001
            return MoveResult(Outcome.FAILED, source.key, new_key, f"copied, but the source was not deleted: {exc}")
        return MoveResult(outcome, source.key, new_key)

    async def _copy(self, source: ObjectInfo, new_key: str) -> None:
        if source.size > self.multipart_threshold:
            await self._in_pool(copy.multipart_copy, self.client, self.bucket, source.key, new_key,
                                source.size, self.part_size)
        elif copy.obstore_can_copy(source.key) and copy.obstore_can_copy(new_key):
            await obstore.copy_async(self.store, source.key, new_key)
        else:
            await self._in_pool(copy.copy_object, self.client, self.bucket, source.key, new_key)

    def _head(self, key: str) -> Optional[dict]:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise

    async def _in_pool(self, fn, *args):
        return await self._loop.run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "ObjectMover":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False
