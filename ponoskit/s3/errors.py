"""What an S3 failure means for the run, whichever client raised it (botocore or obstore).

Every job asks :func:`kind_of` before it decides: retry later (throttled, transient), stop
with a configuration error (permission), record the key (archived, not found, precondition),
or report the key as failed (anything else: a 4xx on one object is that object's failure).
The kind comes from the error's S3 code and HTTP status, or from obstore's exception type,
never from its message text: a text that happens to contain "timeout" (obstore prints its
retry settings in every error) once made a permanent refusal look like an outage. An obstore
error with no type of its own is :attr:`Kind.UNTYPED`: the caller repeats the request with
boto3, whose answer has a code and a status. The typed errors at the bottom are what the jobs
raise once retries are spent; the CLI turns them into exit codes (75 for transient).
"""

from __future__ import annotations

import enum
from typing import Optional

from botocore.exceptions import (BotoCoreError, ClientError, ConnectionClosedError, ConnectTimeoutError,
                                 EndpointConnectionError, ReadTimeoutError, ResponseStreamingError)

from ..errors import ConfigError, PonosError, TransientError


class Kind(enum.Enum):
    THROTTLED = "throttled"        # 503 SlowDown, 429: slow the whole run down, then retry
    TRANSIENT = "transient"        # 5xx, connection reset, timeout: retry, then exit 75
    PERMISSION = "permission"      # 403 and friends: configuration, stop (exit 2)
    ARCHIVED = "archived"          # GLACIER / DEEP_ARCHIVE not restored: report, never fail
    NOT_FOUND = "not_found"        # 404
    PRECONDITION = "precondition"  # 412 (If-None-Match / If-Match lost), 409 conditional conflict
    OTHER = "other"                # 400s that say something is wrong with this one key
    UNTYPED = "untyped"            # obstore's GenericError: ask boto3 again to know what it is


THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                  "TooManyRequestsException", "RequestThrottled", "RequestThrottledException",
                  "ProvisionedThroughputExceededException", "BandwidthLimitExceeded", "EC2ThrottledException",
                  "ServiceUnavailable", "503", "429"}  # a 503 from S3 means "slow down", whatever its code
TRANSIENT_CODES = {"InternalError", "RequestTimeout", "RequestTimeoutException",
                   "PriorRequestNotComplete", "OperationAborted", "500", "502", "504"}
PERMISSION_CODES = {"AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                    "AccountProblem", "InvalidToken", "ExpiredToken", "TokenRefreshRequired", "403",
                    "KMS.AccessDeniedException", "KMS.DisabledException", "KMS.KMSInvalidStateException",
                    "KMS.NotFoundException", "AuthorizationHeaderMalformed", "InvalidSecurity"}
ARCHIVED_CODES = {"InvalidObjectState", "ObjectNotInActiveTierError"}
NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404", "NoSuchVersion"}
# A 501 is the server saying it will never do this (Ceph RGW copying an SSE-C object over
# plain HTTP): that object's failure, not an outage to wait out.
REFUSED_CODES = {"NotImplemented", "501", "InvalidRequest", "InvalidArgument"}
PRECONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412"}
_CONNECTION_ERRORS = (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError,
                      ResponseStreamingError)
_CODE_TABLE = ((REFUSED_CODES, Kind.OTHER), (THROTTLE_CODES, Kind.THROTTLED), (ARCHIVED_CODES, Kind.ARCHIVED), (PRECONDITION_CODES, Kind.PRECONDITION),
               (NOT_FOUND_CODES, Kind.NOT_FOUND), (PERMISSION_CODES, Kind.PERMISSION), (TRANSIENT_CODES, Kind.TRANSIENT))


def error_code(exc: BaseException) -> str:
    """The S3 error code (``SlowDown``, ``AccessDenied``...) or the HTTP status as text, or ''."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "")
        return code or str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")
    return ""


def http_status(exc: BaseException) -> Optional[int]:
    if isinstance(exc, ClientError):
        return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


def kind_of_code(code: str, status: Optional[int] = None) -> Kind:
    """The kind of an S3 error code (a ClientError's, or a per-key entry of DeleteObjects)."""
    for codes, kind in _CODE_TABLE:
        if code in codes:
            return kind
    return _kind_of_status(status)


def kind_of(exc: BaseException) -> Kind:
    """What kind of failure ``exc`` is (see :class:`Kind`)."""
    if isinstance(exc, ClientError):
        return kind_of_code(error_code(exc), http_status(exc))
    if isinstance(exc, _CONNECTION_ERRORS):
        return Kind.TRANSIENT
    if isinstance(exc, BotoCoreError):
        return Kind.OTHER
    return _kind_of_obstore(exc)


def _kind_of_status(status: Optional[int]) -> Kind:
    if status in (429, 503):
        return Kind.THROTTLED
    if status is not None and status >= 500 and status != 501:
        return Kind.TRANSIENT
    if status == 403:
        return Kind.PERMISSION
    if status == 404:
        return Kind.NOT_FOUND
    if status in (409, 412):
        return Kind.PRECONDITION
    return Kind.OTHER


def _kind_of_obstore(exc: BaseException) -> Kind:
    try:
        from obstore import exceptions as ox
    except ImportError:  # pragma: no cover - obstore is a dependency
        return Kind.OTHER
    for types, kind in (((ox.AlreadyExistsError, ox.PreconditionError), Kind.PRECONDITION),
                        (ox.NotFoundError, Kind.NOT_FOUND),
                        ((ox.PermissionDeniedError, ox.UnauthenticatedError), Kind.PERMISSION),
                        (ox.BaseError, Kind.UNTYPED)):
        if isinstance(exc, types):
            return kind
    return Kind.OTHER


def is_retryable(exc: BaseException) -> bool:
    return kind_of(exc) in (Kind.THROTTLED, Kind.TRANSIENT)


def one_line(exc: BaseException) -> str:
    """An error as one short line: S3's code and message, not a botocore paragraph."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        operation = getattr(exc, "operation_name", "") or "request"
        text = f"{operation}: {error.get('Code') or http_status(exc)} {error.get('Message') or ''}"
    else:
        text = str(exc) or type(exc).__name__
        # obstore repeats the whole response body; the first sentence says it.
        text = text.split("\n\nDebug source:")[0]
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


class S3Error(PonosError):
    """S3 answered with an error that no retry fixes (exit 1)."""


class S3PermissionError(ConfigError):
    """S3 refused what the job must do (403): fix the IAM policy or the bucket policy (exit 2)."""


class S3TransientError(TransientError):
    """S3 kept failing (5xx, throttling, connection) after every retry: run again later (exit 75)."""


def raise_typed(exc: BaseException, what: str):
    """Re-raise an S3 failure of ``what`` (a listing, a bucket check) as a typed error."""
    kind = kind_of(exc)
    if kind is Kind.PERMISSION:
        raise S3PermissionError(f"{what}: permission denied ({one_line(exc)}); check the IAM policy") from None
    if kind in (Kind.THROTTLED, Kind.TRANSIENT):
        raise S3TransientError(f"{what}: S3 kept failing after retries ({one_line(exc)}); run again to resume") \
            from None
    if kind is Kind.NOT_FOUND:
        raise ConfigError(f"{what}: not found ({one_line(exc)})") from None
    raise S3Error(f"{what}: {one_line(exc)}") from None
