"""Benchmark: our online fold against the naive one-transaction fold, on copies of one database.

    .venv/bin/python bench/bench_db_fold.py                      # 200k workflows, 1M tasks, 2M artifacts
    .venv/bin/python bench/bench_db_fold.py --workflows 20000    # a tenth, for a quick run
    .venv/bin/python bench/bench_db_fold.py --dsn postgresql://...   # an existing server (CREATE DATABASE needed)

One legacy database is seeded (COPY), vacuumed and copied twice with CREATE DATABASE ...
TEMPLATE; the naive fold (ponos_dev.naive_fold, what a framework migration does) runs
on one copy and ``fold_workflows`` on the other. During each, a probe thread plays the
application: every ~50 ms it reads and updates one row of ponos_task and one of
process_process, and the longest of those statements is the longest the application waited.
A third copy gets the expand alone (``--phase expand``, everything but the drop, with the
two-way triggers a rolling deploy needs): it must be no slower than the whole fold.
Targets: ours at most 1.5x the naive total; the expand no slower than ours; the probe's
longest wait under 1 s everywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402
from psycopg.conninfo import make_conninfo  # noqa: E402

from migrate.db_fold_workflow import FoldOptions, LockPolicy, fold_workflows  # noqa: E402
from ponoskit import schema  # noqa: E402
from ponos_dev import local, seed  # noqa: E402
from ponos_dev.naive_fold import naive_fold  # noqa: E402
from ponoskit.context import Context  # noqa: E402

PROBE_INTERVAL = 0.05


class Probe(threading.Thread):
    """The application: point reads and updates on both tables, timing every statement."""

    def __init__(self, dsn: str, task_ids: list, process_ids: list):
        super().__init__(name="probe", daemon=True)
        self.dsn, self.task_ids, self.process_ids = dsn, task_ids, process_ids
        self.stop = threading.Event()
        self.max_wait = 0.0
        self.statements = 0
        self.errors: list[str] = []

    def run(self) -> None:
        rng = random.Random(1)
        statements = [
            ("SELECT state, expiry FROM ponos_task WHERE id = %s", self.task_ids),
            ("UPDATE ponos_task SET updated = now() WHERE id = %s", self.task_ids),
            ("SELECT name, updated FROM process_process WHERE id = %s", self.process_ids),
            ("UPDATE process_process SET updated = now() WHERE id = %s", self.process_ids),
        ]
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                for sql, ids in statements:
                    start = time.monotonic()
                    try:
                        conn.execute(sql, (rng.choice(ids),)).fetchall() if sql.startswith("SELECT") \
                            else conn.execute(sql, (rng.choice(ids),))
                    except psycopg.Error as exc:  # the probe reports, never stops the benchmark
                        self.errors.append(" ".join(str(exc).split()))
                    self.max_wait = max(self.max_wait, time.monotonic() - start)
                    self.statements += 1
                self.stop.wait(PROBE_INTERVAL)


def measure(dsn: str, fold: Callable[[], None], state: str = schema.FOLDED) -> dict:
    """Run ``fold`` under the probe; ``state`` is the schema it must leave (the expand: partial)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        task_ids = [r[0] for r in conn.execute("SELECT id FROM ponos_task TABLESAMPLE SYSTEM (1) LIMIT 5000")]
        process_ids = [r[0] for r in conn.execute("SELECT id FROM process_process LIMIT 5000")]
    probe = Probe(dsn, task_ids, process_ids)
    probe.start()
    time.sleep(0.5)  # the probe is running before the fold starts
    start = time.monotonic()
    fold()
    seconds = time.monotonic() - start
    probe.stop.set()
    probe.join()
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert schema.schema_state(conn) == state, f"the fold did not leave the schema {state}"
    return {"seconds": seconds, "max_wait": probe.max_wait, "statements": probe.statements,
            "probe_errors": probe.errors}


@contextlib.contextmanager
def server(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
    else:
        with local.postgres() as started:
            yield started


def create_database(admin_dsn: str, name: str, template: str | None = None) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    return make_conninfo(admin_dsn, dbname=name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="an existing server (a role that may CREATE DATABASE); default: pgserver")
    parser.add_argument("--workflows", type=int, default=200_000)
    parser.add_argument("--tasks-per-workflow", type=int, nargs=2, default=(1, 9), metavar=("MIN", "MAX"),
                        help="uniform; the default averages 5, so 1M tasks for 200k workflows")
    parser.add_argument("--artifacts-per-task", type=int, nargs=2, default=(0, 4), metavar=("MIN", "MAX"),
                        help="uniform; the default averages 2, so 2M artifacts for 1M tasks")
    parser.add_argument("--batch-size", type=int, default=FoldOptions().batch_size)
    parser.add_argument("--lock-timeout", type=float, default=LockPolicy().timeout, help="seconds")
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards (with --dsn)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")

    with server(args.dsn) as admin_dsn:
        started = time.monotonic()
        source = create_database(admin_dsn, "bench_fold_source")
        with psycopg.connect(source, autocommit=True) as conn:
            seed.load_legacy_schema(conn)
            summary = seed.seed_database(conn, seed.SeedSpec(
                processes=args.workflows, tasks_per_process=tuple(args.tasks_per_workflow),
                artifacts_per_task=tuple(args.artifacts_per_task), seed=2024))
            conn.execute("VACUUM ANALYZE")  # both copies start from the same settled state
            size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()[0]
        print(f"seeded {summary.workflows} workflows, {summary.processes} processes, {summary.tasks} tasks, "
              f"{summary.artifacts} artifacts ({size}) in {time.monotonic() - started:.0f}s", flush=True)
        naive_dsn = create_database(admin_dsn, "bench_fold_naive", template="bench_fold_source")
        ours_dsn = create_database(admin_dsn, "bench_fold_ours", template="bench_fold_source")
        expand_dsn = create_database(admin_dsn, "bench_fold_expand", template="bench_fold_source")

        def naive() -> None:
            with psycopg.connect(naive_dsn, autocommit=True) as conn:
                naive_fold(conn)

        def fold(dsn: str, phase: str) -> Callable[[], None]:
            def run() -> None:
                options = FoldOptions(batch_size=args.batch_size, lock=LockPolicy(timeout=args.lock_timeout),
                                      phase=phase)
                with Context(job="bench-db-fold", dsn=dsn) as ctx:
                    fold_workflows(ctx, options)
                    phases = {p["name"]: p["seconds"] for p in ctx.report.phases}
                print(f"  {phase}, per step: " + ", ".join(f"{k} {v:.1f}s" for k, v in phases.items() if v >= 0.05))
            return run

        print("naive fold ...", flush=True)
        naive_result = measure(naive_dsn, naive)
        print("our fold ...", flush=True)
        ours_result = measure(ours_dsn, fold(ours_dsn, "all"))
        print("the expand alone ...", flush=True)
        expand_result = measure(expand_dsn, fold(expand_dsn, "expand"), schema.PARTIAL)

        ratio = ours_result["seconds"] / naive_result["seconds"]
        expand_ratio = expand_result["seconds"] / ours_result["seconds"]
        results = (naive_result, ours_result, expand_result)
        rows = [("", "naive (one transaction)", "db-fold-workflow", "--phase expand", "target"),
                ("total seconds", *(f"{r['seconds']:.1f}" for r in results), ""),
                ("ratio to naive", "1.00", f"{ratio:.2f}", f"{expand_result['seconds'] / naive_result['seconds']:.2f}",
                 "fold <= 1.5"),
                ("ratio expand / fold", "", "1.00", f"{expand_ratio:.2f}", "<= 1"),
                ("longest probe wait (s)", *(f"{r['max_wait']:.3f}" for r in results), "< 1"),
                ("probe statements", *(str(r["statements"]) for r in results), ""),
                ("probe errors", *(str(len(r["probe_errors"])) for r in results), "0")]
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        print()
        print(f"{summary.workflows} workflows, {summary.tasks} tasks, {summary.artifacts} artifacts; "
              f"batch size {args.batch_size}, lock_timeout {args.lock_timeout}s")
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
        for name, result in (("naive", naive_result), ("ours", ours_result), ("expand", expand_result)):
            for error in result["probe_errors"][:3]:
                print(f"{name} probe error: {error}")
        if args.dsn and not args.keep:
            with psycopg.connect(admin_dsn, autocommit=True) as admin:
                for name in ("bench_fold_source", "bench_fold_naive", "bench_fold_ours", "bench_fold_expand"):
                    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        on_target = (ratio <= 1.5 and expand_ratio <= 1.0
                     and max(ours_result["max_wait"], expand_result["max_wait"]) < 1.0)
        print("targets met" if on_target else "targets NOT met")
        return 0 if on_target else 1


if __name__ == "__main__":
    sys.exit(main())
