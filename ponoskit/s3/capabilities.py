"""What a bucket's server really does, found out before any change by trying it on canaries.

S3 implementations differ where it matters most (seen here: AWS, SeaweedFS and moto):
``If-None-Match: *`` on CopyObject is honoured by some and silently ignored by others (the copy
overwrites), an ``ETag`` condition in DeleteObjects likewise, and old obstore releases copy
an awkward key to a percent-encoded one. So the jobs do not trust a server's name or a flag:
:func:`probe` writes two canary objects under :data:`CANARY_PREFIX`, tries each behaviour,
and deletes them (by version on a versioned bucket). A refusal here names the permission
that is missing, before anything of the user's changed (exit 2).

Read-only facts come from the bucket's configuration: versioning (a delete must then name the
version it copied) and default encryption (with a KMS default, sources are inspected so their
own key is kept).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Optional

from botocore.exceptions import BotoCoreError, ClientError

from ..keys import CANARY_PREFIX
from .delete import BATCH, SINGLE
from .errors import Kind, S3PermissionError, kind_of, one_line

# A key with everything obstore releases before 0.9.4 percent-encoded in copies.
AWKWARD_NAME = "Ünï cødé a+b%20c#d?e~[x]{y}.txt"
UNKNOWN = "unknown"
# A probe deletes its canaries when it ends; one killed meanwhile leaves them. The next probe
# removes what is older than this (younger ones may be another shard's probe, still running).
CANARY_MAX_AGE = timedelta(minutes=10)


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


def read_configuration(client, bucket: str, capabilities: BucketCapabilities) -> None:
    try:
        capabilities.versioning = client.get_bucket_versioning(Bucket=bucket).get("Status", "") or ""
    except (ClientError, BotoCoreError) as exc:
        capabilities.versioning = UNKNOWN
        capabilities.notes.append(f"versioning unknown ({one_line(exc)}): deletes name the version copied")
    try:
        rules = client.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        default = rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] if rules else None
        capabilities.default_encryption = default
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("ServerSideEncryptionConfigurationNotFoundError", "NoSuchBucketEncryption",
                    "NotImplemented", "XNotImplemented"):
            capabilities.default_encryption = None
        else:
            capabilities.default_encryption = UNKNOWN
            capabilities.notes.append(f"default encryption unknown ({one_line(exc)}): sources are inspected")
    except BotoCoreError as exc:
        capabilities.default_encryption = UNKNOWN
        capabilities.notes.append(f"default encryption unknown ({one_line(exc)})")


def probe(client, bucket: str, capabilities: BucketCapabilities, *, make_store, retrier=None) -> None:
    """Try conditional copies, conditional deletes and obstore's key handling on canaries.

    ``make_store(conditional)`` builds the obstore store of the bucket.
    """
    base = f"{CANARY_PREFIX}{uuid.uuid4()}/"
    first, second, awkward = base + "a", base + "b", base + AWKWARD_NAME
    written: list[tuple[str, Optional[str]]] = []  # (key, version) to delete afterwards

    def call(what, fn, **params):
        return retrier.call(what, fn, **params) if retrier else fn(**params)

    def put(key: str, body: bytes) -> None:
        answer = call("PutObject", client.put_object, Bucket=bucket, Key=key, Body=body)
        written.append((key, answer.get("VersionId")))

    sweep_stale_canaries(client, bucket, capabilities)

    def note_version(key: str) -> None:
        head = client.head_object(Bucket=bucket, Key=key)
        written.append((key, head.get("VersionId")))

    try:
        try:
            put(first, b"ponos-toolkit canary: first")
            put(second, b"ponos-toolkit canary: second")
        except (ClientError, BotoCoreError) as exc:
            raise_refused(exc, bucket, "s3:PutObject")
        # 1. CopyObject with If-None-Match onto an existing key.
        try:
            call("CopyObject", client.copy_object, Bucket=bucket, Key=second, IfNoneMatch="*",
                 CopySource={"Bucket": bucket, "Key": first})
            note_version(second)  # it overwrote: the server ignores the condition
        except (ClientError, BotoCoreError) as exc:
            if kind_of(exc) is Kind.PRECONDITION:
                capabilities.conditional_copy = True
            else:
                raise_refused(exc, bucket, "s3:GetObject and s3:PutObject (CopyObject)")
        # 2. obstore: the awkward key, then the condition.
        try:
            from .copy import obstore_copy
            store = make_store(True)
            obstore_copy(store, first, awkward, conditional=False, retrier=retrier)
            try:
                note_version(awkward)
                capabilities.obstore_exact = True
            except ClientError:
                capabilities.notes.append("obstore changed an awkward key in a copy: copies go through boto3")
            try:
                obstore_copy(store, first, second, conditional=True, retrier=retrier)
                note_version(second)
            except Exception as exc:  # noqa: BLE001 - AlreadyExistsError is the answer we hope for
                capabilities.obstore_conditional_copy = kind_of(exc) is Kind.PRECONDITION
        except Exception as exc:  # noqa: BLE001 - no obstore path then; boto3 does every copy
            capabilities.notes.append(f"obstore unusable here ({one_line(exc)}): copies go through boto3")
        # 3. DeleteObjects with an ETag the object does not have.
        try:
            answer = call("DeleteObjects", client.delete_objects, Bucket=bucket, Delete={"Quiet": False, "Objects": [
                {"Key": first, "ETag": '"00000000000000000000000000000000"'}]})
            written += [(first, d.get("DeleteMarkerVersionId")) for d in answer.get("Deleted", [])
                        if d.get("DeleteMarkerVersionId")]  # it ignored the ETag: remove the marker too
            refused = [e for e in answer.get("Errors", []) if e.get("Key") == first]
            if refused and refused[0].get("Code") == "PreconditionFailed":
                capabilities.conditional_delete = BATCH
            elif refused:
                _refused_code(refused[0], bucket)
        except (ClientError, BotoCoreError) as exc:
            if kind_of(exc) is Kind.PERMISSION:
                raise_refused(exc, bucket, "s3:DeleteObject")
            capabilities.notes.append(f"DeleteObjects with an ETag refused ({one_line(exc)}): deletes are plain")
        # 4. Else DeleteObject with If-Match (some servers honour it there only).
        if not capabilities.conditional_delete:
            try:
                answer = call("DeleteObject", client.delete_object, Bucket=bucket, Key=second,
                              IfMatch='"00000000000000000000000000000000"')
                if answer.get("DeleteMarker") and answer.get("VersionId"):
                    written.append((second, answer["VersionId"]))  # it ignored If-Match: remove the marker
            except (ClientError, BotoCoreError) as exc:
                if kind_of(exc) is Kind.PRECONDITION:
                    capabilities.conditional_delete = SINGLE
            if not capabilities.conditional_delete:
                capabilities.notes.append("deletes cannot be made conditional here: a source rewritten between "
                                          "its copy and its delete would be lost (a versioned bucket keeps it)")
        capabilities.probed = True
    finally:
        remove_canaries(client, bucket, written, capabilities)


def sweep_stale_canaries(client, bucket: str, capabilities: BucketCapabilities) -> int:
    """Delete the canaries of probes killed before they could (older than CANARY_MAX_AGE)."""
    from ..errors import PonosError
    from .listing import iter_objects, timestamp
    cutoff = datetime.now(timezone.utc) - CANARY_MAX_AGE
    try:
        stale = [obj.key for obj in iter_objects(client, bucket, prefix=CANARY_PREFIX)
                 if timestamp(obj.last_modified) < cutoff]
    except PonosError as exc:  # housekeeping: never what stops a run
        capabilities.notes.append(f"could not look for stale canaries: {exc}")
        return 0
    versions = []
    if stale and capabilities.versioned:
        try:
            for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=CANARY_PREFIX):
                versions += [(v["Key"], v["VersionId"]) for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
                             if v["Key"] in set(stale)]
        except (ClientError, BotoCoreError):
            pass
    remove_canaries(client, bucket, [(key, None) for key in stale] + versions, capabilities)
    if stale:
        capabilities.notes.append(f"removed {len(stale)} canary object(s) an interrupted run left behind")
    return len(stale)


def remove_canaries(client, bucket: str, written: list[tuple[str, Optional[str]]], capabilities: BucketCapabilities) -> None:
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


def _refused_code(error: dict, bucket: str) -> None:
    if error.get("Code") in ("AccessDenied", "AllAccessDisabled"):
        raise S3PermissionError(f"bucket {bucket!r}: the job needs s3:DeleteObject ({error.get('Code')}); "
                                "nothing of yours was changed")
