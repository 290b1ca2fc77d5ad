"""ponoskit/s3/delete.py: DeleteObjects and its per-key answers (botocore's Stubber: exact requests,
canned answers). No server.
"""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from ponoskit.buffer import BatchBuffer
from ponoskit.s3.delete import MAX_KEYS_PER_REQUEST, ObjectDeleteError, ObjectRef, delete_keys, delete_objects
from ponoskit.s3.errors import Kind as S3Kind, S3PermissionError


@pytest.fixture
def stubbed_s3():
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing", endpoint_url="https://s3.us-east-1.amazonaws.com")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def _delete_request(bucket, chunk):
    return {"Bucket": bucket, "Delete": {"Objects": [{"Key": k} for k in chunk], "Quiet": False}}


def _deleted(keys_):
    return [{"Key": k} for k in keys_]


def test_delete_keys_reports_per_key_errors_of_a_200(stubbed_s3):
    client, stubber = stubbed_s3
    batch = ["wf/t/a.txt", "wf/t/b c.txt", "wf/t/ü+%#?.bin", "t.log"]
    stubber.add_response("delete_objects", {
        "Deleted": _deleted([batch[0], batch[2]]),
        "Errors": [{"Key": "wf/t/b c.txt", "Code": "AccessDenied", "Message": "Access Denied"},
                   {"Key": "t.log", "Code": "InternalError", "Message": "try again"}],
    }, _delete_request("bkt", batch))
    # A per-key InternalError is worth another try, alone.
    stubber.add_client_error("delete_object", service_error_code="AccessDenied", http_status_code=403,
                             expected_params={"Bucket": "bkt", "Key": "t.log"})
    results = delete_keys(client, "bkt", batch)
    assert len(results) == len(batch)
    assert results[0] is None and results[2] is None
    for index, code in ((1, "AccessDenied"), (3, "AccessDenied")):
        err = results[index]
        assert isinstance(err, ObjectDeleteError)
        assert (err.bucket, err.key, err.code) == ("bkt", batch[index], code)
        assert batch[index] in str(err)


def test_a_key_counts_as_deleted_only_with_an_explicit_deleted_entry(stubbed_s3):
    client, stubber = stubbed_s3
    batch = ["a", "b", "c"]
    # The answer names "a" only, and "b" under another spelling: both others go again, alone.
    stubber.add_response("delete_objects", {"Deleted": [{"Key": "a"}, {"Key": "B"}]}, _delete_request("bkt", batch))
    stubber.add_response("delete_object", {}, {"Bucket": "bkt", "Key": "b"})
    stubber.add_response("delete_object", {}, {"Bucket": "bkt", "Key": "c"})
    assert delete_keys(client, "bkt", batch) == [None, None, None]


def test_keys_xml_cannot_carry_never_go_in_a_batch(stubbed_s3):
    client, stubber = stubbed_s3
    batch = ["ok-1", "bell\x07key", "ok-2", "cr\rkey", "nonchar\uffff"]
    stubber.add_response("delete_objects", {"Deleted": _deleted(["ok-1", "ok-2"])},
                         _delete_request("bkt", ["ok-1", "ok-2"]))
    for key in ("bell\x07key", "cr\rkey", "nonchar\uffff"):
        stubber.add_response("delete_object", {}, {"Bucket": "bkt", "Key": key})
    assert delete_keys(client, "bkt", batch) == [None] * 5


def test_a_batch_refused_whole_is_split_down_to_the_bad_key(stubbed_s3):
    client, stubber = stubbed_s3
    batch = ["k0", "k1", "k2", "k3"]
    stubber.add_client_error("delete_objects", service_error_code="MalformedXML", http_status_code=400,
                             expected_params=_delete_request("bkt", batch))
    stubber.add_response("delete_objects", {"Deleted": _deleted(["k0", "k1"])}, _delete_request("bkt", ["k0", "k1"]))
    stubber.add_client_error("delete_objects", service_error_code="MalformedXML", http_status_code=400,
                             expected_params=_delete_request("bkt", ["k2", "k3"]))
    stubber.add_response("delete_object", {}, {"Bucket": "bkt", "Key": "k2"})
    stubber.add_client_error("delete_object", service_error_code="InvalidArgument", http_status_code=400,
                             expected_params={"Bucket": "bkt", "Key": "k3"})
    results = delete_keys(client, "bkt", batch)
    assert results[:3] == [None, None, None]
    assert isinstance(results[3], ObjectDeleteError) and results[3].code == "InvalidArgument"


def test_versions_and_etags_are_named_when_given(stubbed_s3):
    client, stubber = stubbed_s3
    refs = [ObjectRef("a", version_id="v1", etag="e1"), ObjectRef("b", etag='"e2"')]
    stubber.add_response("delete_objects", {"Deleted": [{"Key": "a", "VersionId": "v1"}],
                                            "Errors": [{"Key": "b", "Code": "PreconditionFailed", "Message": "x"}]},
                         {"Bucket": "bkt", "Delete": {"Quiet": False, "Objects": [
                             {"Key": "a", "VersionId": "v1", "ETag": '"e1"'}, {"Key": "b", "ETag": '"e2"'}]}})
    results = delete_objects(client, "bkt", refs, conditional=True)
    assert results[0] is None
    assert results[1].code == "PreconditionFailed" and results[1].kind is S3Kind.PRECONDITION


def test_delete_keys_splits_into_requests_of_at_most_1000(stubbed_s3):
    client, stubber = stubbed_s3
    batch = [f"task/{i:05d}.bin" for i in range(2 * MAX_KEYS_PER_REQUEST + 500)]
    assert MAX_KEYS_PER_REQUEST == 1000  # S3's DeleteObjects limit
    chunks = [batch[i:i + 1000] for i in range(0, len(batch), 1000)]
    failing = {batch[5], batch[1500], batch[-1]}
    for chunk in chunks:
        errors = [{"Key": k, "Code": "AccessDenied", "Message": "x"} for k in chunk if k in failing]
        stubber.add_response("delete_objects", {"Deleted": _deleted(k for k in chunk if k not in failing),
                                                **({"Errors": errors} if errors else {})},
                             _delete_request("bkt", chunk))
    results = delete_keys(client, "bkt", batch)
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    assert len(results) == len(batch)
    assert {batch[i] for i, r in enumerate(results) if r is not None} == failing


def test_delete_keys_raises_when_the_whole_request_is_denied(stubbed_s3):
    client, stubber = stubbed_s3
    stubber.add_client_error("delete_objects", service_error_code="AccessDenied", http_status_code=403,
                             expected_params=_delete_request("bkt", ["a", "b"]))
    with pytest.raises(S3PermissionError) as info:
        delete_keys(client, "bkt", ["a", "b"])
    assert "s3:DeleteObject" in str(info.value) and info.value.exit_code == 2


def test_delete_keys_raises_when_the_whole_request_keeps_failing(stubbed_s3):
    client, stubber = stubbed_s3
    stubber.add_client_error("delete_objects", service_error_code="SlowDown", http_status_code=503,
                             expected_params=_delete_request("bkt", ["a", "b"]))
    with pytest.raises(ClientError):
        delete_keys(client, "bkt", ["a", "b"])


def test_delete_keys_as_a_buffer_flush_fails_only_the_refused_keys(stubbed_s3):
    client, stubber = stubbed_s3
    stubber.add_response("delete_objects", {
        "Deleted": _deleted(["a", "c"]),
        "Errors": [{"Key": "b", "Code": "AccessDenied", "Message": "no"}]}, _delete_request("bkt", ["a", "b", "c"]))
    buf = BatchBuffer("delete:bkt", lambda batch: delete_keys(client, "bkt", batch), max_size=3, interval=60)
    futures = {k: buf.submit(k) for k in ("a", "b", "c")}
    assert futures["a"].result(timeout=5) is None and futures["c"].result(timeout=5) is None
    with pytest.raises(ObjectDeleteError) as info:
        futures["b"].result(timeout=5)
    assert info.value.key == "b"
    buf.close()
