"""Realistic legacy data for both stores, shared by the tests, the demo and the benchmarks.

The database gets farms, workflows, processes (some never started, so without workflow),
tasks with parents, artifacts, GPUs, worker runs and activities, in the legacy schema. S3
gets every artifact at ``<workflow>/<task>/<path>`` and most logs at
``<workflow>/run_<N>/<task>.log``, with awkward paths (spaces, non-ASCII, ``+ % # ?``, paths
that start with a UUID folder), plus keys that belong to neither layout.
Everything derives from a seed, so two calls with the same spec make the same data.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Iterator

import psycopg

from ponoskit import keys, tasks
from ponoskit.aio import run_bounded

AWKWARD_PATHS = [
    "results/page 1.json",
    "Ünïcödé/données été.txt",
    "a+b/c%20d.txt",
    "hash#1?.bin",
    "logs/run_1/output.txt",
    "deep/nested/dir/file.tar.gz",
    "{uuid}/model.bin",  # a path that starts with a UUID-named folder
    "spaces  double/ end.txt",
    "日本語/ファイル.xml",
    "percent%25literal+plus.csv",
]
# Paths every peer can move (s5cmd fails keys with spaces and non-ASCII): the benchmark's
# side-by-side on data every contender handles.
ASCII_PATHS = [
    "results/page_1.json",
    "logs/run_1/output.txt",
    "deep/nested/dir/file.tar.gz",
    "{uuid}/model.bin",
    "metrics/summary.csv",
    "images/thumbnail-0001.png",
    "model/weights.bin",
    "transcriptions/page_2.xml",
    "export/elements.sqlite",
    "report.html",
]
CONTENT_TYPES = ["application/json", "text/plain; charset=utf-8", "application/octet-stream",
                 "application/gzip", "text/xml"]
UNRECOGNIZED_KEYS = ["README", "tmp/scratch.txt", "tmp/", "backup-2021/notes.md"]


@dataclass
class SeedSpec:
    processes: int = 50
    tasks_per_process: tuple[int, int] = (1, 6)
    artifacts_per_task: tuple[int, int] = (0, 3)
    # share of started processes whose tasks all expired (what the cleanup deletes)
    expired_share: float = 0.5
    # share of processes that are still running (an unfinished task)
    running_share: float = 0.1
    unstarted_processes: int = 3
    log_share: float = 0.9
    seed: int = 42
    artifact_paths: tuple = tuple(AWKWARD_PATHS)  # ASCII_PATHS for data every peer can move
    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


@dataclass
class SeedSummary:
    farms: int = 0
    workflows: int = 0
    processes: int = 0
    tasks: int = 0
    artifacts: int = 0
    logs: int = 0


def load_legacy_schema(conn: psycopg.Connection) -> None:
    sql = resources.files("ponos_dev").joinpath("legacy_schema.sql").read_text(encoding="utf-8")
    conn.execute(sql)


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def seed_database(conn: psycopg.Connection, spec: SeedSpec = SeedSpec()) -> SeedSummary:
    """Insert a legacy dataset with COPY; fast enough for a million tasks."""
    rng = random.Random(spec.seed)
    summary = SeedSummary()
    now = spec.now
    farms = [(_uuid(rng), f"farm-{i}", f"{rng.getrandbits(64):016x}") for i in range(3)]
    agents = [(_uuid(rng), farms[i % 3][0], f"agent-{i}") for i in range(6)]
    rows: dict[str, list[tuple]] = {name: [] for name in (
        "ponos_workflow", "process_process", "ponos_task", "ponos_task_parents",
        "ponos_artifact", "ponos_gpu", "process_workerrun", "process_workeractivity")}
    gpus_left = [(_uuid(rng), agents[i][0], f"gpu-{i}") for i in range(4)]
    parent_id = 0
    for p in range(spec.processes + spec.unstarted_processes):
        process_id = _uuid(rng)
        created = now - timedelta(days=rng.uniform(1, 400))
        started = p < spec.processes
        workflow_id = _uuid(rng) if started else None
        roll = rng.random()
        expired = started and roll < spec.expired_share
        running = started and not expired and roll < spec.expired_share + spec.running_share
        if started:
            rows["ponos_workflow"].append((workflow_id, rng.choice(farms)[0], created,
                                           created + timedelta(hours=1),
                                           None if running else created + timedelta(hours=2)))
        rows["process_process"].append((process_id, f"process {p}", rng.choice(["workers", "files", "repository"]),
                                         None, 1, workflow_id, "ready", created, created))
        rows["process_workerrun"].append((_uuid(rng), process_id, _uuid(rng), created))
        rows["process_workeractivity"].append((_uuid(rng), process_id, _uuid(rng), "processed"))
        if not started:
            continue
        summary.workflows += 1
        task_ids = []
        for t in range(rng.randint(*spec.tasks_per_process)):
            task_id = _uuid(rng)
            expiry = now - timedelta(days=rng.uniform(1, 30)) if expired else now + timedelta(days=rng.uniform(1, 30))
            state = rng.choice(tasks.UNFINISHED_STATES) if running and t == 0 else rng.choice(tasks.FINISHED_STATES)
            run = rng.choice([0, 0, 0, 1, 2])
            rows["ponos_task"].append((
                task_id, run, min(t, 3), f"task-{t}", 10, state, "worker run", "registry/worker:latest",
                '{"ARKINDEX_PROCESS_ID": "%s"}' % process_id, False, rng.choice(agents)[0], workflow_id,
                None, created, created, expiry, f"{rng.getrandbits(200):050x}"[:52]))
            if task_ids:
                parent_id += 1
                rows["ponos_task_parents"].append((parent_id, task_ids[-1], task_id))
            if gpus_left and rng.random() < 0.05:
                gpu = gpus_left.pop()
                rows["ponos_gpu"].append((gpu[0], gpu[1], task_id, gpu[2]))
            paths = rng.sample(list(spec.artifact_paths), k=rng.randint(*spec.artifacts_per_task))
            for path in paths:
                path = path.replace("{uuid}", str(_uuid(rng)))
                size = rng.randint(1, 400)
                rows["ponos_artifact"].append((_uuid(rng), task_id, path, size, rng.choice(CONTENT_TYPES),
                                               created, created))
            task_ids.append(task_id)
    # Leftover GPUs stay free.
    rows["ponos_gpu"].extend((g[0], g[1], None, g[2]) for g in gpus_left)

    with conn.transaction():
        with conn.cursor() as cur:
            with cur.copy("COPY ponos_farm (id, name, seed) FROM STDIN") as copy:
                for row in farms:
                    copy.write_row(row)
            with cur.copy("COPY ponos_agent (id, farm_id, hostname) FROM STDIN") as copy:
                for row in agents:
                    copy.write_row(row)
            columns = {
                "ponos_workflow": "id, farm_id, created, updated, finished",
                "process_process": "id, name, mode, corpus_id, creator_id, workflow_id, activity_state, created, updated",
                "ponos_task": "id, run, depth, slug, priority, state, command, image, env, requires_gpu, agent_id, "
                              "workflow_id, container, created, updated, expiry, token",
                "ponos_task_parents": "id, from_task_id, to_task_id",
                "ponos_artifact": "id, task_id, path, size, content_type, created, updated",
                "ponos_gpu": "id, agent_id, task_id, name",
                "process_workerrun": "id, process_id, version_id, created",
                "process_workeractivity": "id, process_id, element_id, state",
            }
            for table, cols in columns.items():
                with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                    for row in rows[table]:
                        copy.write_row(row)
            cur.execute("SELECT setval(pg_get_serial_sequence('ponos_task_parents', 'id'), %s)",
                        (max(parent_id, 1),))
    summary.farms = len(farms)
    summary.processes = len(rows["process_process"])
    summary.tasks = len(rows["ponos_task"])
    summary.artifacts = len(rows["ponos_artifact"])
    return summary


@dataclass(frozen=True)
class SeedObject:
    bucket_role: str  # "artifacts" or "logs"
    key: str
    body: bytes
    content_type: str


def artifact_body(artifact_id, size: int) -> bytes:
    unit = f"{artifact_id}\n".encode()
    return (unit * (size // len(unit) + 1))[:size]


def legacy_objects(conn: psycopg.Connection, log_share: float = 0.9, seed: int = 42) -> Iterator[SeedObject]:
    """The S3 objects that match the legacy database: artifacts and most logs, legacy keys."""
    rng = random.Random(seed)
    with conn.transaction(), conn.cursor(name="seed_artifacts") as cur:
        cur.execute("SELECT a.id, t.workflow_id, a.task_id, a.path, a.size, a.content_type "
                    "FROM ponos_artifact a JOIN ponos_task t ON t.id = a.task_id ORDER BY a.id")
        for artifact_id, workflow_id, task_id, path, size, content_type in cur:
            yield SeedObject("artifacts", keys.legacy_artifact_key(workflow_id, task_id, path),
                             artifact_body(artifact_id, size), content_type)
    with conn.transaction(), conn.cursor(name="seed_logs") as cur:
        cur.execute("SELECT id, workflow_id, run FROM ponos_task ORDER BY id")
        for task_id, workflow_id, run in cur:
            if rng.random() < log_share:
                yield SeedObject("logs", keys.legacy_log_key(workflow_id, run, task_id),
                                 f"log of task {task_id}\n".encode() * 3, "text/plain")


def seed_s3(context, conn: psycopg.Connection, *, artifacts_bucket: str, logs_bucket: str,
            log_share: float = 0.9, with_unrecognized: bool = True, concurrency: int = 64,
            seed: int = 42) -> dict[str, int]:
    """Upload the legacy objects through the context's S3 access; returns counts per role."""
    import obstore

    stores = {"artifacts": context.object_store(artifacts_bucket, concurrency=concurrency, retries=5),
              "logs": context.object_store(logs_bucket, concurrency=concurrency, retries=5)}
    counts = {"artifacts": 0, "logs": 0, "unrecognized": 0}

    def puts():
        for obj in legacy_objects(conn, log_share, seed):
            counts[obj.bucket_role] += 1
            yield obstore.put_async(stores[obj.bucket_role], obj.key, obj.body,
                                    attributes={"Content-Type": obj.content_type, "seeded-by": "ponos-toolkit"})

    asyncio.run(run_bounded(puts(), concurrency))
    if with_unrecognized:
        for key in UNRECOGNIZED_KEYS:
            context.s3.put_object(Bucket=artifacts_bucket, Key=key, Body=b"not ours")
            counts["unrecognized"] += 1
    return counts


def seed_all(context, conn: psycopg.Connection, spec: SeedSpec, *, artifacts_bucket: str,
             logs_bucket: str) -> tuple[SeedSummary, dict[str, int]]:
    load_legacy_schema(conn)
    summary = seed_database(conn, spec)
    counts = seed_s3(context, conn, artifacts_bucket=artifacts_bucket, logs_bucket=logs_bucket,
                     log_share=spec.log_share, seed=spec.seed)
    summary.logs = counts["logs"]
    return summary, counts
