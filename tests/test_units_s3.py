"""Unit tests of the small objects the S3 jobs are built from: the low-water mark, key ranges,
the AIMD limiter and the retry loop, failure kinds, the same-content rules, the permission
streak, checkpoint validation, durations. No server needed.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from concurrent.futures import Future

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from migrate.low_water import LowWaterMark
from migrate.s3_mover import PermissionStreak
from migrate.s3_rename import checkpoint_problem
from ponoskit.checkpoint import Checkpoint
from ponoskit.cli import parse_duration
from ponoskit.errors import ConfigError
from ponoskit.keyrange import KeyRange
from ponoskit.s3 import content
from ponoskit.s3.copy import SourceFacts, normalize_etag
from ponoskit.s3.errors import Kind, S3PermissionError, S3TransientError, kind_of, one_line
from ponoskit.s3.limiter import AdaptiveLimiter
from ponoskit.s3.retry import Retrier


def client_error(code: str, status: int, operation: str = "CopyObject") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       operation)


# --- low-water mark ------------------------------------------------------------------------

def done(value=True) -> Future:
    future = Future()
    future.set_result(value)
    return future


def test_the_mark_advances_over_settled_pages_in_order_only():
    state, saves = {"after": None}, []
    mark = LowWaterMark(state, lambda: saves.append(dict(state)))
    slow = Future()
    mark.add("a9", [done(), done()])
    mark.add("b9", [slow])
    mark.add("c9", [done()])
    mark.settle(10, lambda ok: ok)
    assert state["after"] == "a9"  # c9 is done, but b9 is not: the mark waits
    slow.set_result(True)
    mark.settle(10, lambda ok: ok)
    assert state["after"] == "c9" and [s["after"] for s in saves] == ["a9", "b9", "c9"]


def test_past_a_problem_the_mark_stays_so_a_rerun_sees_it_again():
    state = {"after": None}
    mark = LowWaterMark(state)
    mark.add("a9", [done()])
    mark.add("b9", [done(False)])  # a conflict
    mark.add("c9", [done()])
    assert mark.finish(lambda ok: ok) is False
    assert state == {"after": "a9", "complete": False}


def test_an_undecided_page_keeps_the_mark_and_a_folder_marker_page_does_not_move_it():
    state = {"after": None}
    mark = LowWaterMark(state)
    mark.add("a9", [done()])
    mark.add(None, [])  # a page of folder markers only
    mark.add("c9", [done()], decided=False)
    mark.finish(lambda ok: ok)
    assert state["after"] == "a9"


def test_a_full_window_waits_for_the_oldest_page_whole():
    state = {"after": None}
    mark = LowWaterMark(state)
    pending = [Future() for _ in range(3)]
    mark.add("a9", pending)
    threading.Timer(0.2, lambda: [f.set_result(True) for f in pending]).start()
    started = time.monotonic()
    mark.settle(0, lambda ok: ok)
    assert time.monotonic() - started >= 0.15 and state["after"] == "a9" and mark.in_flight == 0


def test_a_move_that_raised_stops_the_run_and_keeps_the_mark():
    state = {"after": "x"}
    mark = LowWaterMark(state)
    failed = Future()
    failed.set_exception(S3TransientError("S3 kept failing"))
    mark.add("a9", [failed])
    with pytest.raises(S3TransientError):
        mark.settle(10, lambda ok: ok)
    assert state["after"] == "x"


# --- key ranges ------------------------------------------------------------------------------

def test_a_key_range_is_inclusive_then_exclusive():
    middle = KeyRange("4000", "8000")
    assert "4000" in middle and "7fff/x" in middle and "8000" not in middle and "3fff" not in middle
    assert "anything" in KeyRange() and "" in KeyRange()


@pytest.mark.parametrize("start, end", [(None, None), ("4000", "8000"), ("ab", "ac"), (None, "b"), ("b", None)])
def test_covers_prefix_agrees_with_brute_force(start, end):
    key_range = KeyRange(start, end)
    alphabet = "0489abc/"
    for length in range(1, 3):
        for prefix in map("".join, itertools.product(alphabet, repeat=length)):
            keys_with_prefix = [prefix + "".join(rest) for n in range(0, 3)
                                for rest in itertools.product(alphabet, repeat=n)]
            if any(key in key_range for key in keys_with_prefix):
                assert key_range.covers_prefix(prefix), (key_range, prefix)
            if not key_range.covers_prefix(prefix):
                assert not any(key in key_range for key in keys_with_prefix)


# --- the limiter and the retry loop ----------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_throttle_halves_the_window_once_per_cooldown_and_successes_widen_it():
    clock = Clock()
    limiter = AdaptiveLimiter(64, cooldown=1.0, clock=clock)
    for _ in range(20):  # one burst of 503s counts once
        limiter.throttled()
    assert limiter.window == 32 and limiter.throttles == 20 and limiter.cuts == 1
    clock.now = 2.0
    limiter.throttled()
    assert limiter.window == 16 and limiter.smallest_window == 16
    for _ in range(16 * 3):
        limiter.success()
    assert 18 <= limiter.window <= 20  # about +1 per window of successes
    for _ in range(100):
        clock.now += 2
        limiter.throttled()
    assert limiter.window == 1  # never below the minimum


def test_the_window_bounds_concurrency_across_threads():
    limiter = AdaptiveLimiter(4)
    limiter._window = 2.0
    inside, peak, lock = [0], [0], threading.Lock()

    def work():
        with limiter.slot():
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= 1
    threads = [threading.Thread(target=work) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 2


def test_max_rps_spaces_requests_out():
    limiter = AdaptiveLimiter(8, max_rps=50)
    started = time.monotonic()
    for _ in range(11):
        with limiter.slot():
            pass
    assert time.monotonic() - started >= 0.19  # 10 intervals of 20 ms


def test_the_retry_loop_retries_throttles_and_transients_and_tells_the_limiter():
    limiter = AdaptiveLimiter(8, cooldown=0)
    retrier = Retrier(limiter, deadline=60, sleep=lambda s: None)
    answers = iter([client_error("SlowDown", 503), EndpointConnectionError(endpoint_url="x"),
                    client_error("InternalError", 500), "copied"])

    def flaky():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer
    assert retrier.call("CopyObject", flaky) == "copied"
    assert retrier.retries == 3 and limiter.throttles == 1 and limiter.window < 8


def test_past_the_deadline_the_run_stops_as_transient_and_other_errors_pass_through():
    clock = Clock()
    retrier = Retrier(AdaptiveLimiter(2), deadline=30, sleep=lambda s: setattr(clock, "now", clock.now + s),
                      clock=clock)

    def always_503():
        raise client_error("SlowDown", 503)
    with pytest.raises(S3TransientError) as info:
        retrier.call("CopyObject", always_503)
    assert info.value.exit_code == 75 and "SlowDown" in str(info.value) and clock.now >= 30

    def precondition():
        raise client_error("PreconditionFailed", 412)
    with pytest.raises(ClientError):
        retrier.call("CopyObject", precondition)  # not ours to retry: the caller settles it


def test_a_stopping_run_does_not_wait_out_retries():
    retrier = Retrier(AdaptiveLimiter(2), deadline=3600, sleep=lambda s: pytest.fail("slept"))
    retrier.stopping.set()
    with pytest.raises(S3TransientError):
        retrier.call("HeadObject", lambda: (_ for _ in ()).throw(client_error("InternalError", 500)))


# --- what a failure means ------------------------------------------------------------------

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


# --- same content ---------------------------------------------------------------------------

def facts(**fields) -> SourceFacts:
    return SourceFacts(**{"size": 10, "etag": "0123456789abcdef0123456789abcdef", **fields})


def test_sizes_decide_first():
    assert content.compare(facts(size=10), facts(size=11)).same is False


def test_full_object_checksums_decide_and_composite_ones_do_not():
    same = content.compare(facts(checksums={"ChecksumCRC64NVME": "a"}, etag="x-2"),
                           facts(checksums={"ChecksumCRC64NVME": "a"}, etag="y-3"))
    assert same.same is True and "CRC64NVME" in same.how
    differ = content.compare(facts(checksums={"ChecksumCRC32": "a"}), facts(checksums={"ChecksumCRC32": "b"}))
    assert differ.same is False
    composite = content.compare(facts(checksums={"ChecksumCRC32": "a-2"}, etag="x-2", checksum_type="COMPOSITE"),
                                facts(checksums={"ChecksumCRC32": "a-2"}, etag="y-2", checksum_type="COMPOSITE"))
    assert composite.same is None  # a checksum of part checksums says nothing across part layouts


def test_md5_etags_decide_only_without_kms_or_customer_keys():
    assert content.compare(facts(), facts()).same is True
    assert content.compare(facts(), facts(etag="ffff")).same is False
    kms = content.compare(facts(sse="aws:kms"), facts(sse="aws:kms"))
    assert kms.same is None  # KMS ETags are not MD5s: equal or not says nothing
    assert content.compare(facts(sse_customer=True), facts()).same is None


def test_reading_decides_within_the_limit_and_never_above():
    multipart = dict(etag="abc-2")
    assert content.compare(facts(**multipart), facts(), read_both=lambda: True, read_limit=100).same is True
    assert content.compare(facts(**multipart), facts(), read_both=lambda: False, read_limit=100).same is False
    above = content.compare(facts(**multipart, size=1000), facts(size=1000), read_both=lambda: pytest.fail("read"),
                            read_limit=100)
    assert above.same is None and "cannot tell" in above.how


def test_etags_compare_without_quotes():
    assert normalize_etag('"abc"') == normalize_etag("abc") == "abc"
    assert SourceFacts.from_head({"ContentLength": 1, "ETag": '"abc"'}).etag == "abc"


def test_archived_unless_restored():
    assert facts(storage_class="GLACIER").archived
    assert facts(storage_class="DEEP_ARCHIVE", restore='ongoing-request="true"').archived
    assert not facts(storage_class="GLACIER", restore='ongoing-request="false", expiry-date="..."').archived
    assert facts(storage_class="INTELLIGENT_TIERING", archive_status="ARCHIVE_ACCESS").archived
    assert not facts(storage_class="GLACIER_IR").archived


def test_encryption_parameters_keep_the_kms_key():
    assert facts(sse="aws:kms", kms_key="k1", bucket_key=True).encryption() == {
        "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "k1", "BucketKeyEnabled": True}
    assert facts(sse="AES256").encryption() == {"ServerSideEncryption": "AES256"}
    assert facts().encryption() == {}


# --- permission streak ------------------------------------------------------------------------

def test_identical_refusals_in_a_row_stop_and_a_success_resets_the_streak():
    streak = PermissionStreak(limit=3)
    streak.refused("CopyObject", "AccessDenied")
    streak.refused("CopyObject", "AccessDenied")
    streak.success()
    streak.refused("CopyObject", "AccessDenied")
    streak.refused("DeleteObject", "AccessDenied")  # another operation: a new streak
    streak.refused("DeleteObject", "AccessDenied")
    with pytest.raises(S3PermissionError) as info:
        streak.refused("DeleteObject", "AccessDenied")
    assert "s3:DeleteObject" in str(info.value) and info.value.exit_code == 2


# --- checkpoints ------------------------------------------------------------------------------

def test_a_checkpoint_names_what_differs_in_its_identity(tmp_path):
    path = tmp_path / "ck.json"
    Checkpoint(str(path), {"job": "s3-rename", "endpoint": "http://rehearsal", "database": {"name": "a"}}).save({})
    with pytest.raises(ConfigError) as info:
        Checkpoint(str(path), {"job": "s3-rename", "endpoint": "aws:eu-west-3", "database": {"name": "a"}}).load()
    assert "endpoint" in str(info.value) and "database" not in str(info.value).split("(", 1)[1].split(";")[0]


@pytest.mark.parametrize("state, ok", [
    ({}, True),
    ({"b": {"after": None, "complete": False, "started_at": "2026-12-01T10:00:00+00:00"}}, True),
    ({"b": {"after": "k", "complete": True}}, True),
    ({"b": []}, False), ({"b": {"after": 3}}, False), ({"b": {"complete": 1}}, False),
    ({"b": {"started_at": "soon"}}, False),
])
def test_checkpoint_state_shapes(state, ok):
    assert (checkpoint_problem(state) is None) is ok


def test_a_malformed_checkpoint_is_a_config_error_not_a_type_error(tmp_path):
    path = tmp_path / "ck.json"
    path.write_text(json.dumps({"identity": {"job": "x"}, "state": {"b": {"after": 3}}}))
    with pytest.raises(ConfigError) as info:
        Checkpoint(str(path), {"job": "x"}, validate=checkpoint_problem).load()
    assert "malformed" in str(info.value)


# --- one duration grammar ---------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("600", 600), ("500ms", 0.5), ("10m", 600), ("10min", 600),
                                           ("1h30m", 5400), ("7d", 604800), ("1.5", 1.5), ("2s", 2)])
def test_every_command_reads_durations_alike(text, seconds):
    assert parse_duration("--x", text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["ten minutes", "", "1 h", "5y", "-3"])
def test_bad_durations_are_config_errors(text):
    with pytest.raises(ConfigError):
        parse_duration("--x", text)


# --- the lean parse of listings and DeleteObjects answers --------------------------------------

LISTING = (b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
           b"<Name>b</Name><Prefix>p%20q</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>"
           b"<Delimiter>/</Delimiter><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
           b"<ContinuationToken>t1</ContinuationToken><NextContinuationToken>t2</NextContinuationToken>"
           b"<StartAfter>a</StartAfter>"
           b"<Contents><Key>a%26b/%C3%BC%07.txt</Key><LastModified>2026-12-01T10:00:00.000Z</LastModified>"
           b"<ETag>&quot;9f9b&quot;</ETag><ChecksumAlgorithm>CRC32</ChecksumAlgorithm><Size>147</Size>"
           b"<Owner><ID>x</ID></Owner><StorageClass>STANDARD_IA</StorageClass></Contents>"
           b"<Contents><Key>k2</Key><LastModified>2026-12-01T10:00:01.000Z</LastModified><ETag>&quot;e-2&quot;"
           b"</ETag><Size>0</Size><StorageClass>GLACIER</StorageClass></Contents>"
           b"<CommonPrefixes><Prefix>dir%2F/</Prefix></CommonPrefixes><CommonPrefixes><Prefix>d2/</Prefix>"
           b"</CommonPrefixes></ListBucketResult>")
EMPTY_LISTING = (b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/'
                 b'2006-03-01/"><Name>b</Name><Prefix></Prefix><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys>'
                 b"<IsTruncated>false</IsTruncated></ListBucketResult>")
DELETED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
           b"<Deleted><Key>a&amp;b</Key></Deleted><Deleted><Key>v</Key><VersionId>v1</VersionId></Deleted>"
           b"<Deleted><Key>m</Key><DeleteMarker>true</DeleteMarker><DeleteMarkerVersionId>dm</DeleteMarkerVersionId>"
           b"</Deleted><Error><Key>x</Key><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
           b"</DeleteResult>")


@pytest.mark.parametrize("operation, body", [("ListObjectsV2", LISTING), ("ListObjectsV2", EMPTY_LISTING),
                                             ("DeleteObjects", DELETED)], ids=["listing", "empty", "deleted"])
def test_the_lean_parse_gives_what_botocore_gives_for_the_fields_the_jobs_read(operation, body):
    import botocore.session
    from botocore.parsers import RestXMLParser

    from ponoskit.s3.lean_parse import LeanRestXMLParser
    shape = botocore.session.get_session().get_service_model("s3").operation_model(operation).output_shape
    response = {"status_code": 200, "headers": {"x-amz-request-id": "r1", "x-amz-id-2": "h"}, "body": body}
    theirs = RestXMLParser(timestamp_parser=lambda v: v).parse(response, shape)
    ours = LeanRestXMLParser(timestamp_parser=lambda v: v).parse(response, shape)
    read = {"Contents": ("Key", "Size", "ETag", "LastModified", "StorageClass")}
    for item in theirs.get("Contents", []):
        for field in list(item):
            if field not in read["Contents"]:
                del item[field]
    assert ours == theirs


def test_slots_go_first_come_first_served_so_busy_workers_never_starve_another_thread():
    limiter = AdaptiveLimiter(2)
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            with limiter.slot():
                time.sleep(0.001)
    workers = [threading.Thread(target=busy) for _ in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(0.05)
    started = time.monotonic()
    with limiter.slot():
        waited = time.monotonic() - started
    stop.set()
    for worker in workers:
        worker.join()
    assert waited < 0.5  # a few milliseconds: it was next in line


@pytest.mark.parametrize("body, bad", [
    (b'<?xml version="1.0"?>\n<ListBucketResult xmlns="x"><Name>b</Name></ListBucketResult>', False),
    (b'<?xml version="1.0"?>\n<ListBucketResult xmlns="x"><Name>b</Na', True),
    (b'<?xml version="1.0"?><Error><Code>InternalError</Code></Error>', True),
    (b'<?xml version="1.0" encoding="UTF-8"?>\n<VersioningConfiguration xmlns="x"/>', False),
    (b"<CopyObjectResult><ETag>x</ETag></CopyObjectResult>\n", False),
    (b"not xml", True),
], ids=["whole", "cut-short", "error", "empty-root", "copy", "garbage"])
def test_a_200_body_is_an_error_when_it_says_so_or_is_cut_short(body, bad):
    from ponoskit.connections import _error_or_truncated
    assert _error_or_truncated(body) is bad
