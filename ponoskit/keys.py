"""The one place that knows the S3 key layouts, old and new.

Legacy (before the fold)                     New
  artifacts: <workflow_id>/<task_id>/<path>    <task_id>/<path>
  logs:      <workflow_id>/run_<N>/<task_id>.log   <task_id>.log

Shapes alone are ambiguous: ``<uuid>/<uuid>/<path>`` is a legacy artifact, or a new-layout
artifact whose own path starts with a UUID-named folder. The database settles it: task ids
survive the fold, workflow ids do not. :func:`classify` takes the set of known task ids;
without one it reports what it cannot decide instead of guessing.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Collection, Optional
from uuid import UUID

from .errors import ConfigError

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# \Z, not $: "$" also matches before a trailing newline, and S3 keys may end with one.
_UUID_RE = re.compile(rf"^{_UUID}\Z")
_LEGACY_LOG_RE = re.compile(rf"^(?P<workflow>{_UUID})/run_(?P<run>\d+)/(?P<task>{_UUID})\.log\Z")
_NEW_LOG_RE = re.compile(rf"^(?P<task>{_UUID})\.log\Z")


# Where the jobs' canaries live for a moment (ponoskit.s3.capabilities): never data.
CANARY_PREFIX = ".ponos-toolkit-canary/"


def is_canary(key: str) -> bool:
    return key.startswith(CANARY_PREFIX)


def is_uuid(text: str) -> bool:
    return bool(_UUID_RE.match(text))


def artifact_key(task_id: str | UUID, path: str) -> str:
    return f"{task_id}/{path}"


def artifact_prefix(task_id: str | UUID) -> str:
    return f"{task_id}/"


def log_key(task_id: str | UUID) -> str:
    return f"{task_id}.log"


def legacy_artifact_key(workflow_id: str | UUID, task_id: str | UUID, path: str) -> str:
    return f"{workflow_id}/{task_id}/{path}"


def legacy_log_key(workflow_id: str | UUID, run: int, task_id: str | UUID) -> str:
    return f"{workflow_id}/run_{run}/{task_id}.log"


class KeyKind(enum.Enum):
    LEGACY_ARTIFACT = "legacy_artifact"
    LEGACY_LOG = "legacy_log"
    NEW_ARTIFACT = "new_artifact"
    NEW_LOG = "new_log"
    # The shape is legacy but the task is unknown to the database (deleted, or foreign data).
    ORPHAN_LEGACY = "orphan_legacy"
    # Without a database: <uuid>/<uuid>/<path> may be either layout.
    UNDECIDED = "undecided"
    UNRECOGNIZED = "unrecognized"


@dataclass(frozen=True)
class Classified:
    key: str
    kind: KeyKind
    task_id: Optional[str] = None
    new_key: Optional[str] = None  # set for legacy kinds: where the object must go

    @property
    def is_legacy(self) -> bool:
        return self.kind in (KeyKind.LEGACY_ARTIFACT, KeyKind.LEGACY_LOG)

    @property
    def is_new(self) -> bool:
        return self.kind in (KeyKind.NEW_ARTIFACT, KeyKind.NEW_LOG)


@dataclass(frozen=True)
class BucketPass:
    """One listing of one bucket, and which layouts it holds."""
    bucket: str
    artifacts: bool
    logs: bool


def bucket_passes(artifacts_bucket: Optional[str], logs_bucket: Optional[str]) -> list[BucketPass]:
    """The listings that cover these buckets: one when both layouts share a bucket."""
    if not artifacts_bucket and not logs_bucket:
        raise ConfigError("give --artifacts-bucket, --logs-bucket or both")
    if artifacts_bucket == logs_bucket:
        return [BucketPass(artifacts_bucket, artifacts=True, logs=True)]
    passes = []
    if artifacts_bucket:
        passes.append(BucketPass(artifacts_bucket, artifacts=True, logs=False))
    if logs_bucket:
        passes.append(BucketPass(logs_bucket, artifacts=False, logs=True))
    return passes


def task_ids_in(key: str) -> list[str]:
    """UUIDs in the positions where a task id can stand, to look up in one batch."""
    parts = key.split("/", 2)
    found = []
    if len(parts) >= 2 and is_uuid(parts[0]):
        found.append(parts[0].lower())
        if len(parts) == 3:
            if is_uuid(parts[1]):
                found.append(parts[1].lower())
            log = _LEGACY_LOG_RE.match(key)
            if log:
                found.append(log["task"].lower())
    else:
        log = _NEW_LOG_RE.match(key)
        if log:
            found.append(log["task"].lower())
    return found


def classify(key: str, known_tasks: Collection[str] | None, *, logs: bool = True,
             artifacts: bool = True) -> Classified:
    """Say what ``key`` is. ``known_tasks`` holds lower-case task ids, or is None (no database).

    ``logs`` / ``artifacts`` say which layouts the bucket holds (both when one bucket serves
    both); a shape of the other kind is unrecognized there.
    """
    new_log = _NEW_LOG_RE.match(key)
    if new_log:
        return Classified(key, KeyKind.NEW_LOG, new_log["task"].lower()) if logs else Classified(key, KeyKind.UNRECOGNIZED)

    parts = key.split("/", 2)
    if len(parts) < 2 or not is_uuid(parts[0]):
        return Classified(key, KeyKind.UNRECOGNIZED)
    first = parts[0].lower()

    # Under a task id that exists, a key is in the new layout whatever its path looks like.
    if known_tasks is not None and first in known_tasks:
        return Classified(key, KeyKind.NEW_ARTIFACT if artifacts else KeyKind.UNRECOGNIZED, first)

    legacy_log = _LEGACY_LOG_RE.match(key)
    if legacy_log and logs:
        task = legacy_log["task"].lower()
        if known_tasks is None:
            # In a bucket that also holds artifacts, this may be <task>/run_N/<uuid>.log.
            return Classified(key, KeyKind.UNDECIDED if artifacts else KeyKind.LEGACY_LOG, task,
                              None if artifacts else log_key(task))
        if task in known_tasks:
            return Classified(key, KeyKind.LEGACY_LOG, task, log_key(task))
        return Classified(key, KeyKind.ORPHAN_LEGACY, task)

    if not artifacts or parts[1] == "":
        return Classified(key, KeyKind.UNRECOGNIZED)  # not ours, or a <uuid>/ folder marker

    if len(parts) == 3 and is_uuid(parts[1]):
        # Every key under a task's folder moves, folder markers (``dir/``, the folder itself)
        # and keys ending in ``/`` that hold bytes included: S3 keys, like any other.
        task, path = parts[1].lower(), parts[2]
        if known_tasks is None:
            return Classified(key, KeyKind.UNDECIDED, task)
        if task in known_tasks:
            # New keys use the canonical lower-case id, as Arkindex's str(uuid) does.
            return Classified(key, KeyKind.LEGACY_ARTIFACT, task, artifact_key(task, path))
        return Classified(key, KeyKind.ORPHAN_LEGACY, task)

    # <uuid>/<path> whose path does not start with a UUID folder: only the new layout has it.
    # Its task may be gone (an orphan for the cleanup's sweep); the rename leaves it alone.
    return Classified(key, KeyKind.NEW_ARTIFACT, first)


def legacy_key_of(found: Classified, workflow_id: str, run: int) -> Optional[str]:
    """Where a new-layout object of a task lived (or lives again, for a rollback) in the
    legacy layout: ``<task>/<path>`` -> ``<workflow>/<task>/<path>``, ``<task>.log`` ->
    ``<workflow>/run_<N>/<task>.log``."""
    if found.kind is KeyKind.NEW_LOG:
        return legacy_log_key(workflow_id, run, found.task_id)
    if found.kind is KeyKind.NEW_ARTIFACT:
        return legacy_artifact_key(workflow_id, found.task_id, found.key.split("/", 1)[1])
    return None


def top_level_task(entry: str) -> Optional[str]:
    """The task id a top-level listing entry (``<uuid>/`` prefix or ``<uuid>.log``) may belong to."""
    if entry.endswith("/") and is_uuid(entry[:-1]):
        return entry[:-1].lower()
    log = _NEW_LOG_RE.match(entry)
    return log["task"].lower() if log else None


def listing_group(key: str) -> str:
    """What keeps a task's objects together in any server's listing order: its id, when a key
    starts with one (``<task>.log``, ``<task>/...``), else the key itself.

    S3 lists in byte order, where ``<task>.log`` comes before ``<task>/a``; SeaweedFS lists
    folders as a tree, where it comes after. Both keep a task's keys contiguous and the tasks
    in id order, so a merge of a listing with database rows compares groups, not keys.
    """
    head = key[:36]
    return head if _UUID_RE.match(head) else key
