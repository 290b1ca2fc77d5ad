"""Canary objects: who wrote them, writing one, finding and removing them.

The jobs try a server's behaviour on canaries under :data:`~ponoskit.keys.CANARY_PREFIX`
before they change anything (:mod:`ponoskit.s3.capabilities`, the maintenance preflight).
Each probe writes into a folder that names its writer: ``<host>-<scope>-<pid>-<random>/``.
A probe killed with SIGKILL cannot clean up; whoever runs next on the same host sees that the
writer is dead and removes its canaries at once (:meth:`CanaryOwner.is_dead`); a canary of
another host cannot be judged that way and is left to the age rule of the caller.

A refusal of a canary's PutObject is configuration (exit 2, one line), never a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from botocore.exceptions import BotoCoreError, ClientError

from ..errors import ConfigError, PonosError
from ..keys import CANARY_PREFIX
from .errors import Kind, S3PermissionError, http_status, kind_of, one_line

CHECKSUM_FIX = ("set AWS_REQUEST_CHECKSUM_CALCULATION=when_required (or request_checksum_calculation = "
                "when_required in the AWS config)")


def _scope() -> str:
    """A pid names a process only within one boot of one machine and one pid namespace (two
    containers may share a host name, not their pids): a short hash of those."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as boot:
        parts.append(boot.read().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


_HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:63] or "host"
_SCOPE = _scope()
_FOLDER = re.compile(r"(?P<host>.+)-(?P<scope>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{32}/")


@dataclass(frozen=True)
class CanaryOwner:
    """Who wrote a canary: the host, the scope its pids mean something in, the pid."""
    host: str
    scope: str
    pid: int

    @classmethod
    def this_process(cls) -> "CanaryOwner":
        return cls(_HOST, _SCOPE, os.getpid())

    @classmethod
    def of_key(cls, key: str) -> Optional["CanaryOwner"]:
        """The writer a canary key names; None for a key that names none (older releases)."""
        match = _FOLDER.match(key[len(CANARY_PREFIX):]) if key.startswith(CANARY_PREFIX) else None
        return cls(match["host"], match["scope"], int(match["pid"])) if match else None

    def new_folder(self) -> str:
        return f"{CANARY_PREFIX}{self.host}-{self.scope}-{self.pid}-{uuid.uuid4().hex}/"

    def is_dead(self) -> bool:
        """True only when this process can tell: same host and pid namespace, no such process."""
        if (self.host, self.scope) != (_HOST, _SCOPE):
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # PermissionError: it lives, as another user
            return False
        return False


def canary_folder() -> str:
    """A new folder for canaries, under CANARY_PREFIX, naming this process as their writer."""
    return CanaryOwner.this_process().new_folder()


class Canaries:
    """The objects of one probe, all in one folder that names its writer; ``written`` lists
    what to remove (key, version)."""

    def __init__(self, client, bucket: str, *, retrier=None):
        self.client, self.bucket, self.retrier = client, bucket, retrier
        self.folder = canary_folder()
        self.first, self.second = self.key("a"), self.key("b")  # what capabilities.canaries() writes
        self.written: list[tuple[str, Optional[str]]] = []

    def key(self, name: str) -> str:
        return self.folder + name

    def call(self, what: str, fn, **params):
        return self.retrier.call(what, fn, **params) if self.retrier else fn(**params)

    def put(self, key: str, body: bytes) -> None:
        answer = put_canary(self.client, self.bucket, key, body, retrier=self.retrier)
        self.remember(key, answer.get("VersionId"))

    def remember(self, key: str, version: Optional[str]) -> None:
        self.written.append((key, version))

    def remember_current(self, key: str) -> None:
        """Remember the current version of a key something else wrote (obstore, an ignored condition)."""
        self.remember(key, self.client.head_object(Bucket=self.bucket, Key=key).get("VersionId"))


_SENT = threading.local()  # the checksum headers of this thread's last canary PutObject


def _note_checksum_headers(request, **_) -> None:
    _SENT.headers = sorted(name.lower() for name in request.headers
                           if name.lower().startswith("x-amz-checksum-")
                           or name.lower() == "x-amz-sdk-checksum-algorithm")


def put_canary(client, bucket: str, key: str, body: bytes, *, retrier=None) -> dict:
    """PutObject of a canary. A refusal is configuration, exit 2 with one line: a missing right
    (403), or a 400/501 on a few bytes under our own prefix, which no data of the user's can
    cause. Older MinIO releases refuse the checksum headers boto3 1.36 and later send by
    default: if the refused request carried them, the message names the setting that stops
    them (the toolkit never overrides the user's configuration)."""
    client.meta.events.register("before-send.s3.PutObject", _note_checksum_headers,
                                unique_id="ponos-canary-checksum-headers")

    def attempt() -> dict:
        _SENT.headers = []
        try:
            return client.put_object(Bucket=bucket, Key=key, Body=body)
        except ClientError as exc:  # raised here, so the retrier never retries a 501 for minutes
            if kind_of(exc) is not Kind.PERMISSION and http_status(exc) in (400, 501):
                raise _refused_put(exc, bucket, list(_SENT.headers)) from None
            raise

    try:
        return retrier.call("PutObject", attempt) if retrier else attempt()
    except (ClientError, BotoCoreError) as exc:
        raise_refused(exc, bucket, "s3:PutObject")


def _refused_put(exc: ClientError, bucket: str, checksum_headers: list[str]) -> ConfigError:
    if checksum_headers:
        return ConfigError(f"bucket {bucket!r}: the S3 server refused the canary PutObject carrying boto3's "
                           f"default checksum headers ({', '.join(checksum_headers)}; {one_line(exc)}): "
                           f"{CHECKSUM_FIX}, then run again; nothing of yours was changed")
    return ConfigError(f"bucket {bucket!r}: the S3 server refused a canary PutObject of a few bytes "
                       f"({one_line(exc)}): check the S3 configuration (endpoint, region, signature); "
                       "nothing of yours was changed")


def listed_canaries(client, bucket: str, prefix: str, versioned: bool, notes: list[str]):
    """(key, version, last modified) of every canary under ``prefix``: every version and delete
    marker on a versioned bucket when the role may list them (s3:ListBucketVersions), else the
    current objects. None (noted) when it cannot be listed: housekeeping never stops a run."""
    from .listing import iter_objects, timestamp
    if versioned:
        try:
            found: list[tuple[str, Optional[str], datetime]] = []
            for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
                found += [(v["Key"], v["VersionId"], timestamp(v["LastModified"]))
                          for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
            return found
        except (ClientError, BotoCoreError):
            pass  # no right to list versions: the current objects, deleted by key
    try:
        return [(obj.key, None, timestamp(obj.last_modified)) for obj in iter_objects(client, bucket, prefix=prefix)]
    except PonosError as exc:
        notes.append(f"could not look for canaries under {prefix!r}: {exc}")
        return None


def remove_canaries(client, bucket: str, written: list[tuple[str, Optional[str]]], capabilities) -> None:
    """Delete each (key, version); a refusal names the missing right, other failures are noted
    on ``capabilities`` (anything with ``notes``)."""
    for key, version in dict.fromkeys(written):
        try:
            if version and version != "null":
                client.delete_object(Bucket=bucket, Key=key, VersionId=version)
            else:
                client.delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            if kind_of(exc) is Kind.NOT_FOUND:
                continue
            if kind_of(exc) is Kind.PERMISSION:
                raise_refused(exc, bucket, "s3:DeleteObject (and s3:DeleteObjectVersion on a versioned bucket)")
            capabilities.notes.append(f"canary {key!r} left behind: {one_line(exc)}")


def raise_refused(exc: BaseException, bucket: str, permission: str):
    if kind_of(exc) is Kind.PERMISSION:
        raise S3PermissionError(f"bucket {bucket!r}: the job needs {permission} ({one_line(exc)}); "
                                "nothing of yours was changed") from None
    raise exc
