"""A small JSON checkpoint that survives SIGKILL uncorrupted, and belongs to exactly one run.

Written to a temporary file in the same folder, fsynced, then renamed over the old one:
a reader sees the old state or the new one, never half of each.

Its ``identity`` says which run it belongs to: the job, the buckets, the shard, the S3
endpoint and the database (name, oid and the cluster's ``system_identifier``, which tells a
rehearsal copy from production even under the same name). A checkpoint of another run, or one
whose state is not the shape the job expects, is refused with exit 2 before anything changes:
a rehearsal's checkpoint must never make the production run skip work.

Not every role may read ``system_identifier`` (``pg_control_system()``): a superuser's run and
an application role's run on the same database must still recognise each other's checkpoint,
so databases are compared by that identifier where both sides know it, else by name and oid.
The identifier is left out only when reading it is refused; any other failure (PostgreSQL
before 17 reads ``pg_control`` without a lock and may see it torn during a checkpoint) is
tried again.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import psycopg

from .errors import ConfigError


class Checkpoint:
    def __init__(self, path: Optional[str], identity: dict[str, Any],
                 validate: Optional[Callable[[Any], Optional[str]]] = None,
                 renamed: Optional[dict[str, dict[str, str]]] = None):
        self.path = Path(path) if path else None
        self.identity = identity
        self.validate = validate  # state -> None when well-formed, else what is wrong
        # identity field -> {a word an earlier release wrote: the word for it now}
        self.renamed = renamed or {}
        self.state: dict[str, Any] = {}

    def load(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"checkpoint {self.path} is unreadable: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("identity"), dict):
            raise ConfigError(f"checkpoint {self.path} is not a checkpoint of this toolkit; delete it to start over")
        theirs = data["identity"]
        differs = [name for name in sorted(set(theirs) | set(self.identity))
                   if not _same(name, self._now_said(name, theirs.get(name)), self.identity.get(name))]
        if differs:
            shown = "; ".join(f"{name}: {theirs.get(name)!r} there, {self.identity.get(name)!r} here"
                              for name in differs)
            raise ConfigError(f"checkpoint {self.path} belongs to another run ({shown}); "
                              "use another --checkpoint file or delete it")
        state = data.get("state", {})
        problem = "the state is not a JSON object" if not isinstance(state, dict) else \
            (self.validate(state) if self.validate else None)
        if problem:
            raise ConfigError(f"checkpoint {self.path} is malformed ({problem}); delete it to start over")
        self.state = state
        return self.state

    def _now_said(self, name: str, value: Any) -> Any:
        """``value`` as this release says it (a word an earlier release wrote, renamed since)."""
        words = self.renamed.get(name)
        return words.get(value, value) if words and isinstance(value, str) else value

    def save(self, state: dict[str, Any]) -> None:
        self.state = state
        if self.path is None:
            return
        payload = json.dumps({"identity": self.identity, "state": state}, ensure_ascii=False)
        folder = self.path.parent if str(self.path.parent) else Path(".")
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def database_identity(conn, attempts: int = 3) -> dict[str, Optional[str]]:
    """The database a run works on: its name, its oid and its cluster's system_identifier
    (None when this role may not read it)."""
    name, oid = conn.execute("SELECT d.datname, d.oid::text FROM pg_database d "
                             "WHERE d.datname = current_database()").fetchone()
    system = None
    for attempt in range(attempts):
        try:
            system = str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
            break
        except psycopg.errors.InsufficientPrivilege:
            _rollback(conn)
            break  # the only reason to do without it
        except (psycopg.errors.DataCorrupted, psycopg.errors.DataException, psycopg.errors.InternalError_):
            _rollback(conn)  # pg_control read torn ("incorrect checksum in control file"): read it again
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    return {"name": name, "oid": oid, "system_identifier": system}


def _rollback(conn) -> None:
    if not conn.autocommit:
        conn.rollback()


_OLD_FALLBACK = re.compile(r"oid (\d+) at ")  # what a role without the right recorded before


def same_database(theirs: Any, ours: Any) -> bool:
    if theirs == ours:
        return True
    if not isinstance(theirs, dict) or not isinstance(ours, dict) or theirs.get("name") != ours.get("name"):
        return False
    old = _OLD_FALLBACK.match(str(theirs.get("system_identifier") or ""))
    if old:
        theirs = {**theirs, "oid": old[1], "system_identifier": None}
    if theirs.get("system_identifier") and ours.get("system_identifier"):
        return theirs["system_identifier"] == ours["system_identifier"]
    return theirs.get("oid") is not None and theirs.get("oid") == ours.get("oid")


def _same(name: str, theirs: Any, ours: Any) -> bool:
    return same_database(theirs, ours) if name == "database" else theirs == ours
