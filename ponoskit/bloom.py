"""A fixed-size Bloom filter of UUIDs: a set whose memory does not grow with the bucket.

The rename asks "may this task already have objects at its new keys?" for every legacy key.
A Python set of every top-level task prefix would grow with the bucket (millions of ids); a
Bloom filter answers in a fixed 16 MiB, with no false negative. A false positive only costs
one HEAD request. The hash functions are slices of a BLAKE2b digest of the UUID (a UUID4's own
bits would do, but six of them are fixed and would skew one slice).
"""

from __future__ import annotations

import hashlib
import uuid


class UUIDBloomFilter:
    def __init__(self, bits_log2: int = 27, hashes: int = 4):
        if hashes * bits_log2 > 128:
            raise ValueError("a UUID has 128 bits: lower hashes or bits_log2")
        self._bits_log2 = bits_log2
        self._mask = (1 << bits_log2) - 1
        self._hashes = hashes
        self._bytes = bytearray(1 << (bits_log2 - 3))
        self.added = 0

    def _positions(self, value: str):
        number = int.from_bytes(hashlib.blake2b(uuid.UUID(value).bytes, digest_size=16).digest(), "big")
        for _ in range(self._hashes):
            yield number & self._mask
            number >>= self._bits_log2

    def add(self, value: str) -> None:
        for bit in self._positions(value):
            self._bytes[bit >> 3] |= 1 << (bit & 7)
        self.added += 1

    def __contains__(self, value: str) -> bool:
        return all(self._bytes[bit >> 3] & (1 << (bit & 7)) for bit in self._positions(value))
