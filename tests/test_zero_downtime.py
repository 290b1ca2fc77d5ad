"""The zero-downtime runbook under load: both releases working while it runs, step by step.

Forward:  legacy only -> expand the database -> copy the buckets -> both releases (the rolling
          deploy) -> the legacy release stops -> the last catch-up -> contract the buckets ->
          contract the database.
Backward: ... -> both releases -> the new release stops -> s3-rename --rollback ->
          db-fold-workflow --rollback -> legacy only again.
A legacy-release worker and a new-release worker (tests/workload.py) write and read the whole
time their release runs; every failed write, every failed read, and every object of the other
release not found yet is counted per step, and the table printed.
"""

from __future__ import annotations

import json
import time

import psycopg
import pytest
from click.testing import CliRunner

from migrate.cli import main as migrate_main
from ponoskit import keys, schema
from ponos_dev import seed
from tests.helpers import list_keys
from tests.workload import LEGACY, NEW, Ledger, Worker, forward_runbook, register_seeded, rollback_runbook

# Each runbook walks every step with both releases at work for a second or more: slow.
pytestmark = pytest.mark.slow

STEP_SECONDS = 1.0
UNTIL_SECONDS = 60.0  # a step's ``until`` that does not hold by then fails the test


@pytest.fixture
def world(make_database, context_factory, make_bucket, s3_env):
    dsn = make_database("legacy")
    ctx = context_factory(dsn)
    buckets = {"artifacts": make_bucket("artifacts"), "logs": make_bucket("logs")}
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed.seed_database(conn, seed.SeedSpec(processes=30, running_share=0.0, seed=13))
        seed.seed_s3(ctx, conn, artifacts_bucket=buckets["artifacts"], logs_bucket=buckets["logs"], seed=13,
                     with_unrecognized=False)
        farm = conn.execute("SELECT id::text FROM ponos_farm ORDER BY id LIMIT 1").fetchone()[0]
    return {"dsn": dsn, "ctx": ctx, "buckets": buckets, "farm": farm, "s3_env": s3_env}


class Runbook:
    def __init__(self, world, tmp_path):
        self.world, self.tmp = world, tmp_path
        self.ledger = Ledger()
        self.workers: dict[str, Worker] = {}
        self.steps: list[str] = []
        self.codes: dict[str, int] = {}
        register_seeded(self.ledger, world["dsn"], world["ctx"].s3, world["buckets"]["logs"])

    def start(self, release: str, seed_value: int) -> None:
        worker = Worker(release, self.world["dsn"], self.world["ctx"].s3, self.world["buckets"], self.ledger,
                        seed=seed_value, farm_id=self.world["farm"])
        self.workers[release] = worker
        worker.start()

    def stop(self, release: str) -> None:
        worker = self.workers.pop(release)
        worker.stop.set()
        worker.join(timeout=30)

    def step(self, name: str, command=None, *, window: bool = False, until=None) -> None:
        """One step of the runbook; it lasts STEP_SECONDS at least and, with ``until``, until
        that holds too (a slow server must not make a window too short to prove anything)."""
        self.ledger.begin(name)
        if window:
            self.ledger.window_start = self.ledger.step_index
        self.steps.append(name)
        started = time.monotonic()
        if command is not None:
            group, args = command
            report = self.tmp / f"{name}.json"
            result = CliRunner().invoke(group, [*args, "--report", str(report)])
            self.codes[name] = result.exit_code
            assert result.exit_code == 0, (name, result.output, report.read_text() if report.exists() else "")
        time.sleep(max(0.0, STEP_SECONDS - (time.monotonic() - started)))
        if until is None:
            return
        deadline = time.monotonic() + UNTIL_SECONDS
        while not until():
            if time.monotonic() >= deadline:
                what = (until.__doc__ or until.__name__).strip().splitlines()[0]
                running = {release: worker.is_alive() for release, worker in self.workers.items()}
                pytest.fail(f"step {name!r}: waited {UNTIL_SECONDS:.0f}s for this to hold, in vain: {what}\n"
                            f"seen: workers alive {running}; the counts so far:\n"
                            + "\n".join(self.ledger.table(self.steps))
                            + ("\nsamples:\n  " + "\n  ".join(self.ledger.samples[:10]) if self.ledger.samples else ""))
            time.sleep(0.2)

    def fold(self, *args):
        return migrate_main, ["db-fold-workflow", "--dsn", self.world["dsn"], "--batch-size", "20", *args]

    def rename(self, *args):
        b = self.world["buckets"]
        return migrate_main, ["s3-rename", "--endpoint-url", self.world["s3_env"]["AWS_ENDPOINT_URL"],
                              "--artifacts-bucket", b["artifacts"], "--logs-bucket", b["logs"],
                              "--dsn", self.world["dsn"], "--workers", "8", *args]

    def finish(self) -> None:
        for release in list(self.workers):
            self.stop(release)
        print("\n" + "\n".join(self.ledger.table(self.steps)))
        if self.ledger.samples:
            print("samples:", *self.ledger.samples[:20], sep="\n  ")

    def assert_no_failures(self) -> None:
        failures = {k: n for k, n in self.ledger.counts.items() if n and ("failed" in k[2])}
        assert not failures, (failures, self.ledger.samples[:10])


def test_the_forward_runbook_under_both_releases_loses_nothing(world, tmp_path):
    book = Runbook(world, tmp_path)
    checkpoint = str(tmp_path / "copy.checkpoint")
    try:
        forward_runbook(book, checkpoint, seeds=(1, 2))
    finally:
        book.finish()
    book.assert_no_failures()
    ledger = book.ledger
    # The windows are real: both releases wrote, read, and read each other's work.
    assert ledger.total("other_rows_read", release=NEW) and ledger.total("other_rows_read", release=LEGACY)
    assert ledger.total("pre_existing_objects_read", release=NEW, steps=["both releases"])
    # After the last catch-up, the new release finds everything the legacy release wrote.
    assert ledger.total("other_objects_missing", release=NEW,
                        steps=["contract the buckets", "contract the database"]) == 0
    assert ledger.total("other_objects_read", release=NEW, steps=["contract the buckets", "contract the database"])
    # Every row and object accounted for: every task has its process and its objects at new keys.
    with psycopg.connect(world["dsn"]) as conn:
        assert schema.schema_state(conn) == schema.FOLDED
        assert conn.execute("SELECT count(*) FROM ponos_task WHERE process_id IS NULL").fetchone()[0] == 0
        artifacts = conn.execute("SELECT task_id::text, path FROM ponos_artifact").fetchall()
        tasks = {r[0] for r in conn.execute("SELECT id::text FROM ponos_task")}
    written = {t.id for t in ledger.tasks}
    assert written <= tasks
    present_artifacts = set(list_keys(world["ctx"].s3, world["buckets"]["artifacts"]))
    present_logs = set(list_keys(world["ctx"].s3, world["buckets"]["logs"]))
    assert {keys.artifact_key(t, p) for t, p in artifacts} <= present_artifacts
    assert {keys.log_key(t.id) for t in ledger.tasks} <= present_logs
    legacy_left = [k for bucket, listed in (("artifacts", present_artifacts), ("logs", present_logs)) for k in listed
                   if keys.classify(k, tasks, artifacts=bucket == "artifacts", logs=bucket == "logs").is_legacy]
    assert legacy_left == []


def test_the_rollback_before_the_contract_gives_the_legacy_release_everything(world, tmp_path):
    book = Runbook(world, tmp_path)
    try:
        rollback_runbook(book, seeds=(3, 4))
    finally:
        book.finish()
    book.assert_no_failures()
    ledger = book.ledger
    assert ledger.total("other_objects_read", release=LEGACY, steps=["roll the database back", "legacy only again"])
    assert ledger.total("other_objects_missing", release=LEGACY,
                        steps=["roll the database back", "legacy only again"]) == 0
    with psycopg.connect(world["dsn"]) as conn:
        assert schema.schema_state(conn) == schema.LEGACY  # the expand's columns, triggers, indexes gone
        assert conn.execute("SELECT count(*) FROM ponos_task WHERE workflow_id IS NULL").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'ponos_fold_%'").fetchone()[0] == 0
    # Running the rollbacks again changes nothing.
    assert CliRunner().invoke(*book.fold("--rollback")).exit_code == 0
    result = CliRunner().invoke(book.rename("--rollback", "--report", str(tmp_path / "again.json"))[0],
                                book.rename("--rollback", "--report", str(tmp_path / "again.json"))[1])
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "again.json").read_text())["counts"]
    assert again.get("restored", 0) == 0
