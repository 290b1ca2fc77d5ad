"""A migration's status for a person (lines, or one summary line) and for a program (a dict)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from . import status as st


def to_dict(status: "st.MigrationStatus") -> dict[str, Any]:
    return {
        "phase": status.phase,
        "phases": list(st.PHASES),
        "intent": status.intent,
        "database": asdict(status.database),
        "buckets": [bucket_dict(facts) for facts in status.buckets],
        "cleanup": asdict(status.cleanup),
        "ledger": status.ledger,
        "verified": status.verified,
        "next": status.next.to_dict() if status.next is not None else None,
    }


def bucket_dict(facts: "st.BucketFacts") -> dict[str, Any]:
    return {"bucket": facts.bucket, "roles": facts.roles,
            "passes": {phase: asdict(found) for phase, found in facts.passes.items()},
            "copied": facts.copied, "caught_up": facts.caught_up, "contracted": facts.contracted,
            "rolled_back": facts.rolled_back, "catch_up_due": facts.catch_up_due,
            "changed_since_check": facts.changed_since_check,
            "legacy": facts.legacy.to_dict() if facts.legacy is not None else None}


def summary(status: "st.MigrationStatus") -> str:
    """One line: the phase, what is left in the buckets, the next command."""
    left = "; ".join(f"s3://{facts.bucket} {legacy_short(facts)}" for facts in status.buckets)
    following = status.next.command if status.next is not None and status.next.command else "nothing"
    blocked = f" (blocked: {status.next.blockers[0]})" if status.next is not None and status.next.blockers else ""
    return f"status: {status.phase}; {left}; next: {following}{blocked}"


def legacy_short(facts: "st.BucketFacts") -> str:
    legacy = facts.legacy
    if legacy is None or legacy.method == "none":
        return "last rename pass done" if facts.contracted else "legacy left unknown"
    if legacy.method == "exact":
        return f"{legacy.objects_left} legacy objects"
    span = f"~{legacy.workflows_left}" if legacy.low != legacy.high else f"{legacy.workflows_left}"
    return f"{span}/{legacy.population} workflows with legacy objects"


def lines(status: "st.MigrationStatus") -> list[str]:
    return [f"Phase: {status.phase}  (order: {' < '.join(st.PHASES)})", "", *database_lines(status.database),
            "", *[line for facts in status.buckets for line in bucket_lines(facts)],
            *cleanup_lines(status.cleanup), "", f"Ledger: {status.ledger}", "", *next_lines(status)]


def database_lines(database: "st.DatabaseFacts") -> list[str]:
    out = [f"Database: {database.state}"]
    if database.state in (st.EXPANDING, st.EXPANDED):
        out.append(f"  expand steps done: {', '.join(database.steps_done) or 'none'}")
        out.append(f"  next step: {database.next_step or 'none: sync triggers live, both releases can run'}")
    out.append(f"  Django migration: {database.django_migration}")
    out.append(f"  workflow mapping: {database.mapping_table}")
    if database.orphans_refused is not None:
        out.append(f"  orphan workflows (refused by the expand): {database.orphans_refused}")
    out.append(f"  orphan tasks deleted and recorded: {database.orphans_recorded or 0}")
    if database.legacy_unfinished:
        out.append(f"  legacy release tasks unfinished: {database.legacy_unfinished}")
    if database.invalid_indexes:
        out.append(f"  INVALID indexes: {', '.join(database.invalid_indexes)}")
    lag = database.replica_lag_seconds
    out.append(f"  replica lag: {'unreadable (needs pg_monitor)' if lag is None else f'{lag:.1f}s'}")
    return out


def bucket_lines(facts: "st.BucketFacts") -> list[str]:
    out = [f"Bucket s3://{facts.bucket} ({' and '.join(facts.roles)})"]
    if not facts.passes:
        out.append("  no rename pass recorded")
    for found in facts.passes.values():
        counts = ", ".join(f"{name} {n}" for name, n in sorted(found.counts.items())) or "no counts"
        if len(found.buckets) > 1:
            counts += f" (the run's, over {' and '.join(found.buckets)})"
        catch_up = " (catch-up)" if found.catch_up else ""
        out.append(f"  last {found.phase} pass{catch_up}: {found.started} -> {found.ended}, {found.status} "
                   f"(exit {found.exit_code}); {counts}")
        if found.checkpoint:
            out.append(f"    checkpoint {found.checkpoint}")
    if facts.changed_since_check is not None:
        out.append(f"  catch-up {'due' if facts.catch_up_due else 'not due'}: {facts.changed_since_check} legacy "
                   "task(s) unfinished or changed since the last copy's check")
    if facts.legacy is not None:
        out.append(f"  legacy left: {facts.legacy.describe()}")
    return out + [""]


def cleanup_lines(cleanup: "st.CleanupFacts") -> list[str]:
    out = ["Cleanup:"]
    for run in cleanup.runs:
        out.append(f"  {run['job']} {run['started']} -> {run['ended']}: {run['status']} (exit {run['exit_code']})")
    if not cleanup.runs:
        out.append("  no run recorded")
    if cleanup.outbox_backlog is None:
        out.append("  outbox: none yet")
    else:
        out.append(f"  outbox backlog: {cleanup.outbox_backlog}; set aside: {cleanup.set_aside}")
    return out


def next_lines(status: "st.MigrationStatus") -> list[str]:
    step = status.next
    if step is None:
        return []
    out = [f"Next: {step.command}" if step.command else "Next: nothing to run"]
    if step.note:
        out.append(f"  {step.note}")
    out += [f"  blocked: {blocker}" for blocker in step.blockers]
    if step.rollback:
        out.append(f"Way back: {step.rollback}")
    return out
