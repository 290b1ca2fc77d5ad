"""ponoskit/s3/errors.py: what a failure means (botocore and obstore errors), one-line messages. No
server.
"""

from __future__ import annotations

import pytest
from botocore.exceptions import EndpointConnectionError

from ponoskit.s3.errors import Kind, kind_of, one_line
from tests.unit.helpers import client_error


@pytest.mark.parametrize("error, kind", [
    (client_error("SlowDown", 503), Kind.THROTTLED),
    (client_error("503", 503), Kind.THROTTLED),
    (client_error("InternalError", 500), Kind.TRANSIENT),
    (client_error("RequestTimeout", 400), Kind.TRANSIENT),
    (client_error("AccessDenied", 403), Kind.PERMISSION),
    (client_error("InvalidObjectState", 403), Kind.ARCHIVED),
    (client_error("ObjectNotInActiveTierError", 403), Kind.ARCHIVED),
    (client_error("PreconditionFailed", 412), Kind.PRECONDITION),
    (client_error("ConditionalRequestConflict", 409), Kind.PRECONDITION),
    (client_error("NoSuchKey", 404), Kind.NOT_FOUND),
    (client_error("InvalidArgument", 400), Kind.OTHER),
    (EndpointConnectionError(endpoint_url="http://x"), Kind.TRANSIENT),
])
def test_kind_of_botocore_errors(error, kind):
    assert kind_of(error) is kind


def test_kind_of_obstore_errors_reads_types_never_text():
    from obstore import exceptions as ox
    assert kind_of(ox.AlreadyExistsError("Object at location b already exists: 412 Precondition Failed")) \
        is Kind.PRECONDITION
    assert kind_of(ox.PermissionDeniedError("denied")) is Kind.PERMISSION
    assert kind_of(ox.NotFoundError("gone")) is Kind.NOT_FOUND
    # A generic error is asked again through boto3, whatever its words say: an SSE-C refusal
    # (400) carries "retry_timeout" in obstore's text and once looked like an outage.
    for text in ("Generic S3 error: Error performing PUT http://h/b/k in 0s, after 0 retries, max_retries: 10, "
                 "retry_timeout: 180s - Server returned non-2xx status code: 400 Bad Request: <Code>InvalidRequest",
                 "Server returned non-2xx status code: 503 Service Unavailable: <Error><Code>SlowDown</Code>",
                 "error sending request for url (http://h/b/k)"):
        assert kind_of(ox.GenericError(text)) is Kind.UNTYPED
    assert kind_of(FileNotFoundError("gone")) is Kind.OTHER


def test_kind_of_code_is_shared_by_deletes_and_requests():
    from ponoskit.s3.delete import ObjectDeleteError
    from ponoskit.s3.errors import kind_of_code
    assert kind_of_code("ServiceUnavailable") is Kind.THROTTLED
    assert ObjectDeleteError("b", "k", "ServiceUnavailable", "").kind is Kind.THROTTLED
    assert kind_of_code("InvalidRequest", 400) is Kind.OTHER
    assert kind_of_code("", 502) is Kind.TRANSIENT
    assert kind_of_code("NotImplemented", 501) is Kind.OTHER  # never retried for the whole deadline
    assert kind_of_code("", 501) is Kind.OTHER


def test_one_line_is_short_and_single():
    text = one_line(client_error("SlowDown", 503))
    assert "\n" not in text and "SlowDown" in text and text.startswith("CopyObject")
