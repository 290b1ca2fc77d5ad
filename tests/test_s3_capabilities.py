"""What the jobs learn about a bucket's server before any change, and the copies in parts that
depend on it: on every test S3 server, with tests/faultproxy.py playing the servers we do not
run (a GetBucketEncryption answered with a listing, checksum headers refused like older MinIO,
a header ignored like moto or Ceph RGW 16.2).

Each test asserts what the code before this change got wrong: a KeyError or a parser error out
of the bucket check, a raw ClientError (or fifteen minutes of retries) for a refused canary,
canaries of a killed probe left in the bucket, a copy in parts that mixed two versions of its
source or lost its tags.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from botocore.exceptions import ClientError

from ponoskit.connections import S3Settings
from ponoskit.context import Context
from ponoskit.errors import ConfigError
from ponoskit.keys import CANARY_PREFIX
from ponoskit.s3 import capabilities
from ponoskit.s3.canary import CanaryOwner
from ponoskit.s3.copy import SourceChanged, TagsNotKept, head_facts, multipart_copy
from ponoskit.s3.errors import Kind, kind_of
from tests.helpers import list_keys
from tests.fixtures.rename import cli_command, state_of

MiB = 1024 ** 2
# Whether CopyObject / UploadPartCopy honour x-amz-copy-source-if-match, measured on each server.
HONOURS_COPY_SOURCE_PIN = {"seaweedfs": True, "moto": False, "rgw": False}
VERSIONED = pytest.mark.parametrize("versioned", [False, True], ids=["unversioned", "versioned"])


@pytest.fixture
def direct(context_factory):
    """A Context straight to the test server (setting up, looking at the result)."""
    return context_factory(use_db=False)


@pytest.fixture
def proxied(s3_env, fault_proxy):
    """Contexts whose S3 clients go through the fault proxy."""
    made = []

    def make() -> Context:
        ctx = Context(job="test", use_db=False, s3=S3Settings(endpoint_url=fault_proxy.endpoint, retry_deadline=60))
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.close()


def a_bucket(make_bucket, direct, versioned: bool = False) -> str:
    bucket = make_bucket("caps")
    if versioned:
        direct.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return bucket


def canaries_in(s3, bucket: str) -> list:
    """Every canary object, and on a versioned bucket every version and delete marker of one."""
    found = [k for k in list_keys(s3, bucket) if k.startswith(CANARY_PREFIX)]
    versions = s3.list_object_versions(Bucket=bucket, Prefix=CANARY_PREFIX)
    return found + [(v["Key"], v["VersionId"]) for v in versions.get("Versions", []) + versions.get("DeleteMarkers", [])]


def listing_body(*keys: str) -> bytes:
    """What Ceph RGW 16.2 answers to GET /bucket?encryption: the bucket's listing."""
    contents = "".join(f"<Contents><Key>{key}</Key><Size>1</Size></Contents>" for key in keys)
    return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>b</Name><Prefix></Prefix><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{contents}"
            "</ListBucketResult>").encode()


# --- the probe ----------------------------------------------------------------------------------

@VERSIONED
def test_the_probe_learns_whether_a_copy_source_is_pinned_and_leaves_no_canary(direct, make_bucket, s3_implementation,
                                                                             versioned):
    bucket = a_bucket(make_bucket, direct, versioned)

    caps = direct.bucket(bucket, probe=True)

    assert caps.probed
    if s3_implementation in HONOURS_COPY_SOURCE_PIN:
        assert caps.pinned_copy_source is HONOURS_COPY_SOURCE_PIN[s3_implementation]
    if not caps.pinned_copy_source:
        assert any("x-amz-copy-source-if-match" in note for note in caps.notes)
    assert canaries_in(direct.s3, bucket) == []  # the ignored pin's copy went too, by version


def test_a_server_that_ignores_the_copy_source_pin_is_found_out(proxied, make_bucket, direct, fault_proxy):
    bucket = a_bucket(make_bucket, direct)
    fault_proxy.add("strip_header", operations=("CopyObject",), header="x-amz-copy-source-if-match")

    caps = proxied().bucket(bucket, probe=True)

    assert fault_proxy.fired("strip_header") >= 1
    assert caps.pinned_copy_source is False  # SeaweedFS honours it: here it never saw it
    assert canaries_in(direct.s3, bucket) == []


# --- the bucket's configuration, when the answer is not one ------------------------------------

@pytest.mark.parametrize("operation, body, field, expected", [
    ("GetBucketEncryption", listing_body("a.txt", "b/c.txt"), "default_encryption", None),
    ("GetBucketEncryption", listing_body("a.txt", "ctl\x01key"), "default_encryption", capabilities.UNKNOWN),
    ("GetBucketVersioning", listing_body("ctl\x01key"), "versioning", capabilities.UNKNOWN),
], ids=["encryption-listing", "encryption-unparsable", "versioning-unparsable"])
def test_a_configuration_answer_that_is_not_one_never_stops_the_check(proxied, make_bucket, direct, fault_proxy,
                                                                      operation, body, field, expected):
    bucket = a_bucket(make_bucket, direct)
    fault_proxy.add("answer", operations=(operation,), status=200, body=body)

    caps = proxied().bucket(bucket)

    assert fault_proxy.fired("answer") >= 1
    assert getattr(caps, field) == expected
    if expected is None:
        assert any("does not implement GetBucketEncryption" in note for note in caps.notes)
    else:
        assert any(note.startswith(("default encryption unknown", "versioning unknown")) for note in caps.notes)


@pytest.mark.parametrize("control_character", [False, True], ids=["plain-keys", "control-character-key"])
def test_the_configuration_of_a_real_bucket_is_read_whatever_its_keys(direct, make_bucket, s3_implementation,
                                                                      control_character):
    bucket = a_bucket(make_bucket, direct)
    direct.s3.put_object(Bucket=bucket, Key="ctl\x01key" if control_character else "plain", Body=b"x")

    caps = capabilities.BucketCapabilities(bucket)
    capabilities.read_configuration(direct.s3, bucket, caps)

    assert caps.versioning == ""
    if s3_implementation == "rgw":  # it answers ?encryption with this listing
        assert caps.default_encryption == (capabilities.UNKNOWN if control_character else None), caps.notes
    else:
        assert caps.default_encryption is None, caps.notes


@pytest.mark.slow
@pytest.mark.parametrize("body", [listing_body("x"), listing_body("ctl\x01key")], ids=["listing", "unparsable"])
def test_the_rename_runs_where_get_bucket_encryption_answers_a_listing(seeded, run, fault_proxy, body):
    fault_proxy.add("answer", operations=("GetBucketEncryption",), status=200, body=body)

    code, report, stderr = run("--endpoint-url", fault_proxy.endpoint)

    assert code == 0, stderr
    assert fault_proxy.fired("answer") >= 1
    assert report["counts"]["moved"] > 0


# --- a canary PUT refused: configuration, one line, never a stall -------------------------------

def test_checksum_headers_refused_are_exit_2_naming_the_setting_and_the_setting_works(seeded, run, fault_proxy,
                                                                                     monkeypatch):
    monkeypatch.delenv("AWS_REQUEST_CHECKSUM_CALCULATION", raising=False)
    before = state_of(seeded)
    fault_proxy.add("checksum_refused", operations=("PutObject",))

    code, _, stderr = run("--endpoint-url", fault_proxy.endpoint)

    assert code == 2, stderr
    [error] = [line for line in stderr.splitlines() if line.startswith("Error:")]  # one line, the rest is the log
    assert "AWS_REQUEST_CHECKSUM_CALCULATION=when_required" in error and "x-amz-checksum-crc32" in error
    assert "Traceback" not in stderr, stderr[stderr.find("Traceback") - 300:][:2500]
    assert "nothing of yours was changed" in error
    assert state_of(seeded) == before
    refused = fault_proxy.fired("checksum_refused")

    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")  # what the message says
    code, report, stderr = run("--endpoint-url", fault_proxy.endpoint)

    assert code == 0, stderr
    assert fault_proxy.fired("checksum_refused") == refused  # no request carried them any more
    assert report["counts"]["moved"] > 0


@pytest.mark.parametrize("status, code", [(400, "InvalidRequest"), (501, "NotImplemented")])
@pytest.mark.parametrize("checksums", ["when_supported", "when_required"])
def test_a_canary_put_refused_is_configuration_at_once(proxied, make_bucket, direct, fault_proxy, monkeypatch,
                                                       status, code, checksums):
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", checksums)
    bucket = a_bucket(make_bucket, direct)
    fault_proxy.add("answer", operations=("PutObject",), status=status,
                    body=f"<Error><Code>{code}</Code><Message>refused</Message></Error>".encode())
    started = time.monotonic()

    with pytest.raises(ConfigError) as refused:
        proxied().bucket(bucket, probe=True)

    assert time.monotonic() - started < 15  # a 501 is not retried for the retry deadline
    message = str(refused.value)
    assert "\n" not in message and code in message and "nothing of yours was changed" in message
    assert ("AWS_REQUEST_CHECKSUM_CALCULATION=when_required" in message) == (checksums == "when_supported")
    assert canaries_in(direct.s3, bucket) == []


# --- canaries of killed probes -------------------------------------------------------------------

@pytest.mark.slow
@VERSIONED
def test_canaries_of_a_probe_killed_with_sigkill_are_gone_after_the_next_run(seeded, run, fault_proxy, s3_env,
                                                                             tmp_path, versioned):
    s3, bucket = seeded["ctx"].s3, seeded["artifacts"]
    if versioned:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    # The probe's first copy waits in the proxy: the canaries are written, the probe is not done.
    fault_proxy.add("slow", operations=("CopyObject",), key=CANARY_PREFIX, seconds=2.0)
    command = cli_command("s3-rename", "--endpoint-url", fault_proxy.endpoint, "--artifacts-bucket", bucket,
                   "--logs-bucket", seeded["logs"], "--dsn", seeded["dsn"])
    with open(tmp_path / "killed.log", "w") as log:
        probe = subprocess.Popen(command, env=dict(os.environ), stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 120
            while len(canaries_in(s3, bucket)) < 2:
                assert probe.poll() is None, (tmp_path / "killed.log").read_text()
                assert time.monotonic() < deadline, "the probe never wrote its canaries"
                time.sleep(0.01)
        finally:
            probe.send_signal(signal.SIGKILL)
            assert probe.wait() == -signal.SIGKILL
    fault_proxy.clear()
    fault_proxy.wait_idle()  # the slow copy lands (onto a canary) after its client died
    left = canaries_in(s3, bucket)
    assert left and all(CanaryOwner.of_key(k if isinstance(k, str) else k[0]).pid == probe.pid for k in left)

    code, report, stderr = run()  # at once: no waiting for CANARY_MAX_AGE

    assert code == 0, stderr
    assert canaries_in(s3, bucket) == []
    assert any("canary object(s) an interrupted run left behind" in note
               for note in report["capabilities"][bucket]["notes"])


def test_the_sweep_removes_dead_writers_at_once_and_the_rest_by_age(direct, make_bucket, monkeypatch):
    bucket = a_bucket(make_bucket, direct)
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()
    me = CanaryOwner.this_process()
    keys = {
        "dead": CanaryOwner(me.host, me.scope, dead_pid.pid).new_folder() + "a",
        "alive": me.new_folder() + "a",  # this process: a probe still running
        "other host": CanaryOwner("elsewhere", me.scope, dead_pid.pid).new_folder() + "a",
        "other namespace": CanaryOwner(me.host, "0badc0de", dead_pid.pid).new_folder() + "a",
        "unnamed": f"{CANARY_PREFIX}written-by-an-older-release/a",
    }
    for key in keys.values():
        direct.s3.put_object(Bucket=bucket, Key=key, Body=b"canary")
    caps = capabilities.BucketCapabilities(bucket)

    assert capabilities.sweep_stale_canaries(direct.s3, bucket, caps) == 1
    assert sorted(k for k in list_keys(direct.s3, bucket)) == sorted(v for n, v in keys.items() if n != "dead")

    monkeypatch.setattr(capabilities, "CANARY_MAX_AGE", timedelta(0))  # ten minutes later
    assert capabilities.sweep_stale_canaries(direct.s3, bucket, caps) == 4
    assert list_keys(direct.s3, bucket) == {}


# --- copies in parts: the source pinned or proven, the tags kept ----------------------------------

def put_source(s3, bucket: str, key: str, body: bytes, tagging: str = "") -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body, **({"Tagging": tagging} if tagging else {}))


def copy_in_parts(ctx, bucket: str, source: str, destination: str, *, pin_source: bool, facts=None):
    facts = facts or head_facts(ctx.s3, bucket, source, retrier=ctx.retrier)
    return multipart_copy(ctx.s3, bucket, source, destination, facts, part_size=5 * MiB, pin_source=pin_source,
                          retrier=ctx.retrier, part_workers=1)


def exists(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        assert kind_of(exc) is Kind.NOT_FOUND
        return False
    return True


@pytest.mark.parametrize("pin", ["as-probed", "unpinned"])
def test_a_source_rewritten_between_parts_never_leaves_a_mixed_copy(proxied, make_bucket, direct, fault_proxy, pin):
    bucket = a_bucket(make_bucket, direct)
    first, second = os.urandom(11 * MiB), os.urandom(11 * MiB)
    put_source(direct.s3, bucket, "src.bin", first)
    pin_source = direct.bucket(bucket, probe=True).pinned_copy_source if pin == "as-probed" else False
    # The legacy release rewrites the source between the first part and the second.
    fault_proxy.add("hook", operations=("UploadPartCopy",), after=1, times=1,
                    action=lambda: put_source(direct.s3, bucket, "src.bin", second))
    ctx = proxied()

    with pytest.raises((SourceChanged, ClientError)) as failed:
        copy_in_parts(ctx, bucket, "src.bin", "dst.bin", pin_source=pin_source,
                      facts=head_facts(direct.s3, bucket, "src.bin"))

    assert fault_proxy.fired("hook") == 1
    if isinstance(failed.value, ClientError):  # the server refused the pinned part itself
        assert pin_source and kind_of(failed.value) is Kind.PRECONDITION
    else:
        assert "changed while it was copied in parts" in str(failed.value)
    assert not exists(direct.s3, bucket, "dst.bin")  # never a copy mixing two versions
    assert direct.s3.get_object(Bucket=bucket, Key="src.bin")["Body"].read() == second  # untouched


@VERSIONED
def test_a_copy_in_parts_of_a_source_left_alone_is_proven_and_kept(proxied, make_bucket, direct, versioned):
    bucket = a_bucket(make_bucket, direct, versioned)
    body = os.urandom(11 * MiB)
    put_source(direct.s3, bucket, "src.bin", body)

    copy_in_parts(proxied(), bucket, "src.bin", "dst.bin", pin_source=False)

    assert direct.s3.get_object(Bucket=bucket, Key="dst.bin")["Body"].read() == body


def test_a_copy_in_parts_of_a_version_is_that_version_even_if_the_key_is_rewritten(proxied, make_bucket, direct,
                                                                                   fault_proxy):
    bucket = a_bucket(make_bucket, direct, versioned=True)
    first, second = os.urandom(11 * MiB), os.urandom(11 * MiB)
    put_source(direct.s3, bucket, "src.bin", first)
    facts = head_facts(direct.s3, bucket, "src.bin")
    assert facts.version_id
    fault_proxy.add("hook", operations=("UploadPartCopy",), after=1, times=1,
                    action=lambda: put_source(direct.s3, bucket, "src.bin", second))

    copy_in_parts(proxied(), bucket, "src.bin", "dst.bin", pin_source=False, facts=facts)

    assert direct.s3.get_object(Bucket=bucket, Key="dst.bin")["Body"].read() == first


TAGS = "project=arkindex&note=a%2Bb%20c%3Dd&%C3%A9t%C3%A9=%C3%BCn%C3%AF"
TAG_SET = {"project": "arkindex", "note": "a+b c=d", "été": "ünï"}


def tags_of(s3, bucket: str, key: str) -> dict:
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}


@VERSIONED
@pytest.mark.parametrize("tagging_on_create", ["as-the-server-does", "dropped"])
def test_a_copy_in_parts_keeps_its_tags_where_the_server_drops_them(proxied, make_bucket, direct, fault_proxy,
                                                                    versioned, tagging_on_create):
    bucket = a_bucket(make_bucket, direct, versioned)
    body = os.urandom(6 * MiB)
    put_source(direct.s3, bucket, "src.bin", body, TAGS)
    if tagging_on_create == "dropped":  # what Ceph RGW 16.2 does with it
        fault_proxy.add("strip_header", operations=("CreateMultipartUpload",), header="x-amz-tagging")

    copy_in_parts(proxied(), bucket, "src.bin", "dst.bin", pin_source=True)

    assert tags_of(direct.s3, bucket, "dst.bin") == TAG_SET
    assert direct.s3.get_object(Bucket=bucket, Key="dst.bin")["Body"].read() == body
    if tagging_on_create == "dropped":
        assert fault_proxy.fired("strip_header") == 1 and fault_proxy.requests["PutObjectTagging"] == 1


def test_tags_that_cannot_be_set_stop_the_move_and_keep_the_source(proxied, make_bucket, direct, fault_proxy):
    bucket = a_bucket(make_bucket, direct)
    put_source(direct.s3, bucket, "src.bin", os.urandom(6 * MiB), TAGS)
    fault_proxy.add("strip_header", operations=("CreateMultipartUpload",), header="x-amz-tagging")
    fault_proxy.add("answer", operations=("PutObjectTagging",), status=200)  # says yes, does nothing

    with pytest.raises(TagsNotKept, match="the copy was deleted, its source is kept"):
        copy_in_parts(proxied(), bucket, "src.bin", "dst.bin", pin_source=True)

    # Kept, the untagged copy would pass for a finished move on the next run (same bytes).
    assert not exists(direct.s3, bucket, "dst.bin") and exists(direct.s3, bucket, "src.bin")
    assert tags_of(direct.s3, bucket, "src.bin") == TAG_SET
