"""The rename's resume point: the key before which every object of a listing is settled.

Pages of the listing go in, in key order, each with the futures of its moves. A page is
*settled* once all its moves finished; the mark advances over settled pages in order, and
only while nothing before them went wrong: past a conflict, a failure or an undecided key
the mark stays, so a re-run looks at those keys again. The mark is what the checkpoint
saves (a few hundred bytes, whatever the bucket's size), through ``save``, throttled by the
caller.

A move whose future raised (S3 kept failing, permissions) stops the run: :meth:`settle`
raises it, the mark stays before that page.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class _Page:
    resume_key: Optional[str]  # the key to resume after once this page is settled, or None
    futures: list[Future] = field(default_factory=list)
    decided: bool = True  # False: a key of it could not be decided (e.g. --no-db)


class LowWaterMark:
    def __init__(self, state: dict, save: Callable[[], None] = lambda: None):
        self.state = state  # this bucket's checkpoint state: "after", "complete", ...
        self._save = save
        self._pages: deque[_Page] = deque()
        self.in_flight = 0
        self.clean = True  # nothing went wrong so far

    def add(self, resume_key: Optional[str], futures: list[Future], decided: bool = True) -> None:
        self._pages.append(_Page(resume_key, futures, decided))
        self.in_flight += len(futures)

    def settle(self, limit: int, record: Callable[[object], bool]) -> None:
        """Record settled pages, oldest first; wait while more than ``limit`` moves are in flight.

        ``record(result)`` counts one move and says whether it left nothing behind.
        """
        while self._pages:
            page = self._pages[0]
            if self.in_flight > limit:
                # A page leaves whole, in key order: wait for all of it at once (waiting for
                # the first of 1,000 futures again and again cost O(n^2)).
                wait(page.futures)
            elif not all(f.done() for f in page.futures):
                return
            results = [f.result() for f in page.futures]  # a raised future stops the run here
            self._pages.popleft()
            self.in_flight -= len(page.futures)
            self.clean &= page.decided
            for result in results:
                self.clean &= record(result)
            if self.clean and page.resume_key is not None:
                self.state["after"] = page.resume_key
                self._save()

    def finish(self, record: Callable[[object], bool]) -> bool:
        """Settle everything; the pass is complete when nothing was left behind."""
        self.settle(0, record)
        self.state["complete"] = self.clean
        self._save()
        return self.clean

    def abandon(self) -> None:
        """Stop caring about what is in flight (the run is stopping): wait, keep the mark."""
        for page in self._pages:
            wait(page.futures)
        self._pages.clear()
        self.in_flight = 0
