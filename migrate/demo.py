"""The whole migration on an embedded default: local PostgreSQL and S3, realistic legacy data.

Runbook:
  1. Start a PostgreSQL (pgserver) and an S3 server (SeaweedFS) in a fresh folder.
  2. Seed legacy data in both: workflows, processes, tasks, artifacts, logs, awkward keys.
  3. Fold workflows into processes (db-fold-workflow).
  4. Move every legacy key to its new key (s3-rename), then verify database and buckets agree.
  5. Clean up the expired processes (ponos-maint cleanup), then verify again.
  6. Print the before/after table, stop both servers and delete the folder.
Before each step and at the end, the one-line ``ponos-migrate status``.
Every run starts from scratch, so the demo can be run again and again.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional


from maint.cleanup import CleanupOptions, run_cleanup
from ponoskit import keys, ledger, schema
from ponos_dev import local, seed
from ponoskit.cli import progress
from ponoskit.connections import S3Settings
from ponoskit.context import Context
from ponoskit.errors import PonosError
from ponoskit.report import Report
from ponoskit.runtime import JobResult
from ponoskit.s3.listing import iter_pages
from ponoskit.tasks import known_tasks_of_keys

from . import next_step, status_text
from .db_fold_workflow import FoldOptions, fold_workflows
from .s3_rename import RenameOptions, rename
from .status import StatusOptions, read_status
from .verify import verify

ARTIFACTS, LOGS = "ponos-artifacts", "ponos-logs"
STATUS_SAMPLE = 50  # workflows looked up per status line: 100 LIST requests
TABLES = ("ponos_workflow", "process_process", "ponos_task", "ponos_artifact", "ponos_task_parents",
          "process_workerrun")


@dataclass
class StepDone:
    """What one step of the demo did (the fold's Step, in migrate/fold/step.py, is a step to run)."""
    name: str
    ok: bool
    summary: str
    seconds: float


def snapshot(context: Context) -> dict[str, object]:
    """Row counts per table and object counts per key layout."""
    conn = context.db
    counts: dict[str, object] = {}
    for table in TABLES:
        counts[table] = (conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                         if schema.table_exists(conn, table) else "dropped")
    counts["schema"] = schema.schema_state(conn)
    for bucket, role in ((ARTIFACTS, "artifacts"), (LOGS, "logs")):
        layout = {"legacy": 0, "new": 0, "other": 0}
        for page in iter_pages(context.s3, bucket):
            known = known_tasks_of_keys(conn, (obj.key for obj in page))
            for obj in page:
                found = keys.classify(obj.key, known, logs=role == "logs", artifacts=role == "artifacts")
                layout["legacy" if found.is_legacy else "new" if found.is_new else "other"] += 1
        for kind, number in layout.items():
            counts[f"s3 {role}: {kind} keys"] = number
    return counts


def status_line(dsn: str, settings: S3Settings) -> str:
    """``ponos-migrate status`` in one line: the phase, the legacy objects left, the next command."""
    with Context(job="status", dsn=dsn, s3=settings) as context:
        found = read_status(context, StatusOptions(ARTIFACTS, LOGS, sample=STATUS_SAMPLE))
    found.next = next_step.next_step(found, next_step.Where(ARTIFACTS, LOGS))
    return status_text.summary(found)


def record_run(name: str, dsn: str, report: Report, ok: bool) -> None:
    """The demo calls the jobs' functions, not their commands: it records each run in the run
    ledger as the command would (ponoskit.cli.finish), so the status lines see it."""
    job = name.split(" ", 1)[0]  # "verify (after cleanup)" is a verify
    params = {"artifacts_bucket": ARTIFACTS, "logs_bucket": LOGS}
    ledger.append(dsn, ledger.run_of(job, params, report.to_dict(), "done" if ok else "left", 0 if ok else 1))


def run_step(name: str, settings: S3Settings, dsn: str, body: Callable[[Context], Optional[JobResult]],
             summary: Callable[[Report], str], echo: Callable[[str], None]) -> StepDone:
    report = Report(name)
    echo(f"    {status_line(dsn, settings)}")
    echo(f"==> {name}")
    with Context(job=name, dsn=dsn, s3=settings, report=report, progress=progress) as context:
        try:
            result = body(context)  # the fold returns nothing when it is done
            ok = result is None or result.done
        except PonosError as err:
            ok, report.errors[:] = False, [str(err)]
    record_run(name, dsn, report, ok)
    text = summary(report) + (f"; error: {report.errors[0]}" if report.errors else "")
    seconds = report.to_dict()["seconds"]
    echo(f"    {'ok' if ok else 'FAILED'} in {seconds:.1f}s: {text}")
    return StepDone(name, ok, text, seconds)


def _counts(report: Report, *names: str) -> str:
    return ", ".join(f"{name.replace('_', ' ')} {report.counts[name]}" for name in names)


def run_demo(*, processes: int, workdir: Optional[Path], echo: Callable[[str], None]) -> bool:
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="ponos-demo-"))
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        echo(f"Starting PostgreSQL and SeaweedFS (S3) in {root} ...")
        with local.postgres(root / "pg") as dsn, local.seaweedfs(root / "s3") as s3:
            settings = S3Settings(endpoint_url=s3.endpoint_url)
            with s3.credentials_in_environment():
                return _run(dsn, settings, processes, echo)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(dsn: str, settings: S3Settings, processes: int, echo) -> bool:
    with Context(job="demo-seed", dsn=dsn, s3=settings) as context:
        for bucket in (ARTIFACTS, LOGS):
            context.s3.create_bucket(Bucket=bucket)
        summary, counts = seed.seed_all(context, context.db, seed.SeedSpec(processes=processes),
                                        artifacts_bucket=ARTIFACTS, logs_bucket=LOGS)
        echo(f"Seeded {summary.workflows} workflows, {summary.processes} processes, {summary.tasks} tasks, "
             f"{summary.artifacts} artifacts, {counts['logs']} logs, {counts['unrecognized']} foreign keys")
        before = snapshot(context)

    buckets = {"artifacts_bucket": ARTIFACTS, "logs_bucket": LOGS}

    def verified(r: Report) -> str:
        return _counts(r, "artifacts_found", "logs_found", "missing_artifacts", "legacy_left", "missing_logs")

    steps = [
        run_step("db-fold-workflow", settings, dsn, lambda c: fold_workflows(c, FoldOptions()),
                 lambda r: f"{len(r.phases)} phases", echo),
        run_step("s3-rename", settings, dsn, lambda c: rename(c, RenameOptions(**buckets)),
                 lambda r: _counts(r, "moved", "already_moved", "conflicts", "failed", "unrecognized"), echo),
        run_step("verify", settings, dsn, lambda c: verify(c, **buckets), verified, echo),
        run_step("cleanup", settings, dsn, lambda c: run_cleanup(c, CleanupOptions(
            ARTIFACTS, LOGS, datetime.now(timezone.utc))),
            lambda r: _counts(r, *sorted(r.counts)), echo),
        run_step("verify (after cleanup)", settings, dsn, lambda c: verify(c, **buckets), verified, echo),
    ]
    echo(f"    {status_line(dsn, settings)}")
    with Context(job="demo-after", dsn=dsn, s3=settings) as context:
        after = snapshot(context)

    width = max(len(name) for name in before)
    echo("")
    echo(f"{'':{width}}  {'before':>10}  {'after':>10}")
    for name in before:
        echo(f"{name:{width}}  {before[name]!s:>10}  {after[name]!s:>10}")
    ok = all(step.ok for step in steps)
    echo("")
    echo("Demo finished: every step succeeded." if ok else
         "Demo FAILED: " + ", ".join(step.name for step in steps if not step.ok))
    return ok
