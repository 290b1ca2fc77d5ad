"""Benchmark: the zero-downtime runbook on 100,000 tasks with both releases working throughout.

    .venv/bin/python bench/bench_workload.py                   # 100,000 tasks, forward runbook
    .venv/bin/python bench/bench_workload.py --rollback        # ... and the way back instead
    .venv/bin/python bench/bench_workload.py --tasks 20000     # smaller, quicker

Seeds a legacy database and its buckets (local pgserver and SeaweedFS), then runs the runbook
while a legacy-release worker and a new-release worker (tests/workload.py) write and read:
legacy only; expand the database; copy the buckets; both releases (the rolling deploy); the
legacy release stops; the last catch-up; contract the buckets; contract the database. With
--rollback: ... both releases; the new release stops; s3-rename --rollback;
db-fold-workflow --rollback; legacy only again. Prints, per step and release, every failed
write and read and every object of the other release not found yet, with each command's time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg.conninfo import make_conninfo  # noqa: E402

from ponos_dev import local, seed  # noqa: E402
from ponoskit.connections import S3Settings  # noqa: E402
from ponoskit.context import Context  # noqa: E402
from tests.workload import (LEGACY, NEW, Ledger, Worker, forward_runbook, register_seeded,  # noqa: E402
                            rollback_runbook)

AVERAGE_TASKS_PER_PROCESS = 3.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--rollback", action="store_true", help="run the way back instead of the contract")
    parser.add_argument("--window", type=float, default=10.0, help="seconds each step lasts at least")
    parser.add_argument("--workers", type=int, default=64, help="s3-rename --workers")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ponos-bench-workload-"))
    with local.postgres(work / "pg") as admin, local.seaweedfs(work / "s3") as s3:
        os.environ.update(s3.environ())
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE workload")
        dsn = make_conninfo(admin, dbname="workload")
        ctx = Context(job="bench", dsn=dsn, s3=S3Settings(endpoint_url=s3.endpoint_url))
        buckets = {"artifacts": "workload-artifacts", "logs": "workload-logs"}
        for bucket in buckets.values():
            ctx.s3.create_bucket(Bucket=bucket)
        started = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as conn:
            seed.load_legacy_schema(conn)
            summary = seed.seed_database(conn, seed.SeedSpec(
                processes=round(args.tasks / AVERAGE_TASKS_PER_PROCESS), artifacts_per_task=(0, 2),
                running_share=0.0, unstarted_processes=0, seed=7))
            counts = seed.seed_s3(ctx, conn, artifacts_bucket=buckets["artifacts"], logs_bucket=buckets["logs"],
                                  seed=7, with_unrecognized=False)
            farm = conn.execute("SELECT id::text FROM ponos_farm ORDER BY id LIMIT 1").fetchone()[0]
        print(f"seeded {summary.tasks} tasks, {counts['artifacts'] + counts['logs']} objects in "
              f"{time.monotonic() - started:.0f} s", flush=True)
        ledger = Ledger()
        register_seeded(ledger, dsn, ctx.s3, buckets["logs"])
        book = Book(ledger, dsn, ctx, buckets, farm, s3.endpoint_url, args, work)
        try:
            (rollback_runbook if args.rollback else forward_runbook)(book, str(work / "copy.ck"))
        finally:
            for release in list(book.workers):
                book.stop(release)
        print()
        print("\n".join(ledger.table(book.steps)))
        print()
        for name, (code, seconds) in book.commands.items():
            print(f"  {name}: exit {code}, {seconds:.1f} s")
        failures = {k: n for k, n in ledger.counts.items() if n and "failed" in k[2]}
        after = ["contract the buckets", "contract the database"] if not args.rollback else \
            ["roll the database back", "legacy only again"]
        reader = LEGACY if args.rollback else NEW
        missing_after = ledger.total("other_objects_missing", steps=after, release=reader)
        print(f"failures: {sum(failures.values())}; objects of the other release missing after "
              f"{'the rollback' if args.rollback else 'the last catch-up'}: {missing_after}")
        for sample in ledger.samples[:10]:
            print("  ", sample)
        ok = not failures and missing_after == 0 and all(code == 0 for code, _ in book.commands.values())
        print("targets met" if ok else "targets NOT met")
        return 0 if ok else 1


class Book:
    def __init__(self, ledger, dsn, ctx, buckets, farm, endpoint, args, work):
        self.ledger, self.dsn, self.ctx, self.buckets, self.farm = ledger, dsn, ctx, buckets, farm
        self.endpoint, self.args, self.work = endpoint, args, work
        self.workers: dict[str, Worker] = {}
        self.steps: list[str] = []
        self.commands: dict[str, tuple[int, float]] = {}

    def start(self, release: str, seed_value: int) -> None:
        self.workers[release] = Worker(release, self.dsn, self.ctx.s3, self.buckets, self.ledger, seed=seed_value,
                                       farm_id=self.farm, pause=0.005)
        self.workers[release].start()

    def stop(self, release: str) -> None:
        worker = self.workers.pop(release)
        worker.stop.set()
        worker.join(timeout=60)

    def fold(self, *args) -> list[str]:
        return ["db-fold-workflow", "--dsn", self.dsn, *args]

    def rename(self, *args) -> list[str]:
        return ["s3-rename", "--endpoint-url", self.endpoint, "--artifacts-bucket", self.buckets["artifacts"],
                "--logs-bucket", self.buckets["logs"], "--dsn", self.dsn, "--workers", str(self.args.workers), *args]

    def step(self, name: str, command=None, *, window: bool = False, until=None) -> None:
        self.ledger.begin(name)
        if window:
            self.ledger.window_start = self.ledger.step_index
        self.steps.append(name)
        print(f"{name} ...", flush=True)
        started = time.monotonic()
        if command is not None:
            report = self.work / f"{len(self.steps)}.json"
            result = subprocess.run([str(ROOT / ".venv/bin/ponos-migrate"), *command, "--report", str(report)],
                                    capture_output=True, text=True)
            self.commands[name] = (result.returncode, time.monotonic() - started)
            if result.returncode != 0:
                print(result.stderr[-2000:], file=sys.stderr)
        time.sleep(max(0.0, self.args.window - (time.monotonic() - started)))
        deadline = time.monotonic() + 120  # ``until``: the window lasts until it proves something
        while until is not None and not until() and time.monotonic() < deadline:
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
