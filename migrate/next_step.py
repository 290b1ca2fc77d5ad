"""The next command of the zero-downtime runbook, whole, from where the migration stands.

It carries the operator's own buckets and options (the S3 endpoint and profile given to
status, the copy's checkpoint and the fold's --keep-workflow-table from the ledger), never a
secret: no DSN (the command finds the database where status did: DATABASE_URL, PG*), no
credential. What blocks the step (conflicts to resolve, legacy pods still writing, a failed
index) is said beside it. Before the contract, the way back is given too.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Optional

from ponoskit import ledger

from . import status as st

PROGRAM = "ponos-migrate"
DEFAULT_COPY_CHECKPOINT = "copy.checkpoint"
DEFAULT_RENAME_CHECKPOINT = "rename.checkpoint"


@dataclass(frozen=True)
class Where:
    """The operator's own S3 options, as given to status: repeated in the commands."""
    artifacts_bucket: str
    logs_bucket: str
    endpoint_url: Optional[str] = None
    profile: Optional[str] = None


@dataclass
class NextStep:
    command: Optional[str]  # None: nothing left to run
    note: str = ""
    blockers: list[str] = field(default_factory=list)
    rollback: Optional[str] = None  # the way back from here, while there is one

    def to_dict(self) -> dict:
        return {"command": self.command, "note": self.note, "blockers": self.blockers, "rollback": self.rollback}


def fold(*args: str) -> str:
    return shlex.join([PROGRAM, "db-fold-workflow", *args])


def rename(where: Where, *args: str) -> str:
    return s3_command("s3-rename", where, *args)


def verify(where: Where) -> str:
    return s3_command("verify", where)


def s3_command(subcommand: str, where: Where, *args: str) -> str:
    s3 = [*(("--endpoint-url", where.endpoint_url) if where.endpoint_url else ()),
          *(("--profile", where.profile) if where.profile else ())]
    return shlex.join([PROGRAM, subcommand, "--artifacts-bucket", where.artifacts_bucket,
                       "--logs-bucket", where.logs_bucket, *s3, *args])


def next_step(status: "st.MigrationStatus", where: Where) -> NextStep:
    step = backward(status, where) if status.intent == "rollback" else forward(status, where)
    step.rollback = way_back(status, where)
    return step


def forward(status: "st.MigrationStatus", where: Where) -> NextStep:
    database, phase = status.database, status.phase
    if phase in (st.LEGACY, st.ROLLED_BACK, st.EXPANDING):
        return expand(database)
    if phase == st.EXPANDED:
        return NextStep(rename(where, "--phase", "expand", "--checkpoint", copy_checkpoint(status)),
                        "expand the buckets: copy every legacy object to its new key, keeping it",
                        pass_problems(status))
    if phase == st.COPIED:
        due = sum(facts.changed_since_check or 0 for facts in status.buckets)
        return NextStep(rename(where, "--phase", "expand", "--checkpoint", copy_checkpoint(status)),
                        "deploy the new release; once the legacy pods are gone, the last catch-up"
                        + (f" ({due} legacy task(s) unfinished or changed since the last check)" if due else "")
                        + sharded(status), legacy_writers(database) + pass_problems(status))
    if phase == st.CAUGHT_UP:
        return NextStep(rename(where, "--phase", "contract"),
                        "contract the buckets: delete each legacy object whose copy is the same",
                        legacy_writers(database) + pass_problems(status))
    if phase == st.CONTRACTED_BUCKETS:
        return NextStep(fold("--phase", "contract", *keep_option(database)),
                        "contract the database (no way back); add --record-django-migration APP NAME to record "
                        "the new release's migration in the same transaction, or run manage.py migrate APP NAME "
                        "--fake after it", legacy_writers(database) + failed_indexes(database))
    return after_contract(status, where)


def expand(database: "st.DatabaseFacts") -> NextStep:
    blockers = failed_indexes(database)
    if database.orphans_refused:
        blockers.append(f"{database.orphans_refused} workflow(s) without a process: the expand refuses them; "
                        "fix them, or add --orphan-workflows delete")
    if database.state == st.EXPANDING:
        note = f"resume the expand at {database.next_step}"
    elif database.state == st.ROLLED_BACK:
        note = "rolled back: the legacy shape alone; to start again, expand the database"
    else:
        note = "expand the database (both releases can run on it)"
    return NextStep(fold("--phase", "expand", *keep_option(database)), note, blockers)


def after_contract(status: "st.MigrationStatus", where: Where) -> NextStep:
    if not all(facts.contracted for facts in status.buckets):
        checkpoint = next((facts.passes["all"].checkpoint for facts in status.buckets
                           if "all" in facts.passes and facts.passes["all"].checkpoint), DEFAULT_RENAME_CHECKPOINT)
        return NextStep(rename(where, "--checkpoint", checkpoint),
                        "the database is contracted; move the legacy keys still in the buckets", pass_problems(status))
    if not status.verified:
        return NextStep(verify(where), "check that the database and the buckets agree")
    return NextStep(None, f"the migration is over; once its history is no longer needed: {ledger.DROP_SQL};")


def backward(status: "st.MigrationStatus", where: Where) -> NextStep:
    if status.phase == st.ROLLED_BACK:
        return NextStep(None, "rolled back: the legacy shape alone, every object at its legacy key; to start "
                              f"again: {fold('--phase', 'expand')}")
    if any(facts.passes and not facts.rolled_back for facts in status.buckets):
        return NextStep(rename(where, "--rollback"), "stop the new release's pods first; then give the legacy "
                        "release every object back", pass_problems(status, "rollback"))
    return NextStep(fold("--rollback"), "take the expand away; every row keeps its legacy columns")


def way_back(status: "st.MigrationStatus", where: Where) -> Optional[str]:
    """Before the contract: the next rollback command; after it (or with nothing to undo) none."""
    if status.phase in (st.CONTRACTED, st.LEGACY, st.ROLLED_BACK):
        return None
    if any(facts.passes and not facts.rolled_back for facts in status.buckets):
        return rename(where, "--rollback")
    return fold("--rollback")


def copy_checkpoint(status: "st.MigrationStatus") -> str:
    """The checkpoint the last copy used (a catch-up needs it), else the runbook's name. A
    sharded copy has one per shard: the command printed is the one-process form, and the note
    says to run the shards again instead."""
    return next((facts.passes["expand"].checkpoint for facts in status.buckets
                 if "expand" in facts.passes and facts.passes["expand"].checkpoint), DEFAULT_COPY_CHECKPOINT)


def sharded(status: "st.MigrationStatus") -> str:
    copies = [facts.passes["expand"] for facts in status.buckets if "expand" in facts.passes]
    shards = max((found.shards for found in copies), default=1)
    return (f"; the copy ran on {shards} shards: to catch up cheaply, run each shard again with its --shard I/"
            f"{shards} and its own --checkpoint") if shards > 1 else ""


def keep_option(database: "st.DatabaseFacts") -> tuple[str, ...]:
    return ("--keep-workflow-table",) if database.mapping_table.startswith("kept") else ()


def pass_problems(status: "st.MigrationStatus", phase: Optional[str] = None) -> list[str]:
    """What the last pass left in each bucket: conflicts and failures to resolve first."""
    blockers = []
    for facts in status.buckets:
        last = facts.passes.get(phase) if phase else facts.latest
        if last is not None and last.left:
            listed = ", ".join(f"{facts_count} {name}" for name, facts_count in last.counts.items()
                               if name in st.PROBLEM_COUNTS)
            blockers.append(f"s3://{facts.bucket}: its last {last.phase} pass left {listed} (see that run's report): "
                            "resolve them, then run it again")
    return blockers


def legacy_writers(database: "st.DatabaseFacts") -> list[str]:
    if database.legacy_unfinished:
        return [f"legacy pods still writing: {database.legacy_unfinished} task(s) of the legacy release unfinished"]
    return []


def failed_indexes(database: "st.DatabaseFacts") -> list[str]:
    return [f"a failed index: {name} is INVALID (a killed concurrent build); the expand rebuilds it"
            for name in database.invalid_indexes]
