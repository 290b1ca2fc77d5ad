"""ponoskit/shard.py: shards partition the key space (every key in exactly one). No server."""

from __future__ import annotations

import random

import pytest

from ponoskit.errors import ConfigError
from ponoskit.shard import Shard
from tests.unit.helpers import new_id


@pytest.mark.parametrize("text, expected", [
    (None, (0, 1)), ("", (0, 1)), ("0/1", (0, 1)), ("0/4", (0, 4)), ("3/4", (3, 4)),
    (" 2 / 7 ", (2, 7)), ("65535/65536", (65535, 65536)),
])
def test_shard_parse_valid(text, expected):
    shard = Shard.parse(text)
    assert (shard.index, shard.count) == expected
    assert Shard.parse(str(shard)) == shard


@pytest.mark.parametrize("text", ["4/4", "5/4", "1/0", "0/0", "-1/4", "1/-4", "a/b", "1", "1/2/3",
                                  "1.0/2", "0/65537", "/4", "0/", "x"])
def test_shard_parse_invalid(text):
    with pytest.raises(ConfigError):
        Shard.parse(text)


def _key_sample(rng: random.Random, n: int, prefixes: int) -> list[str]:
    hexdigits = "0123456789abcdef"
    sample = ["", "/", "README", "tmp/x", "0", "f", "ffff", "fffff", "g", "z", "~", "\x7f",
              "ü/x", "日本", "😀", " ", "-", "0000", "0000/", "zzzz/x", "FFFF", "A000"]
    # Every possible 4-hex bound, and its neighbours, for some random bounds.
    for _ in range(prefixes):
        prefix = "".join(rng.choice(hexdigits) for _ in range(4))
        sample += [prefix, prefix[:3], prefix + "/", prefix + "-x", prefix + "0", prefix.upper()]
    for _ in range(n):
        pick = rng.random()
        task = new_id(rng)
        if pick < 0.5:
            sample.append(f"{task}/{new_id(rng)}/x")
        elif pick < 0.6:
            sample.append(task.upper() + "/x")
        elif pick < 0.7:
            sample.append(f"{task}.log")
        elif pick < 0.8:
            sample.append("".join(rng.choice("ghijklmnopqrstuvwxyz-_/.") for _ in range(rng.randint(1, 6))))
        elif pick < 0.9:
            sample.append("".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(rng.randint(1, 5))))
        else:
            sample.append(task[: rng.randint(0, 6)])
    return sample


@pytest.mark.parametrize("count, sample_size, prefixes", [
    (1, 3000, 200), (2, 3000, 200), (3, 3000, 200), (7, 3000, 200), (16, 3000, 200),
    (1000, 150, 10),  # 1,000 membership tests per key: a smaller sample, same properties
])
def test_shards_partition_every_key(count, sample_size, prefixes):
    rng = random.Random(count)
    shards = [Shard(i, count) for i in range(count)]
    sample = _key_sample(rng, sample_size, prefixes)
    # The bounds themselves and their neighbours, for a few shards.
    for shard in rng.sample(shards[1:], min(10, count - 1)):
        sample += [shard.start, shard.start[:-1], shard.start + "/x", shard.start.upper()]
    for key in sample:
        holders = [s.index for s in shards if key in s]
        assert len(holders) == 1, (key, holders)
    # Bounds: the first shard from the start, the last to the end, strictly increasing
    # boundaries shared between neighbours.
    assert shards[0].start is None and shards[-1].end is None
    for left, right in zip(shards, shards[1:]):
        assert left.end == right.start and left.end is not None
    bounds = [s.start for s in shards[1:]]
    assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds)


def test_sixteen_shards_split_on_the_first_hex_digit():
    """2^16 / 16: shard i holds exactly the lower-case UUIDs starting with hex digit i."""
    rng = random.Random(16)
    for _ in range(2000):
        task = new_id(rng)
        index = int(task[0], 16)
        assert task in Shard(index, 16)
        assert f"{task}/x" in Shard(index, 16)


def test_shards_of_random_uuids_are_balanced():
    rng = random.Random(3)
    shards = [Shard(i, 3) for i in range(3)]
    counts = [0, 0, 0]
    for _ in range(6000):
        task = new_id(rng)
        counts[next(s.index for s in shards if task in s)] += 1
    assert all(1700 < c < 2300 for c in counts), counts
