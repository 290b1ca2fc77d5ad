"""Verify that the database and the buckets agree after the migration (read only).

Runbook:
  1. The schema: legacy, folded, or a fold under way (a fold under way is a problem).
  2. Each bucket against the rows that expect objects in it: both are walked in key order at
     once (rows read a range of task ids at a time, in short statements: no transaction stays
     open for the listing's hours), so memory stays flat and no object needs a HEAD. Every
     ``ponos_artifact`` row must have its object at ``<task>/<path>`` with the row's size; a
     finished task's log is expected at ``<task>.log`` (missing logs are reported, not fatal:
     some tasks never wrote one).
  3. Every key of every bucket is classified with the task table: a legacy key still there is a
     problem; new-layout objects of unknown tasks (orphans, for ``ponos-maint orphans``) and
     keys of neither layout are counted.
Problems (exit 1): missing artifacts, size mismatches, legacy keys left, a fold under way.
"""

from __future__ import annotations

from typing import Iterator, Optional

from ponoskit import keys, schema
from ponoskit.connections import check_bucket
from ponoskit.errors import ConfigError
from ponoskit.runtime import JobResult
from ponoskit.s3.listing import ObjectInfo, iter_pages
from ponoskit.tasks import FINISHED_STATES, known_tasks_of_keys

LISTED_LIMIT = 1000
PROBLEMS = ("missing_artifacts", "size_mismatches", "legacy_left", "fold_under_way")


def verify(context, *, artifacts_bucket: Optional[str], logs_bucket: Optional[str]) -> JobResult:
    """True when database and buckets agree (exit 0)."""
    passes = keys.bucket_passes(artifacts_bucket, logs_bucket)
    report = context.report
    report.expect("objects")
    with report.phase("preflight"):
        state = schema.schema_state(context.db)
        if state == schema.UNKNOWN:
            raise ConfigError("the database has no Ponos tables: is --dsn the Arkindex database?")
        for bucket_pass in passes:
            check_bucket(context.s3, bucket_pass.bucket)
    report.info["schema"] = state
    if state == schema.PARTIAL:
        report.add("fold_under_way", "db-fold-workflow has not finished: run it again")

    for bucket_pass in passes:
        with report.phase("check", bucket=bucket_pass.bucket):
            check_bucket_against_rows(context, bucket_pass.bucket, artifacts=bucket_pass.artifacts,
                                      logs=bucket_pass.logs)
    return JobResult.finished([f"{report.counts[name]} {name}" for name in PROBLEMS if report.counts[name]])


def _pages(context, bucket: str) -> Iterator[list[ObjectInfo]]:
    with context.bar(f"verify s3://{bucket}", unit="key") as bar:
        for page in iter_pages(context.s3, bucket, retrier=context.retrier):
            page = [obj for obj in page if not keys.is_canary(obj.key)]  # a running rename's probe
            context.report.count("objects", len(page))
            bar.update(len(page))
            yield page


TASKS_PER_READ = 2000


def _expected_objects(with_db, *, artifacts: bool, logs: bool) -> Iterator[tuple[str, str, Optional[int], bool]]:
    """(group, key, size, required) of every object the database expects, grouped by task.

    Artifacts are required, with their recorded size; logs of finished tasks are expected but
    not required (some tasks never wrote one). Read a range of task ids at a time, each one
    short statement on an autocommit connection: the listing takes hours on a big bucket, and
    a transaction held that long would hold back vacuum on the hottest tables. A uuid sorts
    in PostgreSQL as its lowercase text sorts in S3 (byte order), so the ranges come in the
    listing's order. A window read again after a lost connection gives the same rows.
    """
    after = None
    while True:
        upto, found = with_db("verify's rows", lambda db: _window(db, after, artifacts=artifacts, logs=logs))
        yield from found
        if upto is None:
            return
        after = upto


def _window(conn, after, *, artifacts: bool, logs: bool) -> tuple[Optional[str], list]:
    """The next window of task ids after ``after``: its upper bound and its expected objects."""
    row = conn.execute(f"SELECT id FROM ponos_task {_between('id', after, None)} ORDER BY id OFFSET %(n)s LIMIT 1",
                       {"lo": after, "n": TASKS_PER_READ - 1}).fetchone()
    upto = row[0] if row else None
    window = {"lo": after, "hi": upto, "finished": list(FINISHED_STATES)}
    found: list[tuple[str, str, Optional[int], bool]] = []
    if artifacts:
        found += conn.execute(
            f"SELECT task_id::text, task_id::text || '/' || path, size, true FROM ponos_artifact "
            f"{_between('task_id', after, upto)}", window).fetchall()
    if logs:
        found += conn.execute(
            f"SELECT id::text, id::text || '.log', NULL::bigint, false FROM ponos_task "
            f"{_between('id', after, upto)} AND state = ANY(%(finished)s)", window).fetchall()
    found.sort(key=lambda expected: expected[0])
    return upto, found


def _between(column: str, after, upto) -> str:
    """The task-id window of one read (no OR on NULLs: each shape keeps its index plan)."""
    lower = "true" if after is None else f"{column} > %(lo)s"
    upper = "" if upto is None else f" AND {column} <= %(hi)s"
    return f"WHERE {lower}{upper}"


class _Merge:
    """Walk expected objects and listed objects side by side, one task's objects at a time."""

    def __init__(self, report, rows: Iterator[tuple[str, str, Optional[int], bool]], *, artifacts: bool,
                 logs: bool):
        self.report = report
        self.rows = rows
        self.artifacts, self.logs = artifacts, logs
        self.row = next(rows, None)

    def _missing(self, key: str, required: bool) -> None:
        self.report.add("missing_artifacts" if required else "missing_logs", key, limit=LISTED_LIMIT)

    def group(self, group: str, listed: dict[str, tuple[ObjectInfo, set]]) -> None:
        while self.row is not None and self.row[0] < group:  # tasks with no object at all
            self._missing(self.row[1], self.row[3])
            self.row = next(self.rows, None)
        expected = {}
        while self.row is not None and self.row[0] == group:
            expected[self.row[1]] = self.row
            self.row = next(self.rows, None)
        for key, (obj, tasks) in listed.items():
            row = expected.pop(key, None)
            if row is None:  # the rare case: only these keys need classifying
                found = keys.classify(key, tasks, logs=self.logs, artifacts=self.artifacts)
                classify_left(self.report, found, tasks)
            elif not row[3]:
                self.report.count("logs_found")
            elif row[2] is not None and row[2] != obj.size:
                self.report.add("size_mismatches", {"key": key, "row": row[2], "object": obj.size},
                                limit=LISTED_LIMIT)
            else:
                self.report.count("artifacts_found")
        for _, key, _, required in expected.values():
            self._missing(key, required)

    def finish(self) -> None:
        self.group("\U0010ffff", {})


def check_bucket_against_rows(context, bucket: str, *, artifacts: bool, logs: bool) -> None:
    """A merge join of the bucket listing with the rows that expect objects in it."""
    merge = _Merge(context.report, _expected_objects(context.with_db, artifacts=artifacts, logs=logs),
                   artifacts=artifacts, logs=logs)
    group, listed = None, {}
    for page in _pages(context, bucket):
        tasks = context.with_db("the page's task lookup", lambda db: known_tasks_of_keys(db, (obj.key for obj in page)))
        for obj in page:
            key_group = keys.listing_group(obj.key)
            if key_group != group:
                if group is not None:
                    merge.group(group, listed)
                group, listed = key_group, {}
            listed[obj.key] = (obj, tasks)
    if group is not None:
        merge.group(group, listed)
    merge.finish()


def classify_left(report, found: keys.Classified, tasks: set[str]) -> None:
    """Count an object that no artifact row accounts for."""
    if found.is_legacy or found.kind is keys.KeyKind.UNDECIDED:
        report.add("legacy_left", found.key, limit=LISTED_LIMIT)
    elif found.is_new and found.task_id not in tasks:
        report.add("orphans", found.key, limit=LISTED_LIMIT)
    elif found.kind is keys.KeyKind.NEW_LOG:
        report.count("logs_found")
    elif found.kind is keys.KeyKind.NEW_ARTIFACT:
        # Under a task that exists but with no row: harmless, the application never lists it.
        report.count("unindexed_objects")
    elif found.kind is keys.KeyKind.ORPHAN_LEGACY:
        report.add("orphan_legacy", found.key, limit=LISTED_LIMIT)
    else:
        report.add("unrecognized", found.key, limit=LISTED_LIMIT)
