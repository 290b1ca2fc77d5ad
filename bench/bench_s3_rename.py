"""Benchmark: s3-rename against s5cmd and a raw copy loop, side by side on the same server.

    .venv/bin/python bench/bench_s3_rename.py                 # 5,000 tasks (~15,000 objects)
    .venv/bin/python bench/bench_s3_rename.py --tasks 50000   # 10x, for the memory curve
    .venv/bin/python bench/bench_s3_rename.py --scales 1,10   # both, one table
    .venv/bin/python bench/bench_s3_rename.py --rounds 3      # medians of three rotated rounds
    .venv/bin/python bench/bench_s3_rename.py --keys ascii    # only keys every peer can move

By default each scale runs twice: on the seed's awkward keys (spaces, non-ASCII, + % # ?,
which s5cmd fails) and on ASCII-only keys (which s5cmd moves all of). The table gives, per
contender, wall time, objects moved per second, client CPU seconds per 1,000 objects (what
caps one process on AWS, where the server scales), the ratios of ours to each contender by
rate and by wall time, and the server's CPU.

Each contender gets its own copy of the same legacy buckets (seeded once per scale, then
duplicated server-side) and moves every legacy key:
  ponos-migrate  s3-rename, the whole job: listing, database classification, checks, moves.
  s5cmd          `s5cmd run` on a generated file of `mv --raw` lines (the file is built from a
                 listing and the database, and that time is counted: a user has to do it too).
  raw-copy       the ceiling: obstore async CopyObject on precomputed keys + DeleteObjects
                 batches, no listing, no checks, no resume. Nothing can do the job faster.
Each runs in its own process; peak memory is that process's max RSS (os.wait4). Before each
one the script waits for SeaweedFS to go idle (the previous contender's deletes leave it
vacuuming), and prints the server CPU each contender cost. Machines are shared and noisy: read
the ratios, not the absolute rates, and prefer --rounds 3, which rotates the order.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # measure.py, whichever way the script is started

from ponoskit import keys  # noqa: E402
from ponos_dev import local, seed  # noqa: E402
from ponoskit.aio import run_bounded  # noqa: E402
from ponoskit.connections import S3Settings  # noqa: E402
from ponoskit.context import Context  # noqa: E402
from ponoskit.s3.listing import iter_objects  # noqa: E402
from ponoskit.tasks import known_tasks_of_keys  # noqa: E402

from measure import cpu_seconds, wait_sampling_rss, wait_until_idle  # noqa: E402

AVERAGE_TASKS_PER_PROCESS = 3.5  # SeedSpec.tasks_per_process = (1, 6)


def run_measured(argv: list[str], env: dict) -> tuple[float, int, int, float]:
    """Run a process; return (seconds, peak RSS in MiB, exit code, CPU seconds). Prints the RSS curve."""
    # stderr to a file, not a pipe: a chatty process would fill the pipe and block forever.
    with tempfile.TemporaryFile() as errors:
        start = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        seconds, usage, samples = wait_sampling_rss(proc, start)
        curve = [int(mib) for mib in samples]
        print(f"    CPU {usage.ru_utime + usage.ru_stime:.1f} s (user {usage.ru_utime:.1f}, "
              f"system {usage.ru_stime:.1f})", flush=True)
        if curve:  # resident memory at each tenth of the run: flat, or growing with the data?
            print("    RSS MiB by tenth of the run:", [curve[min(len(curve) - 1, i * len(curve) // 10)]
                                                       for i in range(1, 11)], flush=True)
        if proc.returncode != 0:
            errors.seek(0)
            lines = errors.read().decode(errors="replace").splitlines()
            print(f"  {len(lines)} error lines, last ones:", *lines[-5:], sep="\n    ", file=sys.stderr)
    return seconds, usage.ru_maxrss // 1024, proc.returncode, usage.ru_utime + usage.ru_stime


def duplicate_bucket(ctx, source: str, target: str) -> None:
    import asyncio

    import obstore
    ctx.s3.create_bucket(Bucket=target)
    store_from, store_to = ctx.object_store(source, retries=5), ctx.object_store(target, retries=5)

    async def copy(key):
        data = await obstore.get_async(store_from, key)
        await obstore.put_async(store_to, key, await data.bytes_async(), attributes=data.attributes)

    asyncio.run(run_bounded((copy(obj.key) for obj in iter_objects(ctx.s3, source) if not obj.key.endswith("/")),
                            64))


def legacy_moves(ctx, conn, bucket: str, *, artifacts: bool, logs: bool) -> list[tuple[str, str]]:
    """List the bucket and ask the database: what a peer's user must compute before moving."""
    moves = []
    page = []

    def flush():
        known = known_tasks_of_keys(conn, (obj.key for obj in page))
        for obj in page:
            found = keys.classify(obj.key, known, artifacts=artifacts, logs=logs)
            if found.is_legacy:
                moves.append((obj.key, found.new_key))
        page.clear()

    for obj in iter_objects(ctx.s3, bucket):
        page.append(obj)
        if len(page) == 1000:
            flush()
    flush()
    return moves


def s5cmd_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


RAW_COPY = r"""
import asyncio, json, sys
import obstore
from ponoskit.connections import S3Settings
from ponoskit.context import Context
from ponoskit.s3.delete import delete_keys
plan = json.load(open(sys.argv[1]))
ctx = Context(job="bench", use_db=False, s3=S3Settings(endpoint_url=plan["endpoint"]))
async def main():
    limit = asyncio.Semaphore(64)
    for bucket, moves in plan["buckets"].items():
        store = ctx.object_store(bucket, retries=5)
        async def one(old, new):
            async with limit:
                await obstore.copy_async(store, old, new)
        await asyncio.gather(*(one(o, n) for o, n in moves))
        sources = [o for o, _ in moves]
        for i in range(0, len(sources), 1000):
            assert not any(delete_keys(ctx.s3, bucket, sources[i:i + 1000]))
asyncio.run(main())
"""


def bench_scale(ctx, admin_dsn: str, endpoint: str, env: dict, tasks: int, workers: int, work: Path,
                contenders: list[str], rounds: int, key_set: str = "mixed") -> dict:
    processes = max(1, round(tasks / AVERAGE_TASKS_PER_PROCESS))
    dbname = f"bench_rename_{tasks}_{key_set}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}"')
        admin.execute(f'CREATE DATABASE "{dbname}"')
    dsn = make_conninfo(admin_dsn, dbname=dbname)
    suffix = f"{tasks}-{key_set[0]}-{os.getpid()}"
    base = {"artifacts": f"art-base-{suffix}", "logs": f"log-base-{suffix}"}
    for bucket in base.values():
        ctx.s3.create_bucket(Bucket=bucket)
    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed.load_legacy_schema(conn)
        paths = seed.ASCII_PATHS if key_set == "ascii" else seed.AWKWARD_PATHS
        summary = seed.seed_database(conn, seed.SeedSpec(processes=processes, artifacts_per_task=(1, 3),
                                                          unstarted_processes=0, seed=tasks,
                                                          artifact_paths=tuple(paths)))
        counts = seed.seed_s3(ctx, conn, artifacts_bucket=base["artifacts"], logs_bucket=base["logs"],
                              seed=tasks, with_unrecognized=key_set != "ascii")
    objects = counts["artifacts"] + counts["logs"]
    print(f"  seeded {summary.tasks} tasks, {objects} legacy objects in {time.perf_counter() - t0:.0f} s",
          flush=True)

    with psycopg.connect(dsn) as conn:
        expected = {role: legacy_moves(ctx, conn, base[role], artifacts=(role == "artifacts"), logs=(role == "logs"))
                    for role in base}
    # Rounds rotate the order, so no contender always runs on a server warmed (or still busy)
    # the same way; the summary takes each contender's median.
    results: dict[str, list[dict]] = {name: [] for name in contenders}
    for round_index in range(rounds):
        shift = round_index % len(contenders)
        for name in contenders[shift:] + contenders[:shift]:
            label = f"{suffix}-{round_index}" if rounds > 1 else suffix
            results[name].append(run_contender(ctx, name, base, expected, label, objects, dsn, endpoint, env,
                                               workers, work, share_base=len(contenders) == 1 and rounds == 1))
    for bucket in base.values():
        with contextlib.suppress(Exception):
            ctx.s3.delete_bucket(Bucket=bucket)
    return {"tasks": summary.tasks, "objects": objects, "keys": key_set, "results": results}


def run_contender(ctx, name: str, base: dict, expected: dict, suffix: str, objects: int, dsn: str,
                  endpoint: str, env: dict, workers: int, work: Path, *, share_base: bool) -> dict:
    """One contender on its own copy of the seeded buckets: time it, then check its work."""
    if share_base:
        buckets = dict(base)  # nobody else needs the seeded buckets
    else:
        buckets = {role: f"{role[:3]}-{name[:5]}-{suffix}" for role in base}
        for role in base:
            duplicate_bucket(ctx, base[role], buckets[role])
    idle_wait = wait_until_idle("weed")  # the previous contender's background work is not this one's
    print(f"  ({name}: waited {idle_wait:.0f} s for an idle SeaweedFS)", flush=True)
    weed_before = cpu_seconds("weed")
    if name == "ponos-migrate":
        argv = [str(ROOT / ".venv/bin/ponos-migrate"), "s3-rename", "--endpoint-url", endpoint,
                "--artifacts-bucket", buckets["artifacts"], "--logs-bucket", buckets["logs"],
                "--dsn", dsn, "--workers", str(workers), "--report", str(work / f"report-{suffix}.json")]
        seconds, rss, code, cpu = run_measured(argv, env)
        phases = json.loads((work / f"report-{suffix}.json").read_text())["phases"]
        print("  ponos-migrate phases: " + ", ".join(
            f"{p['name']}{'(' + p['bucket'][:3] + ')' if 'bucket' in p else ''} {p['seconds']:.1f}s"
            for p in phases), flush=True)
    else:
        # The peers need the list of moves first: listing + database, timed as theirs.
        t_plan, t_plan_cpu = time.perf_counter(), time.process_time()
        with psycopg.connect(dsn) as conn:
            plan = {b: legacy_moves(ctx, conn, b, artifacts=(role == "artifacts"), logs=(role == "logs"))
                    for role, b in buckets.items()}
        plan_seconds, plan_cpu = time.perf_counter() - t_plan, time.process_time() - t_plan_cpu
        if name == "s5cmd":
            commands = work / f"s5cmd-{suffix}.txt"
            with open(commands, "w", encoding="utf-8") as out:
                for bucket, moves in plan.items():
                    for old, new in moves:
                        out.write(f"mv --raw {s5cmd_quote(f's3://{bucket}/{old}')} "
                                  f"{s5cmd_quote(f's3://{bucket}/{new}')}\n")
            argv = [shutil.which("s5cmd", path=str(ROOT / ".venv/bin")) or "s5cmd", "--endpoint-url", endpoint,
                    "--numworkers", str(workers), "run", str(commands)]
        else:
            plan_file = work / f"raw-{suffix}.json"
            plan_file.write_text(json.dumps({"endpoint": endpoint, "buckets": plan}))
            argv = [sys.executable, "-c", RAW_COPY, str(plan_file)]
        seconds, rss, code, cpu = run_measured(argv, {**env, "PYTHONPATH": str(ROOT)})
        seconds += plan_seconds
        cpu += plan_cpu
    weed = cpu_seconds("weed") - weed_before
    # Check the contender did the whole job: every legacy key gone, every new key there.
    moved = left = 0
    for role, bucket in buckets.items():
        present = {obj.key for obj in iter_objects(ctx.s3, bucket)}
        moved += sum(new in present for _, new in expected[role])
        left += sum(old in present for old, _ in expected[role])
    result = {"seconds": seconds, "objects_per_s": moved / seconds, "peak_rss_mib": rss,
              "exit": code, "new_keys": moved, "legacy_left": left, "weed_cpu_s": weed,
              "cpu_s": cpu, "cpu_per_1000": 1000 * cpu / max(moved, 1)}
    print(f"  {name:14s} {seconds:7.1f} s {moved / seconds:8.0f} obj/s moved  peak {rss:5d} MiB  "
          f"exit {code}  new keys {moved}/{objects}  legacy left {left}  CPU {cpu:.1f} s "
          f"({result['cpu_per_1000']:.3f} s/1000)  SeaweedFS CPU {weed:.1f} s", flush=True)
    for bucket in buckets.values():
        with contextlib.suppress(Exception):
            ctx.s3.delete_bucket(Bucket=bucket)
    return result


def print_table(table: list[dict]) -> None:
    """Medians over the rounds. A contender's rate counts the objects it actually moved (s5cmd
    leaves some behind); the ratios compare rates and wall times round by round."""
    print("\n| keys | tasks | objects | contender | median s | moved | obj/s moved | client CPU s/1000 "
          "| ours faster, obj/s (median; rounds) | ours faster, wall time (median; rounds) "
          "| our CPU / theirs (median) | SeaweedFS CPU s | peak MiB |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---|---|---:|---:|---:|")
    for row in table:
        ours = row["results"].get("ponos-migrate", [])
        for name, runs in row["results"].items():
            rates = [r["new_keys"] / r["seconds"] for r in runs]
            by_rate = [mine["new_keys"] / mine["seconds"] / rate for mine, rate in zip(ours, rates)]
            by_time = [peer["seconds"] / mine["seconds"] for peer, mine in zip(runs, ours)]
            by_cpu = [mine["cpu_per_1000"] / peer["cpu_per_1000"] for peer, mine in zip(runs, ours)]
            print(f"| {row['keys']} | {row['tasks']} | {row['objects']} | {name} "
                  f"| {statistics.median(r['seconds'] for r in runs):.1f} "
                  f"| {min(r['new_keys'] for r in runs)} | {statistics.median(rates):.0f} "
                  f"| {statistics.median(r['cpu_per_1000'] for r in runs):.3f} | {_ratios(by_rate)} "
                  f"| {_ratios(by_time)} | {statistics.median(by_cpu) if by_cpu else float('nan'):.2f} "
                  f"| {statistics.median(r['weed_cpu_s'] for r in runs):.1f} "
                  f"| {max(r['peak_rss_mib'] for r in runs)} |")


def _ratios(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f}x; " + ", ".join(f"{v:.2f}" for v in values)


@contextlib.contextmanager
def services(args, work: Path):
    if args.dsn and args.endpoint_url:
        yield args.dsn, local.LocalS3(args.endpoint_url, os.environ["AWS_ACCESS_KEY_ID"],
                                      os.environ["AWS_SECRET_ACCESS_KEY"])
        return
    with local.postgres(work / "pg") as dsn, local.seaweedfs(work / "s3") as s3:
        yield dsn, s3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--scales", default="1", help="multiples of --tasks, e.g. 1,10")
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every contender this many times, in rotated order; report medians")
    parser.add_argument("--only", default="raw-copy,s5cmd,ponos-migrate",
                        help="contenders to run, comma-separated (the memory curve needs ponos-migrate only)")
    parser.add_argument("--keys", choices=["mixed", "ascii", "both"], default="both",
                        help="the seed's awkward keys, ASCII-only keys (every peer can move them), or both")
    parser.add_argument("--dsn", help="an existing PostgreSQL (admin) instead of a local one")
    parser.add_argument("--endpoint-url", help="an existing S3 server instead of a local SeaweedFS")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ponos-bench-rename-"))
    try:
        with services(args, work) as (admin_dsn, s3):
            env = {**os.environ, **s3.environ()}
            os.environ.update(s3.environ())
            ctx = Context(job="bench", use_db=False, s3=S3Settings(endpoint_url=s3.endpoint_url))
            table = []
            key_sets = ["mixed", "ascii"] if args.keys == "both" else [args.keys]
            for scale in [int(x) for x in args.scales.split(",")]:
                for key_set in key_sets:
                    print(f"scale x{scale}: {args.tasks * scale} tasks, {key_set} keys", flush=True)
                    table.append(bench_scale(ctx, admin_dsn, s3.endpoint_url, env, args.tasks * scale, args.workers,
                                             work, args.only.split(","), args.rounds, key_set))
            print_table(table)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
