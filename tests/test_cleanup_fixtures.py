"""Fixtures and helpers of the cleanup tests (no tests here).

``folded`` builds a folded database (seeded legacy data, then the reference naive fold) and
two buckets holding every task's files at NEW-layout keys, plus keys that are not ours and
objects without a row under some tasks (the default cleanup leaves those to the orphan
sweep; --list-prefixes deletes them). It then makes sure the interesting cases exist
whatever the seed drew: an expired process with an unfinished task, a GPU held by a due
task, parent links crossing from kept to due tasks.

What the cleanup should delete is computed here independently (GROUP BY / HAVING over the
seeded rows, not the job's NOT EXISTS query).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import obstore
import psycopg
import pytest
from click.testing import CliRunner

from maint.cli import main
from ponoskit import keys
from ponoskit.aio import run_bounded
from ponos_dev.naive_fold import naive_fold
from ponos_dev.seed import SeedSpec, seed_database
from tests.conftest import list_keys

UNFINISHED = ("unscheduled", "pending", "running", "stopping")
FOREIGN_ARTIFACT_KEYS = ["README", "tmp/scratch.txt", "backup-2021/notes.md"]


@dataclass
class Folded:
    dsn: str
    artifacts: str
    logs: str
    ctx: object
    now: datetime
    stuck_process: str  # expired, but one task is unfinished
    registered: set  # artifact keys that have a ponos_artifact row

    def add_artifact(self, task: str, path: str, body: bytes = b"artifact") -> str:
        """An artifact with its row and its object; returns its key."""
        key = keys.artifact_key(task, path)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO ponos_artifact (id, task_id, path, size, created, updated) "
                         "VALUES (%s, %s, %s, %s, now(), now())", (uuid.uuid4(), task, path, len(body)))
        self.ctx.s3.put_object(Bucket=self.artifacts, Key=key, Body=body)
        self.registered.add(key)
        return key

    def cli_args(self, *extra: str) -> list[str]:
        return ["--dsn", self.dsn, "--artifacts-bucket", self.artifacts, "--logs-bucket", self.logs,
                "--endpoint-url", self.ctx.s3_settings.endpoint_url, *extra]

    def due_tasks(self, before: datetime | None = None) -> set[str]:
        """Tasks of processes whose every task expired before ``before`` and none is unfinished."""
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute(
                "SELECT t.id::text FROM ponos_task t WHERE t.process_id IN ("
                "  SELECT process_id FROM ponos_task GROUP BY process_id"
                "  HAVING max(expiry) < %s AND NOT bool_or(state = ANY(%s)))",
                (before or self.now, list(UNFINISHED))).fetchall()
        return {r[0] for r in rows}

    def state(self) -> dict:
        return db_state(self.dsn)

    def listing(self, *, canaries: bool = False) -> dict[str, dict]:
        """Every object of both buckets; without the permission preflight's canaries (under
        keys.CANARY_PREFIX: a run killed between a canary's PUT and its DELETE leaves one, which
        a later run sweeps), unless asked."""
        found = {"artifacts": list_keys(self.ctx.s3, self.artifacts), "logs": list_keys(self.ctx.s3, self.logs)}
        if canaries:
            return found
        return {role: {k: v for k, v in objects.items() if not keys.is_canary(k)} for role, objects in found.items()}

    def expected_listing(self, before_listing: dict, gone_tasks: set[str], *, prefixes: bool = False) -> dict:
        """The buckets once ``gone_tasks`` are cleaned up: their logs and the keys their rows
        named go (``prefixes``: everything under their prefix, as --list-prefixes does)."""
        def gone(key: str) -> bool:
            task = key.split("/", 1)[0]
            return task in gone_tasks and (prefixes or key in self.registered)
        return {
            "artifacts": {k: v for k, v in before_listing["artifacts"].items() if not gone(k)},
            "logs": {k: v for k, v in before_listing["logs"].items()
                     if k not in {keys.log_key(t) for t in gone_tasks}},
        }

    def owed_rows(self, tasks: set[str]) -> set[tuple[str, str, str]]:
        """The outbox rows a default cleanup of ``tasks`` writes (before it ran: rows are read)."""
        with psycopg.connect(self.dsn) as conn:
            paths = conn.execute("SELECT task_id::text, path FROM ponos_artifact WHERE task_id::text = ANY(%s)",
                                 (sorted(tasks),)).fetchall()
        return ({(self.logs, keys.log_key(t), "key") for t in tasks}
                | {(self.artifacts, keys.artifact_key(t, p), "key") for t, p in paths})

    def outbox_rows(self) -> set[tuple[str, str, str]]:
        with psycopg.connect(self.dsn) as conn:
            if not conn.execute("SELECT to_regclass('ponos_cleanup_outbox') IS NOT NULL").fetchone()[0]:
                return set()
            return set(conn.execute("SELECT bucket, key_or_prefix, kind FROM ponos_cleanup_outbox").fetchall())


def db_state(dsn: str) -> dict:
    with psycopg.connect(dsn) as conn:
        def rows(sql):
            return set(conn.execute(sql).fetchall())
        return {
            "tasks": rows("SELECT id::text, process_id::text FROM ponos_task"),
            "artifacts": rows("SELECT id::text, task_id::text FROM ponos_artifact"),
            "parents": rows("SELECT from_task_id::text, to_task_id::text FROM ponos_task_parents"),
            "gpus": rows("SELECT id::text, task_id::text FROM ponos_gpu"),
            "processes": rows("SELECT id::text, farm_id::text, started, finished FROM process_process"),
            "workerruns": rows("SELECT id::text, process_id::text FROM process_workerrun"),
            "workeractivities": rows("SELECT id::text, process_id::text FROM process_workeractivity"),
        }


def expected_state(before: dict, due: set[str]) -> dict:
    """The database after deleting ``due``: dependent rows gone, GPUs released, the rest kept."""
    return {
        **before,
        "tasks": {r for r in before["tasks"] if r[0] not in due},
        "artifacts": {r for r in before["artifacts"] if r[1] not in due},
        "parents": {r for r in before["parents"] if r[0] not in due and r[1] not in due},
        "gpus": {(gpu, None if task in due else task) for gpu, task in before["gpus"]},
    }


def make_folded(make_database, context_factory, make_bucket, spec: SeedSpec) -> Folded:
    dsn = make_database("legacy")
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed_database(conn, spec)
        naive_fold(conn)
        stuck = _make_interesting_cases(conn, spec.now)
        artifact_rows = conn.execute("SELECT task_id::text, path FROM ponos_artifact").fetchall()
        task_ids = [r[0] for r in conn.execute("SELECT id::text FROM ponos_task").fetchall()]
    ctx = context_factory(dsn)
    artifacts, logs = make_bucket("artifacts"), make_bucket("logs")
    live = task_ids[0]
    objects = [(artifacts, keys.artifact_key(t, p)) for t, p in artifact_rows]
    objects += [(logs, keys.log_key(t)) for t in task_ids]
    # An extra object without a row under a task: --list-prefixes deletes it, the default
    # cleanup leaves it to the orphan sweep.
    objects += [(artifacts, keys.artifact_key(t, "unregistered/extra.bin")) for t in task_ids[::3]]
    objects += [(artifacts, key) for key in FOREIGN_ARTIFACT_KEYS]
    objects += [(artifacts, keys.legacy_artifact_key(uuid.uuid4(), live, "left/behind.txt"))]
    upload(ctx, objects)
    registered = {keys.artifact_key(t, p) for t, p in artifact_rows}
    return Folded(dsn, artifacts, logs, ctx, spec.now, stuck, registered)


def upload(ctx, objects: list[tuple[str, str]]) -> None:
    """Put small objects fast (obstore, async); folder markers through boto3, as obstore
    drops their trailing slash."""
    stores = {bucket: ctx.object_store(bucket, concurrency=32, retries=5) for bucket in {b for b, _ in objects}}

    puts = (obstore.put_async(stores[b], k, f"body of {k}".encode()) for b, k in objects if not k.endswith("/"))
    asyncio.run(run_bounded(puts, 32))
    for bucket, key in objects:
        if key.endswith("/"):
            ctx.s3.put_object(Bucket=bucket, Key=key, Body=b"")


def _make_interesting_cases(conn: psycopg.Connection, now: datetime) -> str:
    expired = [r[0] for r in conn.execute(
        "SELECT process_id::text FROM ponos_task GROUP BY process_id "
        "HAVING max(expiry) < %s AND NOT bool_or(state = ANY(%s)) ORDER BY process_id",
        (now, list(UNFINISHED))).fetchall()]
    kept_task = conn.execute("SELECT id::text FROM ponos_task WHERE expiry > %s ORDER BY id LIMIT 1",
                             (now,)).fetchone()[0]
    assert len(expired) >= 3, "the seed must give a few expired processes"
    stuck, gpu_holder, linked = expired[0], expired[1], expired[2]
    conn.execute("UPDATE ponos_task SET state = 'running' WHERE id = "
                 "(SELECT id FROM ponos_task WHERE process_id = %s ORDER BY id LIMIT 1)", (stuck,))
    holder = conn.execute("SELECT id FROM ponos_task WHERE process_id = %s ORDER BY id LIMIT 1",
                          (gpu_holder,)).fetchone()[0]
    conn.execute("UPDATE ponos_gpu SET task_id = NULL WHERE task_id = %s", (holder,))
    conn.execute("UPDATE ponos_gpu SET task_id = %s WHERE id = "
                 "(SELECT id FROM ponos_gpu WHERE task_id IS NULL ORDER BY id LIMIT 1)", (holder,))
    if not conn.execute("SELECT 1 FROM ponos_gpu WHERE task_id = %s", (kept_task,)).fetchone():
        conn.execute("UPDATE ponos_gpu SET task_id = %s WHERE id = "
                     "(SELECT id FROM ponos_gpu WHERE task_id IS NULL ORDER BY id LIMIT 1)", (kept_task,))
    due_task = conn.execute("SELECT id FROM ponos_task WHERE process_id = %s ORDER BY id DESC LIMIT 1",
                            (linked,)).fetchone()[0]
    conn.execute("INSERT INTO ponos_task_parents (from_task_id, to_task_id) VALUES (%s, %s), (%s, %s)",
                 (kept_task, due_task, due_task, kept_task))
    return stuck


@pytest.fixture
def folded(make_database, context_factory, make_bucket) -> Folded:
    return make_folded(make_database, context_factory, make_bucket,
                       SeedSpec(processes=24, seed=5, now=datetime.now(timezone.utc)))


@pytest.fixture
def run_cli(tmp_path):
    """Run ``ponos-maint`` in-process; returns (exit code, output, report dict)."""
    counter = iter(range(1000))

    def run(*args: str):
        report = tmp_path / f"report-{next(counter)}.json"
        result = CliRunner().invoke(main, [*args, "--report", str(report)], catch_exceptions=False)
        data = json.loads(report.read_text()) if report.exists() else None
        return result.exit_code, result.output, data
    return run


def maint_command() -> list[str]:
    """The console script, as cron would run it (falls back to the module in this interpreter)."""
    script = shutil.which("ponos-maint", path=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    return [script] if script else [sys.executable, "-c", "from maint.cli import entry; entry()"]


def later(now: datetime, **delta) -> str:
    return (now + timedelta(**delta)).isoformat()
