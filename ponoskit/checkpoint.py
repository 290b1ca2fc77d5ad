"""A small JSON checkpoint that survives SIGKILL uncorrupted, and belongs to exactly one run.

Written to a temporary file in the same folder, fsynced, then renamed over the old one:
a reader sees the old state or the new one, never half of each.

Its ``identity`` says which run it belongs to: the job, the buckets, the shard, the S3
endpoint and the database (name and ``system_identifier``, which tells a rehearsal copy from
production even under the same name). A checkpoint of another run, or one whose state is not
the shape the job expects, is refused with exit 2 before anything changes: a rehearsal's
checkpoint must never make the production run skip work.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import ConfigError


class Checkpoint:
    def __init__(self, path: Optional[str], identity: dict[str, Any],
                 validate: Optional[Callable[[Any], Optional[str]]] = None):
        self.path = Path(path) if path else None
        self.identity = identity
        self.validate = validate  # state -> None when well-formed, else what is wrong
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
        if theirs != self.identity:
            differs = sorted(set(theirs) | set(self.identity))
            differs = [name for name in differs if theirs.get(name) != self.identity.get(name)]
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


def database_identity(conn) -> dict[str, str]:
    """The database a run works on: its name and its cluster's system_identifier."""
    name = conn.execute("SELECT current_database()").fetchone()[0]
    try:
        system = str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
    except Exception:  # noqa: BLE001 - a role without the right: the database's oid and address
        conn.rollback() if not conn.autocommit else None
        row = conn.execute("SELECT d.oid::text, coalesce(host(inet_server_addr()), 'local'), "
                           "coalesce(inet_server_port(), 0) FROM pg_database d "
                           "WHERE d.datname = current_database()").fetchone()
        system = f"oid {row[0]} at {row[1]}:{row[2]}"
    return {"name": name, "system_identifier": system}
