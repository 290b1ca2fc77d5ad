"""ponoskit/s3/listing.py: pages, key ranges, timestamps (moto in-process: a fake S3, no server)."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import boto3
import pytest

from ponoskit.context import Context
from ponoskit.keyrange import KeyRange
from ponoskit.s3.listing import iter_objects, iter_pages, iter_top_level, timestamp
from ponoskit.shard import Shard
from tests.unit.helpers import new_id


BOUNDARY_KEYS = [
    "0", "0000", "0000/x", "3fff", "3fff/x", "3fffffff-0000-4000-8000-000000000000/x",
    "400", "400-x", "400/x", "4000", "4000/x", "40000", "4000a", "4001",
    "7fff", "7fff/x", "8000", "8000a", "8000/x", "aaaa", "aaab", "bfff", "c000", "c000/x",
    "ffff", "ffff/x", "fffff", "g", "README", "tmp/x", "ABCD/x", "Z", "ü/x", "日本/x", "😀",
]


@pytest.fixture(scope="module")
def listing_bucket():
    """One read-only bucket in moto for every listing test (building it is the slow part)."""
    from moto import mock_aws

    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        with mock_aws():
            client = boto3.client("s3", region_name="us-east-1")
            rng = random.Random(21)
            keys_ = set(BOUNDARY_KEYS)
            keys_.update(f"{new_id(rng)}/{new_id(rng)}/f" for _ in range(40))
            keys_.update(f"{new_id(rng)}.log" for _ in range(10))
            client.create_bucket(Bucket="listing-bucket")
            for key in keys_:
                client.put_object(Bucket="listing-bucket", Key=key, Body=key.encode())
            # S3 lists in UTF-8 byte order (the same as Python's code-point order).
            yield client, "listing-bucket", sorted(keys_, key=lambda k: k.encode())


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 16])
def test_shard_listings_cover_every_key_once_in_order(listing_bucket, count):
    client, bucket, everything = listing_bucket
    listed = []
    for index in range(count):
        shard = Shard(index, count)
        for page in iter_pages(client, bucket, key_range=shard.key_range, page_size=7):
            assert 0 < len(page) <= 7
            assert all(obj.key in shard for obj in page)
            listed += [obj.key for obj in page]
    assert listed == everything


def test_iter_pages_start_at_is_inclusive_and_end_before_exclusive(listing_bucket):
    client, bucket, everything = listing_bucket
    got = [o.key for o in iter_objects(client, bucket, key_range=KeyRange("4000", "8000"), page_size=3)]
    assert got == [k for k in everything if "4000" <= k < "8000"]
    assert got[0] == "4000" and "400/x" not in got and "400-x" not in got and "8000" not in got


def test_iter_pages_start_after_is_exclusive(listing_bucket):
    client, bucket, everything = listing_bucket
    got = [o.key for o in iter_objects(client, bucket, start_after="4000", page_size=5)]
    assert got == [k for k in everything if k > "4000"]


@pytest.mark.parametrize("start_after, start_at", [
    ("4000/x", "4000"),     # a resumed checkpoint inside the shard: start_after wins
    ("3fff", "4000"),       # a checkpoint from before the shard: start_at wins
    ("4000", "4000"),       # equal: exclusive is the later one
])
def test_iter_pages_the_later_start_wins(listing_bucket, start_after, start_at):
    client, bucket, everything = listing_bucket
    got = [o.key for o in iter_objects(client, bucket, start_after=start_after, key_range=KeyRange(start_at, "c000"),
                                       page_size=4)]
    assert got == [k for k in everything if k > start_after and k >= start_at and k < "c000"]


def test_iter_pages_sizes_and_etags(listing_bucket):
    client, bucket, _ = listing_bucket
    page = next(iter_pages(client, bucket, key_range=KeyRange("4000", "4001")))
    by_key = {o.key: o for o in page}
    assert set(by_key) == {"4000", "4000/x", "40000", "4000a"}
    assert by_key["4000/x"].size == len(b"4000/x") and by_key["4000/x"].etag


@pytest.mark.parametrize("value", [
    "2026-11-23T13:20:30.000Z",                       # ListObjectsV2
    "Mon, 23 Nov 2026 13:20:30 GMT",                  # HEAD / GET Last-Modified
    datetime(2026, 11, 23, 13, 20, 30, tzinfo=timezone.utc),  # a client that parsed it already
])
def test_timestamp_reads_every_form_s3_sends(value):
    assert timestamp(value) == datetime(2026, 11, 23, 13, 20, 30, tzinfo=timezone.utc)


def test_our_clients_leave_listing_timestamps_unparsed_and_iter_pages_keeps_them(listing_bucket):
    _, bucket, everything = listing_bucket
    client = Context(job="t", use_db=False).s3
    raw = client.list_objects_v2(Bucket=bucket, MaxKeys=1)["Contents"][0]["LastModified"]
    assert isinstance(raw, str)
    objects = list(iter_objects(client, bucket, page_size=9))  # several continuation tokens
    assert [o.key for o in objects] == everything
    assert all(abs((timestamp(o.last_modified) - datetime.now(timezone.utc)).total_seconds()) < 3600
               for o in objects)


def test_iter_top_level(listing_bucket):
    client, bucket, everything = listing_bucket
    expected = sorted({k.split("/", 1)[0] + "/" if "/" in k else k for k in everything},
                      key=lambda k: k.encode())
    assert list(iter_top_level(client, bucket)) == expected
