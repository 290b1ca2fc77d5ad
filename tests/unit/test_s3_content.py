"""ponoskit/s3/content.py: the same-content rules (sizes, checksums, ETags, reading), archives,
encryption parameters. No server.
"""

from __future__ import annotations

import pytest

from ponoskit.s3 import content
from ponoskit.s3.copy import SourceFacts, normalize_etag


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
