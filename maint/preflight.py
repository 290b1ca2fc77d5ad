"""Checks every maintenance job makes before it changes anything."""

from __future__ import annotations

import hashlib

import psycopg
from botocore.exceptions import BotoCoreError, ClientError

from ponoskit import schema
from ponoskit.errors import ConfigError, PonosError
from ponoskit.keys import CANARY_PREFIX
from ponoskit.s3 import canary, capabilities
from ponoskit.s3.delete import delete_objects
from ponoskit.s3.errors import Kind, S3PermissionError, kind_of, one_line, raise_typed


def lock_key(name: str) -> int:
    """A stable advisory-lock key per job (a signed 64-bit int, as pg_try_advisory_lock wants)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def require_folded(conn: psycopg.Connection) -> None:
    state = schema.schema_state(conn)
    if state == schema.FOLDED:
        return
    hints = {
        schema.LEGACY: "the workflow fold has not run yet: run `ponos-migrate db-fold-workflow` first",
        schema.PARTIAL: "a workflow fold is under way: run the cleanup once it has finished",
        schema.UNKNOWN: "this database has no Ponos tables (wrong --dsn?)",
    }
    raise ConfigError(f"schema is {state}, not folded: {hints.get(state, '')}".rstrip(": "))


def check_permissions(ctx, *buckets: str) -> dict:
    """Before any change, find out that the run may do what it will do in each bucket.

    Every run lists (s3:ListBucket). A real run also deletes (s3:DeleteObject): a canary is
    put under the reserved CANARY_PREFIX and deleted the way the job deletes. The job itself
    never writes, so a refused PUT is not fatal: the delete is then tried on a canary key that
    does not exist (S3 answers a permitted delete of a missing key with success). A dry run
    only lists. A refusal is exit 2 naming the permission and the bucket, nothing changed.
    """
    found = {}
    for bucket in dict.fromkeys(buckets):
        caps = ctx.bucket(bucket)  # exists, reachable, allowed (HeadBucket); its versioning
        notes: list[str] = []
        _check_list(ctx, bucket)
        if not ctx.dry_run:
            _check_delete(ctx, bucket, caps, notes)
        found[bucket] = {"list": True, "delete": None if ctx.dry_run else True, "notes": notes + caps.notes}
    ctx.report.info["s3_permissions"] = found
    return found


def _check_list(ctx, bucket: str) -> None:
    try:
        ctx.retrier.call("ListObjectsV2", ctx.s3.list_objects_v2, Bucket=bucket, Prefix=CANARY_PREFIX, MaxKeys=1)
    except (ClientError, BotoCoreError) as exc:
        if kind_of(exc) is Kind.PERMISSION:
            capabilities.raise_refused(exc, bucket, "s3:ListBucket")
        raise_typed(exc, f"listing s3://{bucket}/{CANARY_PREFIX}")


def _check_delete(ctx, bucket: str, caps, notes: list[str]) -> None:
    """A canary put, then deleted as the job deletes (ponoskit.s3.delete)."""
    capabilities.sweep_stale_canaries(ctx.s3, bucket, caps)
    # In a folder naming this process, as the rename's probe: a run killed right here leaves a
    # canary the next run on this host removes at once.
    key = f"{canary.canary_folder()}ponos-maint-{ctx.job}"
    version = None
    try:  # a server refusing boto3's checksum headers is told here, in one line (exit 2)
        version = canary.put_canary(ctx.s3, bucket, key, b"ponos-maint canary: deleted at once",
                                    retrier=ctx.retrier).get("VersionId")
    except S3PermissionError as exc:
        notes.append(f"s3:PutObject refused on the canary ({exc}); the job never writes: "
                     "s3:DeleteObject was checked on a canary key that does not exist")
    try:
        [error] = delete_objects(ctx.s3, bucket, [key], retrier=ctx.retrier)
    except S3PermissionError as exc:
        raise S3PermissionError(f"bucket {bucket!r}: the job needs s3:DeleteObject ({exc}); "
                                "nothing of yours was changed") from None
    if error is not None:
        if error.kind is Kind.PERMISSION:
            raise S3PermissionError(f"bucket {bucket!r}: the job needs s3:DeleteObject ({error.code} on the "
                                    f"canary {key!r}); nothing of yours was changed")
        raise PonosError(f"bucket {bucket!r}: the canary {key!r} could not be deleted ({error}); "
                         "nothing of yours was changed")
    if version and version != "null" and caps.versioned:
        _remove_canary_versions(ctx, bucket, key, caps, notes)


def _remove_canary_versions(ctx, bucket: str, key: str, caps, notes: list[str]) -> None:
    """A delete by key on a versioned bucket leaves the canary's version and a delete marker:
    remove both if the role may (s3:DeleteObjectVersion, which the job itself does not need)."""
    try:
        page = ctx.s3.list_object_versions(Bucket=bucket, Prefix=key)
        versions = [(v["Key"], v["VersionId"]) for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
                    if v["Key"] == key]
        capabilities.remove_canaries(ctx.s3, bucket, versions, caps)
    except (ClientError, BotoCoreError, S3PermissionError) as exc:
        notes.append(f"the canary's versions stay in the versioned bucket ({one_line(exc)})")
