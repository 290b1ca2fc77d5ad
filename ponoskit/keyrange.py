"""A range of keys, ``[start, end)`` in S3's byte order: what a shard covers and what a listing reads.

``start`` None is the beginning of the bucket, ``end`` None its end. Ranges are over all
strings, so any key, UUID-led or not, falls in exactly one shard's range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class KeyRange:
    start: Optional[str] = None  # first key of the range (inclusive)
    end: Optional[str] = None  # where the range stops (exclusive)

    def __contains__(self, key: str) -> bool:
        return (self.start is None or key >= self.start) and (self.end is None or key < self.end)

    def covers_prefix(self, prefix: str) -> bool:
        """True when some key starting with ``prefix`` may lie in the range."""
        # The smallest such key is the prefix itself; past a start that does not begin with the
        # prefix and sorts after it, every such key sorts before the start.
        return ((self.end is None or prefix < self.end)
                and (self.start is None or prefix >= self.start or self.start.startswith(prefix)))

    def __str__(self) -> str:
        return f"[{self.start or ''!r}, {self.end or '…'!r})"
