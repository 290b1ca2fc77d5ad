"""``--shard I/N``: N disjoint key ranges that together cover every possible key.

Task and workflow ids are random UUIDs, so their first four hex digits spread keys evenly:
shard I of N covers keys from ``bound(I)`` (included) to ``bound(I+1)`` (excluded), with
shard 0 starting at the empty string and the last shard open-ended. Keys that are not
UUID-led (``README``, ``tmp/...``) still fall in exactly one range: ranges are over all
strings, the bounds only decide where they split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .errors import ConfigError
from .keyrange import KeyRange

_SPACE = 16 ** 4


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: Optional[str]) -> "Shard":
        if not text:
            return cls()
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 0/4")
        index, count = int(match[1]), int(match[2])
        if count < 1 or count > _SPACE or not 0 <= index < count:
            raise ConfigError(f"--shard {text!r}: need 0 <= I < N and 1 <= N <= {_SPACE}")
        return cls(index, count)

    def _bound(self, i: int) -> str:
        return f"{i * _SPACE // self.count:04x}"

    @property
    def start(self) -> Optional[str]:
        """First key of the range (inclusive), or None from the beginning."""
        return None if self.index == 0 else self._bound(self.index)

    @property
    def end(self) -> Optional[str]:
        """Key where the range stops (exclusive), or None to the end."""
        return None if self.index == self.count - 1 else self._bound(self.index + 1)

    @property
    def key_range(self) -> KeyRange:
        return KeyRange(self.start, self.end)

    def __contains__(self, key: str) -> bool:
        return key in self.key_range

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
