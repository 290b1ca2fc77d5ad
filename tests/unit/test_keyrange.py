"""ponoskit/keyrange.py: key ranges and prefix coverage. No server."""

from __future__ import annotations

import itertools

import pytest

from ponoskit.keyrange import KeyRange


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
