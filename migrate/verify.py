"""Verify that the database and the buckets agree after the migration (read only).

Runbook:
  1. The schema: legacy, folded, or a fold under way (a fold under way is a problem).
  2. Each bucket against the rows that expect objects in it: both are walked in key order at
     once (the rows sorted with the "C" collation, which is S3's byte order), so memory stays
     flat and no object needs a HEAD. Every ``ponos_artifact`` row must have its object at
     ``<task>/<path>`` with the row's size; a finished task's log is expected at
     ``<task>.log`` (missing logs are reported, not fatal: some tasks never wrote one).
  3. Every key of every bucket is classified with the task table: a legacy key still there is a
     problem; new-layout objects of unknown tasks (orphans, for ``ponos-maint orphans``) and
     keys of neither layout are counted.
Problems (exit 1): missing artifacts, size mismatches, legacy keys left, a fold under way.
"""

from __future__ import annotations

from typing import Iterator, Optional

from ponoskit import keys, schema
from ponoskit.cli import progress
from ponoskit.connections import check_bucket
from ponoskit.errors import ConfigError
from ponoskit.s3.listing import ObjectInfo, iter_pages
from ponoskit.tasks import FINISHED_STATES, known_tasks_of_keys

LISTED_LIMIT = 1000
PROBLEMS = ("missing_artifacts", "size_mismatches", "legacy_left", "fold_under_way")


def verify(context, *, artifacts_bucket: Optional[str], logs_bucket: Optional[str]) -> bool:
    """True when database and buckets agree (exit 0)."""
    if not artifacts_bucket and not logs_bucket:
        raise ConfigError("give --artifacts-bucket, --logs-bucket or both")
    report = context.report
    with report.phase("preflight"):
        state = schema.schema_state(context.db)
        if state == schema.UNKNOWN:
            raise ConfigError("the database has no Ponos tables: is --dsn the Arkindex database?")
        for bucket in {artifacts_bucket, logs_bucket} - {None}:
            check_bucket(context.s3, bucket)
    report.info["schema"] = state
    if state == schema.PARTIAL:
        report.add("fold_under_way", "db-fold-workflow has not finished: run it again")

    shared = artifacts_bucket == logs_bucket
    for bucket, holds_artifacts, holds_logs in (
            (artifacts_bucket, True, shared), (None if shared else logs_bucket, False, True)):
        if bucket:
            with report.phase("check", bucket=bucket):
                check_bucket_against_rows(context, bucket, artifacts=holds_artifacts, logs=holds_logs)
    return not any(report.counts[name] for name in PROBLEMS)


def _pages(context, bucket: str) -> Iterator[list[ObjectInfo]]:
    with progress(desc=f"verify s3://{bucket}", unit="key") as bar:
        for page in iter_pages(context.s3, bucket):
            context.report.count("objects", len(page))
            bar.update(len(page))
            yield page


def _expected_objects(conn, *, artifacts: bool, logs: bool) -> Iterator[tuple[str, Optional[int], bool]]:
    """(key, size, required) of every object the database expects, in S3's key order.

    Artifacts are required, with their recorded size; logs of finished tasks are expected but
    not required (some tasks never wrote one). Streamed from a named cursor.
    """
    parts = []
    if artifacts:
        parts.append("SELECT (task_id::text || '/' || path) COLLATE \"C\" AS key, size, true AS required "
                     "FROM ponos_artifact")
    if logs:
        parts.append("SELECT (id::text || '.log') COLLATE \"C\" AS key, NULL::bigint AS size, false AS required "
                     "FROM ponos_task "
                     "WHERE state = ANY(%(finished)s)")
    with conn.cursor(name="verify_expected") as cursor:
        cursor.itersize = 5000
        cursor.execute(" UNION ALL ".join(parts) + " ORDER BY key", {"finished": list(FINISHED_STATES)})
        yield from cursor


def check_bucket_against_rows(context, bucket: str, *, artifacts: bool, logs: bool) -> None:
    """Walk expected objects and listed objects side by side: a merge join of two sorted streams."""
    report = context.report

    def missing(key: str, required: bool) -> None:
        if required:
            report.add("missing_artifacts", key, limit=LISTED_LIMIT)
        else:
            report.add("missing_logs", key, limit=LISTED_LIMIT)

    # A named cursor lives in a transaction: use a connection of its own, read only.
    with context.connect(autocommit=False) as conn:
        conn.read_only = True
        expected = _expected_objects(conn, artifacts=artifacts, logs=logs)
        row = next(expected, None)
        for page in _pages(context, bucket):
            tasks = known_tasks_of_keys(context.db, (obj.key for obj in page))
            for obj in page:
                while row is not None and row[0] < obj.key:
                    missing(row[0], row[2])
                    row = next(expected, None)
                if row is not None and row[0] == obj.key:
                    key, size, required = row
                    if not required:
                        report.count("logs_found")
                    elif size is not None and size != obj.size:
                        report.add("size_mismatches", {"key": key, "row": size, "object": obj.size},
                                   limit=LISTED_LIMIT)
                    else:
                        report.count("artifacts_found")
                    row = next(expected, None)
                    continue
                classify_left(report, keys.classify(obj.key, tasks, logs=logs, artifacts=artifacts), tasks)
        while row is not None:
            missing(row[0], row[2])
            row = next(expected, None)
        conn.rollback()


def classify_left(report, found: keys.Classified, tasks: set[str]) -> None:
    """Count an object that no artifact row accounts for."""
    if found.is_legacy or found.kind is keys.Kind.UNDECIDED:
        report.add("legacy_left", found.key, limit=LISTED_LIMIT)
    elif found.kind in (keys.Kind.NEW_LOG, keys.Kind.NEW_ARTIFACT) and found.task_id not in tasks:
        report.add("orphans", found.key, limit=LISTED_LIMIT)
    elif found.kind is keys.Kind.NEW_LOG:
        report.count("logs_found")
    elif found.kind is keys.Kind.NEW_ARTIFACT:
        # Under a task that exists but with no row: harmless, the application never lists it.
        report.count("unindexed_objects")
    elif found.kind is keys.Kind.ORPHAN_LEGACY:
        report.add("orphan_legacy", found.key, limit=LISTED_LIMIT)
    else:
        report.add("unrecognized", found.key, limit=LISTED_LIMIT)
