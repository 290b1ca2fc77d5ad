"""ponoskit/bloom.py: the UUID Bloom filter (no false negatives, the false-positive rate theory
predicts). No server.
"""

from __future__ import annotations

import math
import random

import pytest

from ponoskit.bloom import UUIDBloomFilter
from tests.unit.helpers import new_id


def test_bloom_has_no_false_negatives():
    rng = random.Random(7)
    members = [new_id(rng) for _ in range(50_000)]
    bloom = UUIDBloomFilter(bits_log2=16, hashes=4)  # small and overfull on purpose
    for member in members:
        bloom.add(member)
    assert bloom.added == len(members)
    assert all(member in bloom for member in members)
    # Upper-case spellings are the same UUID.
    assert all(member.upper() in bloom for member in members[:1000])


def test_bloom_empty_filter_contains_nothing():
    rng = random.Random(8)
    bloom = UUIDBloomFilter(bits_log2=12, hashes=4)
    assert not any(new_id(rng) in bloom for _ in range(1000))


def _false_positive_rate(bits_log2: int, hashes: int, members: int, probes: int, seed: int):
    rng = random.Random(seed)
    bloom = UUIDBloomFilter(bits_log2=bits_log2, hashes=hashes)
    added = set()
    for _ in range(members):
        member = new_id(rng)
        added.add(member)
        bloom.add(member)
    outsiders = (new_id(rng) for _ in range(probes))
    positives = sum(1 for o in outsiders if o not in added and o in bloom)
    theory = (1 - math.exp(-hashes * members / 2 ** bits_log2)) ** hashes
    return positives / probes, theory


def test_bloom_false_positive_rate_is_sane():
    # 2^16 bits, 4 hashes, 2,000 members: theory says about 0.02 % false positives.
    rate, theory = _false_positive_rate(16, 4, 2000, 50_000, seed=11)
    assert rate < 0.005, (rate, theory)  # a filter that says "maybe" too often fails this


def test_bloom_false_positive_rate_matches_theory_for_uuid4():
    # 2^20 bits, 4 hashes: the 4th slice is bits 60..79, holding all 6 fixed bits.
    rate, theory = _false_positive_rate(20, 4, 51_000, 50_000, seed=12)
    assert rate < 2 * theory, (rate, theory)  # ~49 expected, 2x is far outside the noise


def test_bloom_rejects_more_hash_bits_than_a_uuid_has():
    with pytest.raises(ValueError):
        UUIDBloomFilter(bits_log2=33, hashes=4)
