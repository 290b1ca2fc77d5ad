"""The rename's own overwrite guard, for servers that copy over an existing key.

moto, Ceph RGW and older MinIO releases ignore ``If-None-Match: *`` on CopyObject: two legacy
keys that map to one new key (a workflow folder copied under another id, two ``run_N`` logs
of one task) would each be copied there in turn and both deleted, one content lost. Where
the probe shows the server does not refuse, the run refuses for it:

- A legacy prefix (``<workflow>/`` before ``<task>/<path>``, ``<workflow>/run_<N>/`` before
  ``<task>.log``) *owns* a task's new keys from its first key the run submits. A key of
  another prefix for the same task is *contested*, and so is every later key of that task:
  a contested move always looks at its destination first and settles what it finds there by
  content, as a 412 would make it (the same bytes finish the move, other bytes are a
  conflict: both kept, neither source deleted).
- Every destination is claimed when its move is *submitted*, in listing order, before any
  worker runs: a later move to the same key waits until the earlier copy has settled before
  it looks, so two copies to one key never race.
- A contested move that finds its destination empty copies only after *taking* that exact
  key: the first to take it copies, a later one (another shard) is a conflict until a run
  finds the copy in place. When the owner is another shard, which copies its keys without
  looking, the destination is taken only if the owner has no key for it (its legacy key is
  absent): else the owner may be copying there right now, and the move waits for a later run.

Across a resume, the destination scan at the start of every run sees what an earlier run
wrote. Across the shards of one run, owners and taken keys live in a small table of the
database (:class:`SharedClaims`), so shards running at once agree; one process needs none.

Memory: one pair of 64-bit fingerprints per task (sorted arrays, 16 bytes a task, plus a
bounded dictionary of recent ones), and one event per move in flight.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left
from typing import Optional

# Recent owners stay in a dictionary; past this many they are frozen into sorted arrays.
SEGMENT = 1 << 16


def layout_group(new_key: str) -> str:
    """What one owner holds: a task's artifacts (``<task>/``) or its log (``<task>.log``)."""
    return new_key[:37] if new_key[36:37] == "/" else new_key[:36] + ".log"


def origin_of(source_key: str, new_key: str) -> str:
    """The legacy prefix a key moves out of: the source without the part that stays."""
    return source_key[:len(source_key) - len(new_key)]


class FingerprintTable:
    """64-bit key -> 64-bit value, first write wins; about 16 bytes an entry once frozen."""

    def __init__(self):
        self._recent: dict[int, int] = {}
        self._frozen: list[tuple[array, array]] = []

    def get(self, key: int) -> Optional[int]:
        value = self._recent.get(key)
        if value is not None:
            return value
        for keys, values in self._frozen:
            at = bisect_left(keys, key)
            if at < len(keys) and keys[at] == key:
                return values[at]
        return None

    def setdefault(self, key: int, value: int) -> int:
        """The value ``key`` holds, ``value`` if it held none."""
        existing = self.get(key)
        if existing is not None:
            return existing
        self._recent[key] = value
        if len(self._recent) >= SEGMENT:
            items = sorted(self._recent.items())
            self._frozen.append((array("q", (k for k, _ in items)), array("q", (v for _, v in items))))
            self._recent = {}
        return value

    def __len__(self) -> int:
        return len(self._recent) + sum(len(keys) for keys, _ in self._frozen)


class Claim:
    """One submitted move's standing: whether it must look first, and what it must wait for."""
    __slots__ = ("new_key", "source_key", "contested", "earlier", "settled")

    def __init__(self, source_key: str, new_key: str, contested: bool, earlier: Optional[threading.Event]):
        self.source_key, self.new_key = source_key, new_key
        self.contested = contested
        self.earlier = earlier  # an earlier move of this run to the same key
        self.settled = threading.Event()  # set once this move's copy is done, or will not be

    def wait_for_earlier(self) -> None:
        if self.earlier is not None:
            self.earlier.wait()


class Claims:
    """The claims of one process (see the module)."""

    def __init__(self):
        self._owners = FingerprintTable()  # group -> origin
        self._contested: set[int] = set()  # groups seen under two origins
        self._taken: dict[str, str] = {}  # contested new keys copied by this run -> source key
        self._in_flight: dict[str, Claim] = {}
        self._lock = threading.Lock()
        self._last: tuple[str, str] = ("", "")  # (group, origin) of the last key: most keys repeat it

    def claim(self, source_key: str, new_key: str) -> Claim:
        """Called in submit order, from the thread that lists."""
        group, origin = layout_group(new_key), origin_of(source_key, new_key)
        if (group, origin) != self._last:
            self._last = (group, origin)
            fingerprint = hash(group)
            if self.owner(group, origin) != origin:
                self._contested.add(fingerprint)
        contested = hash(group) in self._contested
        with self._lock:
            earlier = self._in_flight.get(new_key)
            claim = Claim(source_key, new_key, contested, earlier.settled if earlier else None)
            self._in_flight[new_key] = claim
        return claim

    def owner(self, group: str, origin: str) -> str:
        """The origin owning ``group`` (``origin`` if none did)."""
        stored = self._owners.setdefault(hash(group), hash(origin))
        return origin if stored == hash(origin) else f"another prefix than {origin!r}"

    def take(self, claim: Claim, exists=None) -> bool:
        """A contested move found its destination empty: whether it may copy there
        (``exists(key)`` looks a key up in the bucket)."""
        with self._lock:
            return self._taken.setdefault(claim.new_key, claim.source_key) == claim.source_key

    def settled(self, claim: Claim) -> None:
        """The move's copy is done (or will not happen): later moves to its key may look."""
        claim.settled.set()
        with self._lock:
            if self._in_flight.get(claim.new_key) is claim:
                del self._in_flight[claim.new_key]

    @property
    def owners(self) -> int:
        return len(self._owners)

    def close(self) -> None:
        pass


CLAIMS_TABLE = "ponos_toolkit_rename_claim"
CREATE_SQL = f"""CREATE TABLE IF NOT EXISTS {CLAIMS_TABLE} (
    bucket text NOT NULL, claim text NOT NULL, origin text NOT NULL, claimed timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bucket, claim))"""
INSERT_SQL = f"INSERT INTO {CLAIMS_TABLE} (bucket, claim, origin) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
SELECT_SQL = f"SELECT origin FROM {CLAIMS_TABLE} WHERE bucket = %s AND claim = %s"


def create_table(conn) -> None:
    """The shared claims' table (before any change: a role that may not create it is told so).

    Shards start together: ``CREATE TABLE IF NOT EXISTS`` racing itself fails one of them
    (a unique violation in the catalog), so the creation is serialized by a lock."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (CLAIMS_TABLE,))
        conn.execute(CREATE_SQL)


class SharedClaims(Claims):
    """Claims that the shards of one run share through the database (see the module).

    The owner of a task is asked of the database once per task and process; keys are taken
    there too. A row a concurrent shard is inserting makes ours wait for its commit, then
    lose (ON CONFLICT DO NOTHING), and the select that follows sees the winner.
    """

    def __init__(self, connect, bucket: str):
        super().__init__()
        self.bucket = bucket
        self._remote: dict[int, str] = {}  # groups another process owns -> its origin
        self._conn = connect()
        self._conn_lock = threading.Lock()
        create_table(self._conn)

    def _first_claim(self, claim: str, origin: str) -> str:
        with self._conn_lock:
            self._conn.execute(INSERT_SQL, (self.bucket, claim, origin))
            return self._conn.execute(SELECT_SQL, (self.bucket, claim)).fetchone()[0]

    def owner(self, group: str, origin: str) -> str:
        local = super().owner(group, origin)
        if local != origin:
            return local  # this process saw two prefixes already
        owner = self._first_claim("owner:" + group, origin)
        if owner != origin:
            self._remote[hash(group)] = owner
        return owner

    def take(self, claim: Claim, exists=None) -> bool:
        remote = self._remote.get(hash(layout_group(claim.new_key)))
        if remote is not None and (exists is None or exists(remote + claim.new_key)):
            return False  # the owner shard copies this key without looking: it may be doing it now
        return super().take(claim) and self._first_claim("key:" + claim.new_key,
                                                         claim.source_key) == claim.source_key

    def close(self) -> None:
        self._conn.close()
