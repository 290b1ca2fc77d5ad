"""What a rename run is asked to do: its options and phases (the command layer builds them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ponoskit.budget import RuntimeBudget
from ponoskit.s3.copy import DEFAULT_MULTIPART_THRESHOLD
from ponoskit.shard import Shard

from .s3_mover import COPY, INSPECT_AUTO, MOVE, RESTORE, Mode

# What exit 1 is about: each listed in the report.
PROBLEMS = ("conflicts", "failed", "undecided", "archived", "legacy_appearing")
# The buckets' phases have the database's words: expand (copy each legacy object to its new
# key, keep both), contract (move what is left, delete the legacy keys), all (both at once).
ALL, EXPAND, CONTRACT, ROLLBACK = "all", "expand", "contract", "rollback"
PHASES = (ALL, EXPAND, CONTRACT)
# What the release before called them (--phase copy|delete): still accepted, for one release.
OLD_PHASE_WORDS = {"copy": EXPAND, "delete": CONTRACT}
MODES = {ALL: MOVE, CONTRACT: MOVE, EXPAND: COPY, ROLLBACK: RESTORE}


def canonical_phase(word: str) -> str:
    """The phase's word now, for a word a run of either release wrote (a checkpoint, the ledger)."""
    return OLD_PHASE_WORDS.get(word, word)


@dataclass
class RenameOptions:
    artifacts_bucket: Optional[str] = None
    logs_bucket: Optional[str] = None
    workers: int = 64
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD
    part_size: int = 256 * 1024 ** 2
    read_limit: int = 64 * 1024 ** 2
    inspect: str = INSPECT_AUTO
    checkpoint: Optional[str] = None
    shard: Shard = field(default_factory=Shard)
    phase: str = ALL  # all or contract (move), expand (copy, keep both), rollback (restore legacy keys)
    budget: RuntimeBudget = field(default_factory=lambda: RuntimeBudget(None))  # --max-runtime
    prices: Optional[dict] = None  # --dry-run's bill (ponoskit.s3.bill); None: AWS list prices

    @property
    def mode(self) -> Mode:
        """What each move does in this phase (an object the mover and the check act on)."""
        return MODES[canonical_phase(self.phase)]
