"""Verify that the database and the buckets agree after the migration (read only).

Runbook:
  1. The schema: legacy, folded, or a fold under way (a fold under way is a problem).
  2. The artifacts bucket against ``ponos_artifact``: both are walked in key order at once (the
     rows sorted with the "C" collation, which is S3's byte order), so memory stays flat. Every
     row must have its object at ``<task>/<path>`` with the row's size.
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
from ponoskit.tasks import known_tasks_of_keys

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
    if artifacts_bucket:
        with report.phase("artifacts", bucket=artifacts_bucket):
            check_artifacts(context, artifacts_bucket, logs=shared)
    if logs_bucket and not shared:
        with report.phase("logs", bucket=logs_bucket):
            for page in _pages(context, logs_bucket):
                tasks = known_tasks_of_keys(context.db, (obj.key for obj in page))
                for obj in page:
                    classify_left(report, keys.classify(obj.key, tasks, logs=True, artifacts=False), tasks)
    return not any(report.counts[name] for name in PROBLEMS)


def _pages(context, bucket: str) -> Iterator[list[ObjectInfo]]:
    with progress(desc=f"verify s3://{bucket}", unit="key") as bar:
        for page in iter_pages(context.s3, bucket):
            context.report.count("objects", len(page))
            bar.update(len(page))
            yield page


def _artifact_rows(conn) -> Iterator[tuple[str, int]]:
    """Every artifact's new key and size, in S3's key order, streamed from a named cursor."""
    with conn.cursor(name="verify_artifacts") as cursor:
        cursor.itersize = 5000
        cursor.execute("SELECT (task_id::text || '/' || path) COLLATE \"C\" AS key, size "
                       "FROM ponos_artifact ORDER BY key")
        yield from cursor


def check_artifacts(context, bucket: str, *, logs: bool) -> None:
    """Walk rows and objects side by side: a merge join of two sorted streams."""
    report = context.report
    # A named cursor lives in a transaction: use a connection of its own, read only.
    with context.connect(autocommit=False) as conn:
        conn.read_only = True
        rows = _artifact_rows(conn)
        row = next(rows, None)
        for page in _pages(context, bucket):
            tasks = known_tasks_of_keys(context.db, (obj.key for obj in page))
            for obj in page:
                while row is not None and row[0] < obj.key:
                    report.add("missing_artifacts", row[0], limit=LISTED_LIMIT)
                    row = next(rows, None)
                if row is not None and row[0] == obj.key:
                    if row[1] is not None and row[1] != obj.size:
                        report.add("size_mismatches", {"key": obj.key, "row": row[1], "object": obj.size},
                                   limit=LISTED_LIMIT)
                    else:
                        report.count("artifacts_found")
                    row = next(rows, None)
                    continue
                classify_left(report, keys.classify(obj.key, tasks, logs=logs, artifacts=True), tasks)
        while row is not None:
            report.add("missing_artifacts", row[0], limit=LISTED_LIMIT)
            row = next(rows, None)
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
