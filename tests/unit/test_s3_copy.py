"""ponoskit/s3/copy.py: multipart ranges, which keys obstore can copy. No server."""

from __future__ import annotations

import math

import pytest

from ponoskit.s3.copy import MAX_PARTS, MIN_PART_SIZE, obstore_can_copy, part_ranges
from tests.unit.helpers import GiB, MiB, S3_MAX_PART_SIZE, TiB


@pytest.mark.parametrize("size", [1, 1000, MIN_PART_SIZE - 1, MIN_PART_SIZE, MIN_PART_SIZE + 1,
                                  5 * GiB + 1, 50 * GiB + 7, 5 * TiB, 6 * TiB, 6 * TiB + 3])
@pytest.mark.parametrize("part_size", [1, MIN_PART_SIZE, 8 * MiB + 3, 256 * MiB])
def test_part_ranges_cover_the_object_exactly(size, part_size):
    ranges = part_ranges(size, part_size)
    assert ranges[0][0] == 0 and ranges[-1][1] == size - 1
    for (first, last), (next_first, _) in zip(ranges, ranges[1:]):
        assert next_first == last + 1  # contiguous, no overlap
    assert all(last >= first for first, last in ranges)
    assert len(ranges) <= MAX_PARTS
    lengths = [last - first + 1 for first, last in ranges]
    assert sum(lengths) == size
    assert all(n >= MIN_PART_SIZE for n in lengths[:-1])  # only the last part may be small
    # The requested part size is kept whenever S3's limits allow it.
    if part_size >= MIN_PART_SIZE and math.ceil(size / part_size) <= MAX_PARTS:
        assert all(n == part_size for n in lengths[:-1])
        assert len(ranges) == math.ceil(size / part_size)


def test_part_ranges_grow_parts_for_huge_objects():
    ranges = part_ranges(6 * TiB, 5 * MiB)
    assert len(ranges) <= MAX_PARTS
    assert ranges[-1][1] == 6 * TiB - 1
    # as few parts grown as little as possible: the parts are just big enough
    assert len(ranges) > MAX_PARTS - 10


def test_part_ranges_stay_within_s3_max_part_size():
    ranges = part_ranges(20 * GiB, 8 * GiB)
    assert all(last - first + 1 <= S3_MAX_PART_SIZE for first, last in ranges)


@pytest.mark.parametrize("key", ["", "/", "/leading", "trailing/", "a//b", "//", "./a", "a/./b",
                                 "a/..", "../a", "a/../b", ".", "..", "a/.", "ctrl\x01char",
                                 "tab\tkey", "new\nline", "nul\x00", "back\\slash"])
def test_obstore_can_copy_rejects_keys_obstore_would_change(key):
    assert obstore_can_copy(key) is False


OBSTORE_SAFE_KEYS = [
    "a", "a/b", "wf/task/with space.txt", "données/ü/日本語.json", "plus+percent%20hash#q?x=1&y",
    "a/.hidden", "a/..b", "a/...", "...", "a/b.", "emoji/😀", "~/x", "*", "a/ b ", " ",
    "x%2Fy", "zero\u200bwidth", "line\u2028sep", "c1\x85ctrl",
]


@pytest.mark.parametrize("key", OBSTORE_SAFE_KEYS)
def test_obstore_can_copy_accepts_awkward_valid_keys(key):
    assert obstore_can_copy(key) is True


def _obstore_round_trips(key: str) -> bool:
    """obstore's own answer: store the key in memory and see which path comes back."""
    import obstore
    from obstore.store import MemoryStore

    store = MemoryStore()
    try:
        obstore.put(store, key, b"x")
    except (ValueError, OSError):
        return False
    return [meta["path"] for meta in obstore.list(store).collect()] == [key]


@pytest.mark.parametrize("key", OBSTORE_SAFE_KEYS + ["/leading", "trailing/", "a//b", "a/./b", "a\x01b"])
def test_obstore_can_copy_is_never_wrong_about_obstore(key):
    """The fast path may be refused for keys obstore could handle, never the reverse."""
    if obstore_can_copy(key):
        assert _obstore_round_trips(key)


def test_obstore_can_copy_rejects_del():
    key = "wf/task/del\x7fchar"
    assert not _obstore_round_trips(key)  # obstore's own verdict
    assert obstore_can_copy(key) is False
