"""Are two objects the same bytes? Only what the server proves counts; never a guess.

The rename deletes a legacy source only once its new key holds the same content, and a key
in the way with other content is a conflict. In order, the first rule that applies decides:

1. Sizes differ: different.
2. Both carry a full-object checksum of the same algorithm (``x-amz-checksum-*``: AWS adds
   CRC64NVME to every new object; copies keep the source's): compare them.
3. Both ETags are MD5s (single part, neither SSE-KMS nor SSE-C): compare them, without quotes.
4. Both are at most ``read_limit`` bytes: read both and compare the bytes.
5. Otherwise it cannot be decided: the caller reports a conflict and deletes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .copy import CHECKSUM_FIELDS, SourceFacts

DEFAULT_READ_LIMIT = 64 * 1024 ** 2
_CHUNK = 1024 ** 2


@dataclass(frozen=True)
class Verdict:
    same: Optional[bool]  # None: cannot be decided
    how: str  # which rule decided, or why none could

    @property
    def decided(self) -> bool:
        return self.same is not None


def _full_object(facts: SourceFacts, name: str) -> bool:
    # A composite checksum (a multipart upload's checksum of checksums) ends in -<parts>.
    value = facts.checksums.get(name, "")
    return bool(value) and facts.checksum_type != "COMPOSITE" and "-" not in value


def compare(source: SourceFacts, destination: SourceFacts, read_both=None, *,
            read_limit: int = DEFAULT_READ_LIMIT) -> Verdict:
    """Decide with the rules above; ``read_both()`` returns True when the bytes are equal."""
    if source.size != destination.size:
        return Verdict(False, f"sizes differ ({source.size} and {destination.size} bytes)")
    for name in CHECKSUM_FIELDS:
        if _full_object(source, name) and _full_object(destination, name):
            same = source.checksums[name] == destination.checksums[name]
            return Verdict(same, f"{name[len('Checksum'):]} checksums {'match' if same else 'differ'}")
    if source.md5_etag and destination.md5_etag:
        same = source.etag == destination.etag
        return Verdict(same, f"MD5 ETags {'match' if same else 'differ'}")
    if read_both is not None and source.size <= read_limit:
        same = read_both()
        return Verdict(same, f"bytes read and {'equal' if same else 'different'}")
    return Verdict(None, "cannot tell whether the contents are the same (no common checksum, no MD5 ETag, "
                         f"{source.size} bytes is above the {read_limit}-byte read limit)")


def read_equal(client, bucket: str, first: str, second: str, *, first_version: Optional[str] = None,
               retrier=None) -> bool:
    """Stream both objects and compare them chunk by chunk (memory: two chunks)."""
    def body(key: str, version: Optional[str]):
        params = {"Bucket": bucket, "Key": key, **({"VersionId": version} if version else {})}
        answer = retrier.call("GetObject", client.get_object, **params) if retrier else client.get_object(**params)
        return answer["Body"]

    one, two = body(first, first_version), body(second, None)
    try:
        while True:
            a, b = one.read(_CHUNK), two.read(_CHUNK)
            while len(a) != len(b) and a and b:  # short reads: even them out
                if len(a) < len(b):
                    more = one.read(len(b) - len(a))
                    if not more:
                        return False
                    a += more
                else:
                    more = two.read(len(a) - len(b))
                    if not more:
                        return False
                    b += more
            if a != b:
                return False
            if not a:
                return True
    finally:
        one.close()
        two.close()
