"""The run report: counts, the keys or ids behind failures, per-phase durations.

Scripts read it as JSON (``--report FILE``, ``-`` for stdout). It holds no secret: jobs
put names of things in it, never DSNs or credentials.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from .waits import Waits

SHOWN_IDS = 20  # ids named in a one-line message; the report lists them all


class Report:
    def __init__(self, job: str, **info: Any):
        self.job = job
        self.waits = Waits()  # what the run waits for now (the heartbeat reads it; never in the file)
        self.info: dict[str, Any] = dict(info)
        self.counts: Counter[str] = Counter()
        self.items: dict[str, list[Any]] = {}
        self.phases: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.truncated: set[str] = set()
        self._lock = threading.Lock()
        self._started = time.time()
        self.progress_count: Optional[str] = None  # the count that measures progress
        self.progress_total: Optional[int] = None  # how many of it the job expects, if it knows

    def expect(self, name: str, total: Optional[int] = None) -> None:
        """Name the count the progress lines measure (``moved``, ``tasks_deleted``) and, when
        the job knows it, how many to expect: the lines then give a rate and time left."""
        with self._lock:
            self.progress_count, self.progress_total = name, total

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def add(self, category: str, item: Any, *, also_count: bool = True, limit: Optional[int] = None) -> None:
        """Record one item (a key, an id, a dict) behind a count.

        ``limit`` keeps only the first items of a category that may hold millions (keys left
        alone); the count stays exact and the report says the list was truncated.
        """
        with self._lock:
            listed = self.items.setdefault(category, [])
            if limit is None or len(listed) < limit:
                listed.append(item)
            else:
                self.truncated.add(category)
            if also_count:
                self.counts[category] += 1

    def error(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)

    @contextmanager
    def phase(self, name: str, **info: Any) -> Iterator[dict[str, Any]]:
        record = {"name": name, **info}
        start = time.monotonic()
        try:
            yield record
        finally:
            record["seconds"] = round(time.monotonic() - start, 3)
            with self._lock:
                self.phases.append(record)

    def to_dict(self, **extra: Any) -> dict[str, Any]:
        with self._lock:
            return {
                "job": self.job,
                **self.info,
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._started)),
                "seconds": round(time.time() - self._started, 3),
                "counts": dict(sorted(self.counts.items())),
                "items": {k: list(v) for k, v in sorted(self.items.items())},
                "items_truncated": sorted(self.truncated),
                "phases": list(self.phases),
                "errors": list(self.errors),
                **extra,
            }

    def write(self, destination: Optional[str], **extra: Any) -> None:
        if not destination:
            return
        text = json.dumps(self.to_dict(**extra), indent=2, default=str, ensure_ascii=False)
        if destination == "-":
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
            return
        with open(destination, "w", encoding="utf-8") as out:
            out.write(text + "\n")
