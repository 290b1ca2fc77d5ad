"""What every phase of the fold receives: the context, the options, the DDL runner, the findings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ponoskit.context import Context

from .ddl import Ddl, LockPolicy
from .preflight import Findings

ORPHANS_REFUSE, ORPHANS_DELETE = "refuse", "delete"
KEPT_WORKFLOW_TABLE = "ponos_workflow_before_fold"


PHASES = ("all", "expand", "contract")


@dataclass(frozen=True)
class FoldOptions:
    batch_size: int = 5000
    lock: LockPolicy = field(default_factory=LockPolicy)
    keep_workflow_table: bool = False
    orphans: str = ORPHANS_REFUSE
    phase: str = "all"  # all (a maintenance window), expand, or contract
    django_migration: Optional[tuple[str, str]] = None  # (app, name) recorded in the contract
    max_replica_lag: Optional[float] = None  # seconds; the backfill waits while a replica lags more
    pause_file: Optional[str] = None  # while this file exists, the backfill waits between batches

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.orphans not in (ORPHANS_REFUSE, ORPHANS_DELETE):
            raise ValueError(f"orphans must be {ORPHANS_REFUSE!r} or {ORPHANS_DELETE!r}")
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}")


@dataclass
class Job:
    ctx: Context
    options: FoldOptions
    ddl: Ddl
    findings: Findings
    throttle: Optional[object] = None  # migrate.fold.throttle.Throttle: waits between backfill batches

    @property
    def conn(self):
        return self.ddl.conn

    def wait_for_replicas(self) -> None:
        """Between two batches: wait while a replica lags or an operator paused the run."""
        if self.throttle is not None:
            self.throttle.wait()

    def bar(self, total: int, desc: str, unit: str):
        return self.ctx.bar(desc, total=total, unit=unit)
