"""What a bucket's server really does, found out before any change by trying it on canaries.

S3 implementations differ where it matters most (seen here: AWS, SeaweedFS, moto, Ceph RGW):
``If-None-Match: *`` on CopyObject is honoured by some and silently ignored by others (the copy
overwrites), an ``ETag`` condition in DeleteObjects likewise, ``x-amz-copy-source-if-match``
too, and old obstore releases copy an awkward key to a percent-encoded one. So the jobs do not
trust a server's name or a flag: :func:`probe` writes canary objects under
:data:`CANARY_PREFIX` (:func:`canaries`), learns one fact from each try (one function per
fact), and removes everything it wrote, by version on a versioned bucket. A refusal here names
the permission that is missing, before anything of the user's changed (exit 2).

A canary's key names who wrote it (host, pid; see :mod:`ponoskit.s3.canary`): a probe killed
before it could clean up leaves canaries that the next run on that host removes at once, since
their writer is dead; canaries of other hosts go once older than :data:`CANARY_MAX_AGE`
(younger ones may be a live shard's probe).

Read-only facts come from the bucket's configuration: versioning (a delete must then name the
version it copied) and default encryption (with a KMS default, sources are inspected so their
own key is kept). An answer that cannot be read never stops a run: it is "unknown", which the
jobs treat the careful way.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterator, Optional

from botocore.exceptions import BotoCoreError, ClientError

from ..keys import CANARY_PREFIX
from .canary import CanaryOwner, Canaries, listed_canaries, raise_refused, remove_canaries
from .delete import BATCH, SINGLE
from .errors import Kind, S3PermissionError, kind_of, one_line

__all__ = ["AWKWARD_NAME", "BucketCapabilities", "CANARY_MAX_AGE", "CANARY_PREFIX", "UNKNOWN", "canaries", "probe",
           "raise_refused", "read_configuration", "remove_canaries", "sweep_stale_canaries"]

# A key with everything obstore releases before 0.9.4 percent-encoded in copies.
AWKWARD_NAME = "Ünï cødé a+b%20c#d?e~[x]{y}.txt"
UNKNOWN = "unknown"
# Canaries of another host (or of an old run that did not name its writer) are removed once
# older than this: younger ones may be another shard's probe, still running.
CANARY_MAX_AGE = timedelta(minutes=10)
WRONG_ETAG = '"00000000000000000000000000000000"'
NO_ENCRYPTION_CODES = ("ServerSideEncryptionConfigurationNotFoundError", "NoSuchBucketEncryption",
                       "NotImplemented", "XNotImplemented")


@dataclass
class BucketCapabilities:
    bucket: str
    region: Optional[str] = None
    versioning: str = ""  # "", "Enabled", "Suspended", or "unknown" (no right to ask: treated as versioned)
    default_encryption: Optional[str] = None  # AES256, aws:kms, aws:kms:dsse, None, or "unknown"
    conditional_copy: bool = False  # CopyObject honours If-None-Match: *
    obstore_conditional_copy: bool = False  # the same through obstore's copy_if_not_exists header
    obstore_exact: bool = False  # obstore copies an awkward key to exactly that key
    conditional_delete: str = ""  # "batch": DeleteObjects honours an ETag per key; "single": only DeleteObject
    pinned_copy_source: bool = False  # a copy honours x-amz-copy-source-if-match (multipart parts are pinned)
    probed: bool = False  # False in a dry run: nothing was written
    notes: list[str] = field(default_factory=list)

    @property
    def versioned(self) -> bool:
        return self.versioning in ("Enabled", "Suspended", UNKNOWN)

    @property
    def sse_may_vary(self) -> bool:
        """Whether sources may carry their own KMS key: then they are inspected before a copy."""
        return self.default_encryption in ("aws:kms", "aws:kms:dsse", UNKNOWN)

    def to_dict(self) -> dict:
        return asdict(self)


# --- the bucket's configuration (read only) ---------------------------------------------

def read_configuration(client, bucket: str, capabilities: BucketCapabilities) -> None:
    capabilities.versioning = _read_versioning(client, bucket, capabilities.notes)
    capabilities.default_encryption = _read_default_encryption(client, bucket, capabilities.notes)


def _read_versioning(client, bucket: str, notes: list[str]) -> str:
    try:
        status = client.get_bucket_versioning(Bucket=bucket).get("Status") or ""
    except Exception as exc:  # noqa: BLE001 - a refusal, an outage or an answer botocore cannot parse
        notes.append(f"versioning unknown ({one_line(exc)}): deletes name the version copied")
        return UNKNOWN
    if status not in ("", "Enabled", "Suspended"):
        notes.append(f"versioning unknown (the server answered {status!r}): deletes name the version copied")
        return UNKNOWN
    return status


def _read_default_encryption(client, bucket: str, notes: list[str]) -> Optional[str]:
    try:
        answer = client.get_bucket_encryption(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code", "") in NO_ENCRYPTION_CODES:
            return None
        notes.append(f"default encryption unknown ({one_line(exc)}): sources are inspected")
        return UNKNOWN
    except Exception as exc:  # noqa: BLE001 - an answer botocore cannot parse (ResponseParserError), an outage
        notes.append(f"default encryption unknown ({one_line(exc)}): sources are inspected")
        return UNKNOWN
    rules = (answer.get("ServerSideEncryptionConfiguration") or {}).get("Rules")
    if rules is None:
        # A 200 that is no encryption configuration: Ceph RGW 16.2 answers ?encryption with a
        # listing of the bucket. Such a server has no default encryption to keep.
        notes.append("the server does not implement GetBucketEncryption (it answered something else): "
                     "no default encryption assumed")
        return None
    try:
        return rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] if rules else None
    except (KeyError, IndexError, TypeError):
        notes.append("default encryption unknown (a rule without an algorithm): sources are inspected")
        return UNKNOWN


# --- the probe: one function per fact ------------------------------------------------------

def probe(client, bucket: str, capabilities: BucketCapabilities, *, make_store, retrier=None) -> None:
    """Learn what the server does with conditional copies and deletes, a pinned copy source and
    obstore's key handling, on canaries. ``make_store(conditional)`` builds the bucket's obstore store.

    The order matters: every try copies from ``first``, which the delete tries may delete.
    """
    with canaries(client, bucket, capabilities, retrier=retrier) as canary:
        capabilities.conditional_copy = honours_conditional_copy(canary)
        capabilities.pinned_copy_source = honours_copy_source_pin(canary, capabilities.notes)
        learn_obstore(canary, capabilities, make_store)
        capabilities.conditional_delete = conditional_delete(canary, capabilities.notes)
        capabilities.probed = True


def honours_conditional_copy(canary: "Canaries") -> bool:
    """CopyObject with ``If-None-Match: *`` onto an existing key: a 412, or an overwrite."""
    try:
        answer = canary.call("CopyObject", canary.client.copy_object, Bucket=canary.bucket, Key=canary.second,
                             IfNoneMatch="*", CopySource={"Bucket": canary.bucket, "Key": canary.first})
    except (ClientError, BotoCoreError) as exc:
        if kind_of(exc) is Kind.PRECONDITION:
            return True
        raise_refused(exc, canary.bucket, "s3:GetObject and s3:PutObject (CopyObject)")
    canary.remember(canary.second, answer.get("VersionId"))  # it overwrote: the condition is ignored
    return False


def honours_copy_source_pin(canary: "Canaries", notes: list[str]) -> bool:
    """A copy pinned to an ETag the source does not have (``x-amz-copy-source-if-match``): a 412,
    or a copy. Ceph RGW 16.2 and moto copy: the parts of a multipart copy cannot be pinned there.

    Tried on CopyObject, the same header as UploadPartCopy's: a copy is a canary the block
    removes, where an UploadPartCopy would leave an upload that nothing lists.
    """
    target = canary.key("pinned")
    try:
        answer = canary.call("CopyObject", canary.client.copy_object, Bucket=canary.bucket, Key=target,
                             CopySource={"Bucket": canary.bucket, "Key": canary.first}, CopySourceIfMatch=WRONG_ETAG)
    except (ClientError, BotoCoreError) as exc:
        if kind_of(exc) is Kind.PRECONDITION:
            return True
        if kind_of(exc) is Kind.PERMISSION:
            raise_refused(exc, canary.bucket, "s3:GetObject and s3:PutObject (CopyObject)")
        notes.append(f"a copy pinned to its source's ETag was refused ({one_line(exc)}): "
                     "copies in parts are proven against their source afterwards")
        return False
    canary.remember(target, answer.get("VersionId"))
    notes.append("the server ignores x-amz-copy-source-if-match: copies in parts are proven against their "
                 "source afterwards")
    return False


def learn_obstore(canary: "Canaries", capabilities: BucketCapabilities, make_store) -> None:
    try:
        store = make_store(True)
        capabilities.obstore_exact = obstore_exact(canary, store)
        if not capabilities.obstore_exact:
            capabilities.notes.append("obstore changed an awkward key in a copy: copies go through boto3")
        capabilities.obstore_conditional_copy = obstore_conditional_copy(canary, store)
    except Exception as exc:  # noqa: BLE001 - no obstore path then; boto3 does every copy
        capabilities.notes.append(f"obstore unusable here ({one_line(exc)}): copies go through boto3")


def obstore_exact(canary: "Canaries", store) -> bool:
    """obstore copies ``first`` to the awkward key: is it at exactly that key? (A percent-encoded
    stray, from releases before 0.9.4, is removed with the rest of the canaries' folder.)"""
    from .copy import obstore_copy
    awkward = canary.key(AWKWARD_NAME)
    obstore_copy(store, canary.first, awkward, conditional=False, retrier=canary.retrier)
    try:
        canary.remember_current(awkward)
    except ClientError:
        return False
    return True


def obstore_conditional_copy(canary: "Canaries", store) -> bool:
    """obstore's conditional copy onto an existing key: AlreadyExists, or an overwrite."""
    from .copy import obstore_copy
    try:
        obstore_copy(store, canary.first, canary.second, conditional=True, retrier=canary.retrier)
    except Exception as exc:  # noqa: BLE001 - AlreadyExistsError is the answer we hope for
        return kind_of(exc) is Kind.PRECONDITION
    canary.remember_current(canary.second)
    return False


def conditional_delete(canary: "Canaries", notes: list[str]) -> str:
    """BATCH if DeleteObjects honours a per-key ETag, else SINGLE if DeleteObject honours
    If-Match, else "" (noted: deletes are plain)."""
    if _batch_delete_honours_etag(canary, notes):
        return BATCH
    if _single_delete_honours_if_match(canary):
        return SINGLE
    notes.append("deletes cannot be made conditional here: a source rewritten between its copy and its "
                 "delete would be lost (a versioned bucket keeps it)")
    return ""


def _batch_delete_honours_etag(canary: "Canaries", notes: list[str]) -> bool:
    try:
        answer = canary.call("DeleteObjects", canary.client.delete_objects, Bucket=canary.bucket, Delete={
            "Quiet": False, "Objects": [{"Key": canary.first, "ETag": WRONG_ETAG}]})
    except (ClientError, BotoCoreError) as exc:
        if kind_of(exc) is Kind.PERMISSION:
            raise_refused(exc, canary.bucket, "s3:DeleteObject")
        notes.append(f"DeleteObjects with an ETag refused ({one_line(exc)}): deletes are plain")
        return False
    for deleted in answer.get("Deleted", []):  # it ignored the ETag: the marker goes too
        if deleted.get("DeleteMarkerVersionId"):
            canary.remember(canary.first, deleted["DeleteMarkerVersionId"])
    refused = [e for e in answer.get("Errors", []) if e.get("Key") == canary.first]
    if refused and refused[0].get("Code") in ("AccessDenied", "AllAccessDisabled"):
        raise S3PermissionError(f"bucket {canary.bucket!r}: the job needs s3:DeleteObject "
                                f"({refused[0].get('Code')}); nothing of yours was changed")
    return bool(refused) and refused[0].get("Code") == "PreconditionFailed"


def _single_delete_honours_if_match(canary: "Canaries") -> bool:
    try:
        answer = canary.call("DeleteObject", canary.client.delete_object, Bucket=canary.bucket, Key=canary.second,
                             IfMatch=WRONG_ETAG)
    except (ClientError, BotoCoreError) as exc:
        return kind_of(exc) is Kind.PRECONDITION
    if answer.get("DeleteMarker") and answer.get("VersionId"):
        canary.remember(canary.second, answer["VersionId"])  # it ignored If-Match: the marker goes too
    return False


# --- canaries: written for a probe, always removed; the ones killed probes left --------------

@contextlib.contextmanager
def canaries(client, bucket: str, capabilities: BucketCapabilities, *, retrier=None) -> Iterator[Canaries]:
    """Canaries ``first`` and ``second`` for the block; whatever happens in it, everything the
    block wrote in their folder is removed when it ends (by version on a versioned bucket).
    Canaries that killed probes left behind are swept first."""
    sweep_stale_canaries(client, bucket, capabilities)
    canary = Canaries(client, bucket, retrier=retrier)
    try:
        canary.put(canary.first, b"ponos-toolkit canary: first")
        canary.put(canary.second, b"ponos-toolkit canary: second")
        yield canary
    finally:
        remove_canaries(client, bucket, canary.written, capabilities)
        # What the block did not know it wrote (an obstore release's percent-encoded copy).
        left = listed_canaries(client, bucket, canary.folder, capabilities.versioned, capabilities.notes)
        remove_canaries(client, bucket, [(key, version) for key, version, _ in left or ()], capabilities)


def sweep_stale_canaries(client, bucket: str, capabilities: BucketCapabilities) -> int:
    """Remove the canaries of probes killed before they could: at once those of a dead process
    of this host, those of other hosts once older than CANARY_MAX_AGE. Returns how many keys."""
    found = listed_canaries(client, bucket, CANARY_PREFIX, capabilities.versioned, capabilities.notes)
    if found is None:
        return 0
    now = datetime.now(timezone.utc)
    stale = [(key, version) for key, version, modified in found if _abandoned(key, modified, now)]
    remove_canaries(client, bucket, stale, capabilities)
    keys = len({key for key, _ in stale})
    if keys:
        capabilities.notes.append(f"removed {keys} canary object(s) an interrupted run left behind")
    return keys


def _abandoned(key: str, modified: datetime, now: datetime) -> bool:
    owner = CanaryOwner.of_key(key)
    return (owner is not None and owner.is_dead()) or now - modified > CANARY_MAX_AGE
