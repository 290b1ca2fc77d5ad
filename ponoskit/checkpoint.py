"""A small JSON checkpoint that survives SIGKILL uncorrupted.

Written to a temporary file in the same folder, fsynced, then renamed over the old one:
a reader sees the old state or the new one, never half of each. Its ``identity`` (job,
buckets, shard) must match on resume, so a checkpoint is never applied to another run.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError


class Checkpoint:
    def __init__(self, path: Optional[str], identity: dict[str, Any]):
        self.path = Path(path) if path else None
        self.identity = identity
        self.state: dict[str, Any] = {}

    def load(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"checkpoint {self.path} is unreadable: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"checkpoint {self.path} is not a checkpoint (not a JSON object)")
        if data.get("identity") != self.identity:
            raise ConfigError(
                f"checkpoint {self.path} belongs to another run ({data.get('identity')}); "
                "use another --checkpoint file or delete it")
        self.state = data.get("state", {})
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
