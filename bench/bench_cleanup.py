"""Benchmark: ``ponos-maint cleanup``, three ways side by side, on the same data and server.

    .venv/bin/python bench/bench_cleanup.py [--tasks 100000] [--naive-tasks 3000]

The three sides, each on its own copy of the same seeded database and its own bucket pair,
one after the other against one S3 server:

  (a) ``--list-prefixes``: each task's artifacts prefix and its log are listed (by shared
      prefix groups in a dense batch), then DeleteObjects: the cleanup before keys came
      from the database;
  (b) the default: the keys the artifact rows name and the log, recorded in the outbox,
      DeleteObjects in batches, no listing;
  (c) a naive per-row delete, what a quick script or an ORM loop does: per task, one
      DeleteObject per key (artifacts from their rows, then the log) and one DELETE per row
      (artifacts, parent links, the task; the GPU released), each statement committed on its
      own. It is slow, so it runs on the first ``--naive-tasks`` due tasks only.

Data: ``--tasks`` due tasks (every process of five tasks expired, two artifacts and a log each),
plus about one live process in ten (kept), seeded once into a template database and copied
with CREATE DATABASE ... TEMPLATE; S3 objects at new-layout keys.

S3 requests are counted in each side's process by a botocore hook (every HTTP attempt, by
operation), independent of the job's own counting. Each side runs in its own process (peak
memory = its VmHWM); meanwhile a probe, playing the Ponos API, updates a live task and reads
its artifacts every 50 ms and records its longest wait. With ``--small``, side (b) also runs
on a dataset ten times smaller, to show that memory stays flat. Starts its own PostgreSQL
(pgserver) and SeaweedFS unless --dsn / --endpoint-url are given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # measure.py, whichever way the script is started

from ponoskit import keys  # noqa: E402
from ponos_dev import local  # noqa: E402
from ponoskit.aio import run_bounded  # noqa: E402
from ponoskit.connections import S3Settings  # noqa: E402
from ponoskit.context import Context  # noqa: E402
from ponos_dev.naive_fold import naive_fold  # noqa: E402
from ponos_dev.seed import SeedSpec, load_legacy_schema, seed_database  # noqa: E402

from measure import cpu_seconds, wait_sampling_rss, wait_until_idle  # noqa: E402

TASKS_PER_PROCESS = 5
DUE_SHARE = 0.9  # the other processes are live (running or not expired yet)
UNFINISHED = ["unscheduled", "pending", "running", "stopping"]
DUE_TASKS_SQL = """
SELECT t.id FROM ponos_task t WHERE t.process_id IN (
    SELECT process_id FROM ponos_task GROUP BY process_id
    HAVING max(expiry) < now() AND NOT bool_or(state = ANY(%s)))
ORDER BY t.id"""


# --- data ---------------------------------------------------------------------------------

def build_template(admin_dsn: str, name: str, due_tasks: int, seed: int) -> tuple[str, dict]:
    processes = max(1, round(due_tasks / TASKS_PER_PROCESS / DUE_SHARE))
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(admin_dsn, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        load_legacy_schema(conn)
        seed_database(conn, SeedSpec(processes=processes, tasks_per_process=(TASKS_PER_PROCESS,) * 2,
                                     artifacts_per_task=(2, 2), expired_share=DUE_SHARE, running_share=0.05,
                                     unstarted_processes=0, log_share=1.0, seed=seed))
        naive_fold(conn)
        conn.execute("VACUUM ANALYZE")
        stats = {
            "due": len(conn.execute(DUE_TASKS_SQL, (UNFINISHED,)).fetchall()),
            "tasks": conn.execute("SELECT count(*) FROM ponos_task").fetchone()[0],
            "artifacts": conn.execute("SELECT count(*) FROM ponos_artifact").fetchone()[0],
        }
    return dsn, stats


def copy_database(admin_dsn: str, template: str, name: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return make_conninfo(admin_dsn, dbname=name)


def upload_objects(ctx: Context, dsn: str, artifacts: str, logs: str, only_tasks: list | None = None,
                   concurrency: int = 64) -> int:
    """Every artifact and log of the database's tasks (or of ``only_tasks``) at new-layout keys."""
    import obstore

    stores = {artifacts: ctx.object_store(artifacts, concurrency=concurrency, retries=5),
              logs: ctx.object_store(logs, concurrency=concurrency, retries=5)}
    count = 0

    def objects():
        with psycopg.connect(dsn) as conn:
            where = "WHERE t.id = ANY(%s)" if only_tasks is not None else ""
            params = (only_tasks,) if only_tasks is not None else None
            with conn.cursor(name="bench_objects") as cur:
                cur.itersize = 5000
                cur.execute(f"SELECT t.id, a.path FROM ponos_task t LEFT JOIN ponos_artifact a ON a.task_id = t.id "
                            f"{where} ORDER BY t.id", params)
                last = None
                for task_id, path in cur:
                    if task_id != last:
                        yield logs, keys.log_key(task_id)
                        last = task_id
                    if path is not None:
                        yield artifacts, keys.artifact_key(task_id, path)

    def puts():
        nonlocal count
        for bucket, key in objects():
            count += 1
            yield obstore.put_async(stores[bucket], key, f"object {key}\n".encode() * 4)

    asyncio.run(run_bounded(puts(), concurrency))
    return count


def count_objects(ctx: Context, bucket: str) -> int:
    return sum(page.get("KeyCount", 0) for page in ctx.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket))


# --- the naive peer -----------------------------------------------------------------------

def naive_worker(dsn: str, artifacts: str, logs: str, limit: int, endpoint: str | None) -> None:
    """One DeleteObject per key, one DELETE per row, every statement its own transaction."""
    ctx = Context(job="bench-naive", dsn=dsn, s3=S3Settings(endpoint_url=endpoint))
    s3, db = ctx.s3, ctx.db
    due = [row[0] for row in db.execute(DUE_TASKS_SQL + " LIMIT %s", (UNFINISHED, limit)).fetchall()]
    for task_id in due:
        for artifact_id, path in db.execute("SELECT id, path FROM ponos_artifact WHERE task_id = %s",
                                            (task_id,)).fetchall():
            s3.delete_object(Bucket=artifacts, Key=keys.artifact_key(task_id, path))
            db.execute("DELETE FROM ponos_artifact WHERE id = %s", (artifact_id,))
        s3.delete_object(Bucket=logs, Key=keys.log_key(task_id))
        for (link_id,) in db.execute("SELECT id FROM ponos_task_parents WHERE from_task_id = %s OR to_task_id = %s",
                                     (task_id, task_id)).fetchall():
            db.execute("DELETE FROM ponos_task_parents WHERE id = %s", (link_id,))
        db.execute("UPDATE ponos_gpu SET task_id = NULL WHERE task_id = %s", (task_id,))
        db.execute("DELETE FROM ponos_task WHERE id = %s", (task_id,))
    print(json.dumps({"tasks": len(due)}))


# --- measuring ----------------------------------------------------------------------------

class Probe(threading.Thread):
    """The Ponos API meanwhile: touch a live task and read its artifacts, every 50 ms."""

    def __init__(self, dsn: str):
        super().__init__(daemon=True)
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.task = self.conn.execute(
            "SELECT id FROM ponos_task WHERE expiry > now() ORDER BY id LIMIT 1").fetchone()[0]
        self.waits: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            with self.conn.transaction():
                self.conn.execute("UPDATE ponos_task SET updated = now() WHERE id = %s", (self.task,))
                self.conn.execute("SELECT count(*) FROM ponos_artifact WHERE task_id = %s", (self.task,)).fetchone()
                self.conn.execute("SELECT count(*) FROM ponos_task WHERE process_id = "
                                  "(SELECT process_id FROM ponos_task WHERE id = %s)", (self.task,)).fetchone()
            self.waits.append(time.monotonic() - start)
            self.stop.wait(0.05)

    def finish(self) -> dict:
        self.stop.set()
        self.join()
        self.conn.close()
        waits = sorted(self.waits) or [0.0]
        return {"probes": len(self.waits), "max_ms": round(1000 * waits[-1], 1),
                "p99_ms": round(1000 * waits[int(0.99 * (len(waits) - 1))], 1),
                "median_ms": round(1000 * statistics.median(waits), 1)}


# S3 requests of a child, by operation: every HTTP attempt its botocore clients send.
REQUEST_COUNT_HOOK = """
import atexit, collections, json, os, threading
import botocore.session
_sent, _sent_lock = collections.Counter(), threading.Lock()
def _count(event_name='', **_):
    with _sent_lock:
        _sent[event_name.rsplit('.', 1)[-1]] += 1
_create_client = botocore.session.Session.create_client
def _counting_create_client(self, *args, **kwargs):
    client = _create_client(self, *args, **kwargs)
    client.meta.events.register('before-send.s3', _count)
    return client
botocore.session.Session.create_client = _counting_create_client
def _write_requests():
    with open(os.environ['BENCH_REQUESTS_FILE'], 'w') as out:
        json.dump(dict(_sent), out)
atexit.register(_write_requests)
"""

# Peak memory of a child: VmHWM, which exec resets. (ru_maxrss would not do: it keeps the
# pages the child shared with this big parent between fork and exec.)
PEAK_MEMORY_HOOK = """
import atexit, os, sys
def _record_peak():
    with open('/proc/self/status') as status:
        peak = next(line.split()[1] for line in status if line.startswith('VmHWM'))
    with open(os.environ['BENCH_PEAK_FILE'], 'w') as out:
        out.write(peak)
atexit.register(_record_peak)
"""


def run_measured(command: list[str], dsn: str, env: dict) -> dict:
    wait_until_idle("weed")  # the seeding's or the previous side's background work is not this side's
    probe = Probe(dsn)
    probe.start()
    servers_before = {name: cpu_seconds(name) for name in ("weed", "postgres")}
    peak_file = Path(tempfile.mkstemp(suffix=".peak")[1])
    requests_file = Path(tempfile.mkstemp(suffix=".requests")[1])
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        start = time.monotonic()
        proc = subprocess.Popen(command, env={**env, "BENCH_PEAK_FILE": str(peak_file),
                                              "BENCH_REQUESTS_FILE": str(requests_file)},
                                stdout=out_file, stderr=err_file, text=True)
        seconds, usage, samples = wait_sampling_rss(proc, start)
        servers = {name: round(cpu_seconds(name) - before, 1) for name, before in servers_before.items()}
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    probe_stats = probe.finish()
    if proc.returncode != 0:
        raise SystemExit(f"{command[:4]} exited {proc.returncode}:\n{err[-3000:]}")
    peak_mb = round(int(peak_file.read_text()) / 1024, 1)
    peak_file.unlink()
    requests = json.loads(requests_file.read_text() or "{}")
    requests_file.unlink()
    samples = [round(mib, 1) for mib in samples]
    tenth = samples[len(samples) // 10] if samples else None
    cpu = {"own": round(usage.ru_utime + usage.ru_stime, 1), **servers}  # where the time went: client, S3 server, database
    return {"seconds": seconds, "peak_rss_mb": peak_mb, "probe": probe_stats, "stdout": out, "cpu_s": cpu,
            "rss_mb_at_10pct": tenth, "rss_mb_max_sampled": max(samples, default=None), "requests": requests}


def ours(dsn: str, artifacts: str, logs: str, endpoint: str | None, env: dict, batch_size: int,
         *extra: str) -> dict:
    report = Path(tempfile.mkstemp(suffix=".json")[1])
    command = [sys.executable, "-c", REQUEST_COUNT_HOOK + PEAK_MEMORY_HOOK + "from maint.cli import entry; entry()",
               "cleanup", "-q", "--dsn", dsn,
               "--artifacts-bucket", artifacts, "--logs-bucket", logs, "--batch-size", str(batch_size),
               "--report", str(report), *extra]
    if endpoint:
        command += ["--endpoint-url", endpoint]
    result = run_measured(command, dsn, env)
    result["report"] = json.loads(report.read_text())
    report.unlink()
    return result


# --- main ---------------------------------------------------------------------------------

@contextlib.contextmanager
def services(args):
    with contextlib.ExitStack() as stack:
        dsn = args.dsn or stack.enter_context(local.postgres())
        if args.endpoint_url:
            s3 = local.LocalS3(args.endpoint_url, os.environ.get("AWS_ACCESS_KEY_ID", ""),
                               os.environ.get("AWS_SECRET_ACCESS_KEY", ""))
        else:
            os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
            s3 = stack.enter_context(local.seaweedfs())
        yield dsn, s3


SIDES = {"prefixes": "(a) --list-prefixes", "keys": "(b) default: keys from rows", "naive": "(c) naive per-row"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000, help="due tasks to delete (default 100,000)")
    parser.add_argument("--naive-tasks", type=int, default=3_000,
                        help="due tasks the naive peer deletes; its rate is extrapolated (default 3,000)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--small", action="store_true", help="also run (b) on a 10x smaller dataset (memory)")
    parser.add_argument("--dsn", help="admin DSN of an existing PostgreSQL (default: start pgserver)")
    parser.add_argument("--endpoint-url", help="existing S3 endpoint (default: start SeaweedFS)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--naive-worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_worker:
        dsn, artifacts, logs, limit, endpoint = args.naive_worker
        return naive_worker(dsn, artifacts, logs, int(limit), endpoint or None)

    started = time.monotonic()
    tag = uuid.uuid4().hex[:8]
    with services(args) as (admin_dsn, s3):
        os.environ.update(s3.environ())
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        ctx = Context(job="bench", use_db=False, s3=S3Settings(endpoint_url=s3.endpoint_url))

        def step(message):
            print(f"[{time.monotonic() - started:7.1f}s] {message}", flush=True)

        step(f"seeding PostgreSQL: {args.tasks} due tasks")
        template = f"bench_tpl_{tag}"
        _, stats = build_template(admin_dsn, template, args.tasks, seed=11)
        dsns = {side: copy_database(admin_dsn, template, f"bench_{side}_{tag}") for side in SIDES}
        buckets = {side: (f"bench-{side}-artifacts-{tag}", f"bench-{side}-logs-{tag}") for side in (*SIDES, "small")}
        for pair in buckets.values():
            for bucket in pair:
                ctx.s3.create_bucket(Bucket=bucket)
        objects = 0
        for side in ("prefixes", "keys"):
            t0 = time.monotonic()
            objects = upload_objects(ctx, dsns[side], *buckets[side])
            step(f"seeded S3 for {SIDES[side]}: {objects} objects in {time.monotonic() - t0:.0f}s")
        with psycopg.connect(dsns["naive"]) as conn:
            naive_due = [r[0] for r in conn.execute(DUE_TASKS_SQL + " LIMIT %s",
                                                    (UNFINISHED, args.naive_tasks)).fetchall()]
        upload_objects(ctx, dsns["naive"], *buckets["naive"], only_tasks=naive_due)
        if args.small:
            small_dsn, small_stats = build_template(admin_dsn, f"bench_small_{tag}", args.tasks // 10, seed=12)
            upload_objects(ctx, small_dsn, *buckets["small"])

        runs = {}
        for side, extra in (("prefixes", ("--list-prefixes",)), ("keys", ())):
            step(f"{SIDES[side]}: deleting {stats['due']} due tasks")
            run = ours(dsns[side], *buckets[side], s3.endpoint_url, env, args.batch_size, *extra)
            run["tasks"] = run["report"]["counts"]["tasks"]
            with psycopg.connect(dsns[side]) as conn:
                left_due = len(conn.execute(DUE_TASKS_SQL, (UNFINISHED,)).fetchall())
                live_artifacts = conn.execute("SELECT count(*) FROM ponos_artifact").fetchone()[0]
                live_tasks = conn.execute("SELECT count(*) FROM ponos_task").fetchone()[0]
                owed = conn.execute("SELECT count(*) FROM ponos_cleanup_outbox").fetchone()[0]
            left_objects = count_objects(ctx, buckets[side][0]) + count_objects(ctx, buckets[side][1])
            run["correct"] = left_due == 0 and owed == 0 and left_objects == live_artifacts + live_tasks
            runs[side] = run

        step(f"{SIDES['naive']}: deleting {len(naive_due)} due tasks")
        naive = run_measured([sys.executable, "-c", REQUEST_COUNT_HOOK + PEAK_MEMORY_HOOK +
                              "import runpy; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')",
                              __file__, "--naive-worker", dsns["naive"], *buckets["naive"],
                              str(args.naive_tasks), s3.endpoint_url], dsns["naive"], env)
        naive["tasks"] = json.loads(naive["stdout"])["tasks"]
        naive["correct"] = None  # a subset: not checked
        runs["naive"] = naive

        small = None
        if args.small:
            step(f"(b) on the 10x smaller dataset: {small_stats['due']} due tasks")
            small = ours(small_dsn, *buckets["small"], s3.endpoint_url, env, args.batch_size)

    results = {"due_tasks": stats["due"], "live_tasks_kept": stats["tasks"] - stats["due"], "s3_objects": objects,
               "batch_size": args.batch_size, "sides": {}}
    for side, run in runs.items():
        requests = run["requests"]
        results["sides"][side] = {
            "name": SIDES[side], "tasks": run["tasks"], "seconds": round(run["seconds"], 1),
            "tasks_per_s": round(run["tasks"] / run["seconds"], 1),
            "s3_requests": requests, "s3_requests_per_task": round(sum(requests.values()) / max(run["tasks"], 1), 3),
            "peak_rss_mb": run["peak_rss_mb"], "cpu_s": run["cpu_s"], "probe": run["probe"],
            "end_state_correct": run["correct"],
            "job_counted_requests": run.get("report", {}).get("s3_requests"),
        }
    if small is not None:
        results["keys_small"] = {"tasks": small["report"]["counts"]["tasks"], "seconds": round(small["seconds"], 1),
                                 "peak_rss_mb": small["peak_rss_mb"]}
    print_results(results, time.monotonic() - started)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def print_results(r: dict, total: float) -> None:
    print()
    print(f"data: {r['due_tasks']} due tasks (2 artifacts + 1 log each), {r['live_tasks_kept']} live tasks kept, "
          f"{r['s3_objects']} S3 objects per side; batch {r['batch_size']}; one S3 server, one PostgreSQL")
    print()
    print("| side | tasks | seconds | tasks/s | S3 requests/task | LIST | DeleteObjects | DeleteObject "
          "| other | peak MB | probe max ms | end state |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for side in r["sides"].values():
        req = dict(side["s3_requests"])
        listing, batch, single = (req.pop(op, 0) for op in ("ListObjectsV2", "DeleteObjects", "DeleteObject"))
        correct = {True: "exact", False: "WRONG", None: "subset"}[side["end_state_correct"]]
        print(f"| {side['name']} | {side['tasks']} | {side['seconds']} | {side['tasks_per_s']} "
              f"| {side['s3_requests_per_task']} | {listing} | {batch} | {single} | {sum(req.values())} "
              f"| {side['peak_rss_mb']} | {side['probe']['max_ms']} | {correct} |")
    naive, keys_ = r["sides"]["naive"], r["sides"]["keys"]
    print()
    print(f"(b) vs (a): {keys_['tasks_per_s'] / r['sides']['prefixes']['tasks_per_s']:.1f}x tasks/s; "
          f"(b) vs (c): {keys_['tasks_per_s'] / naive['tasks_per_s']:.1f}x tasks/s "
          f"((c) on a subset of {naive['tasks']} tasks; all {r['due_tasks']} would take "
          f"~{r['due_tasks'] / naive['tasks_per_s']:.0f} s)")
    print("CPU seconds (own process, S3 server, database): " +
          "; ".join(f"{s['name']} {s['cpu_s']}" for s in r["sides"].values()))
    if "keys_small" in r:
        small = r["keys_small"]
        print(f"peak memory of (b): {small['peak_rss_mb']} MB at {small['tasks']} tasks, "
              f"{keys_['peak_rss_mb']} MB at {keys_['tasks']} tasks")
    print(f"total bench time {total:.0f} s; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")


if __name__ == "__main__":
    main()
