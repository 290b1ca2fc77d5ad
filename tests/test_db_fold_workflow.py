"""``ponos-migrate db-fold-workflow`` against a real PostgreSQL.

The reference end state is :func:`ponos_dev.naive_fold.naive_fold` run on a twin database seeded
with the same spec; every fold here is run again and must change nothing the second time.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from migrate.db_fold_workflow import FOLD_LOCK_KEY, KEPT_WORKFLOW_TABLE
from migrate.fold.ddl import Ddl, LockPolicy
from migrate.fold import consistency
from ponoskit import keys, schema
from ponos_dev import seed
from tests.fixtures.fold import (FOLD_APP, SEED_NOW, assert_folded_as_expected, assert_second_run_changes_nothing,
                                 connect, dbname, describe_schema_of, fold, fold_process, fold_sessions,
                                 legacy_expectations, make_orphans, seeded_database, snapshot, wait_for,
                                 without_table)


# --- the end state -----------------------------------------------------------------------

def test_fold_reaches_the_naive_end_state_and_a_second_run_changes_nothing(twins, tmp_path):
    naive, ours = twins(processes=40, unstarted_processes=4, seed=5)
    expected = legacy_expectations(ours)
    assert expected["unstarted"] and expected["tasks"] > 40

    called = time.monotonic()
    result = fold(ours, "--batch-size", "7", "--report", str(tmp_path / "report.json"))
    wall = time.monotonic() - called

    assert result.exit_code == 0, result.output
    assert snapshot(ours) == snapshot(naive)  # same columns, constraints, indexes, and rows
    assert_folded_as_expected(ours, expected)
    report = json.loads((tmp_path / "report.json").read_text())
    phases = {phase["name"]: phase for phase in report["phases"]}
    assert phases["backfill_tasks"]["rows"] == expected["tasks"]
    assert phases["verify"]["tasks_with_process"] == expected["tasks"]
    # Each phase's own wall time, in seconds (rounded to the ms): the phases run one after the
    # other within the call, so together they fit in it and in the run's own time...
    seconds = [phase["seconds"] for phase in report["phases"]]
    assert min(seconds) >= 0 and sum(seconds) <= min(wall, report["seconds"]) + 0.0005 * len(seconds), \
        (wall, report["seconds"], report["phases"])
    # ...and a phase that did work took time: dozens of batches, a transaction each.
    assert phases["backfill_processes"]["rows"] > 0 and phases["backfill_processes"]["seconds"] > 0
    assert phases["backfill_tasks"]["seconds"] > 0
    assert report["counts"]["backfilled_ponos_task"] == expected["tasks"]
    assert_second_run_changes_nothing(ours, "--batch-size", "7")


def test_a_folded_database_is_left_alone(twins, tmp_path):
    naive, _ = twins(processes=5, seed=2)
    before = snapshot(naive)
    result = fold(naive, "--report", str(tmp_path / "report.json"))
    assert result.exit_code == 0, result.output
    assert snapshot(naive) == before
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["already_folded"] is True and report["schema_state_before"] == schema.FOLDED
    assert_second_run_changes_nothing(naive)


def test_keep_workflow_table_renames_it_aside_with_the_process_mapping(twins):
    naive, ours = twins(processes=30, seed=8)
    with connect(ours) as conn:
        workflows = {row[0]: tuple(row[1:]) for row in conn.execute(
            "SELECT w.id, w.farm_id, w.created, w.updated, w.finished, p.id "
            "FROM ponos_workflow w LEFT JOIN process_process p ON p.workflow_id = w.id")}
    expected = legacy_expectations(ours)

    result = fold(ours, "--keep-workflow-table", "--batch-size", "4")

    assert result.exit_code == 0, result.output
    assert_folded_as_expected(ours, expected)
    with connect(ours) as conn:
        assert not conn.execute("SELECT to_regclass('ponos_workflow')").fetchone()[0]
        kept = {row[0]: tuple(row[1:]) for row in conn.execute(
            sql.SQL("SELECT id, farm_id, created, updated, finished, process_id FROM {}").format(
                sql.Identifier(KEPT_WORKFLOW_TABLE)))}
    assert kept == workflows
    # Apart from the kept table, the schema is the naive fold's.
    ours_schema, naive_schema = describe_schema_of(ours), describe_schema_of(naive)
    assert without_table(ours_schema, KEPT_WORKFLOW_TABLE) == without_table(naive_schema, KEPT_WORKFLOW_TABLE)
    assert_second_run_changes_nothing(ours, "--keep-workflow-table")


# --- preflight -----------------------------------------------------------------------------

def test_orphans_are_refused_listed_and_nothing_changes(make_database, tmp_path):
    dsn = seeded_database(make_database, processes=20, seed=3)
    orphans = make_orphans(dsn)
    before = snapshot(dsn)

    for args in ([], ["--dry-run"]):
        result = fold(dsn, "--report", str(tmp_path / "report.json"), *args)
        assert result.exit_code == 1, result.output
        assert all(workflow in result.stderr for workflow in orphans["workflows"])
        report = json.loads((tmp_path / "report.json").read_text())
        assert {item["id"] for item in report["items"]["orphan_workflows"]} == orphans["workflows"]
        assert set(report["items"]["orphan_tasks"]) == set(orphans["tasks"])
        assert report["errors"]
        assert snapshot(dsn) == before
    with connect(dsn) as conn:
        assert schema.schema_state(conn) == schema.LEGACY


def test_orphan_tasks_deleted_on_request_with_their_s3_keys_reported(twins, tmp_path):
    naive, ours = twins(processes=20, seed=3)
    orphans = make_orphans(ours)
    expected = legacy_expectations(ours)  # orphan tasks have no process, so they are not expected

    result = fold(ours, "--orphan-workflows", "delete", "--batch-size", "1", "--report", str(tmp_path / "report.json"))

    assert result.exit_code == 0, result.output
    assert_folded_as_expected(ours, expected)
    with connect(ours) as conn:
        assert conn.execute("SELECT count(*) FROM ponos_artifact WHERE task_id = ANY(%s::uuid[])",
                            (list(orphans["tasks"]),)).fetchone()[0] == 0
    report = json.loads((tmp_path / "report.json").read_text())
    deleted = {item["task_id"]: item for item in report["items"]["deleted_orphan_tasks"]}
    assert set(deleted) == set(orphans["tasks"])
    workflow = str(orphans["workflow"])
    for task_id, run in orphans["tasks"].items():
        assert deleted[task_id]["log"] == {"legacy_key": keys.legacy_log_key(workflow, run, task_id),
                                           "key": keys.log_key(task_id)}
    listed = {key for item in deleted.values() for key in item["artifacts"]["legacy_keys"]}
    assert listed == {keys.legacy_artifact_key(workflow, t, p) for t, p in orphans["artifacts"]}
    assert {item["id"] for item in report["items"]["orphan_workflows"]} == orphans["workflows"]

    # The outbox keeps them: a second run changes nothing and reports them again.
    assert_second_run_changes_nothing(ours)
    again = fold(ours, "--report", "-")
    assert {item["task_id"] for item in json.loads(again.stdout)["items"]["deleted_orphan_tasks"]} == set(deleted)


def test_schema_neither_legacy_nor_folded_is_refused(make_database):
    empty = make_database(schema=None)
    result = fold(empty)
    assert result.exit_code == 2 and "neither" in result.stderr  # the wrong database: configuration

    odd = seeded_database(make_database, processes=3, seed=1)
    with connect(odd) as conn:  # half-folded by someone else: process_id added as text
        conn.execute("ALTER TABLE ponos_task ADD COLUMN process_id text")
    before = snapshot(odd)
    result = fold(odd)
    assert result.exit_code == 1 and "process_id" in result.stderr
    assert snapshot(odd) == before


def test_dry_run_prints_the_plan_and_changes_nothing(make_database):
    dsn = seeded_database(make_database, processes=15, seed=4)
    tasks = legacy_expectations(dsn)["tasks"]
    before = snapshot(dsn)

    result = fold(dsn, "--dry-run")

    assert result.exit_code == 0, result.output
    assert snapshot(dsn) == before
    for phase in ("add_columns", "backfill_tasks", "index_task_process", "task_process_not_null", "verify",
                  "drop_workflow"):
        assert phase in result.stdout
    assert f"{tasks} rows" in result.stdout
    assert "CREATE INDEX CONCURRENTLY ponos_task_process_id" in result.stdout
    assert "DROP TABLE ponos_workflow" in result.stdout

    assert fold(dsn, "--batch-size", "5").exit_code == 0
    assert "nothing to do" in fold(dsn, "--dry-run").stdout


def test_verification_names_the_rows_and_objects_that_disagree(make_database):
    dsn = seeded_database(make_database, processes=6, seed=14)
    with connect(dsn) as conn:
        conn.execute("ALTER TABLE process_process ADD COLUMN farm_id uuid, ADD COLUMN started timestamptz, "
                     "ADD COLUMN finished timestamptz")
        conn.execute("ALTER TABLE ponos_task ADD COLUMN process_id uuid")
        conn.execute("UPDATE process_process p SET farm_id = w.farm_id, started = w.created, finished = w.finished "
                     "FROM ponos_workflow w WHERE w.id = p.workflow_id")
        conn.execute("UPDATE ponos_task t SET process_id = p.id FROM process_process p WHERE p.workflow_id = t.workflow_id")
        wrong_task, other_process = conn.execute(
            "SELECT t.id, p.id FROM ponos_task t JOIN process_process p ON p.workflow_id <> t.workflow_id "
            "LIMIT 1").fetchone()
        conn.execute("UPDATE ponos_task SET process_id = %s WHERE id = %s", (other_process, wrong_task))
        wrong_process = conn.execute("UPDATE process_process SET started = started - interval '1 day' "
                                     "WHERE id = (SELECT id FROM process_process WHERE workflow_id IS NOT NULL "
                                     "LIMIT 1) RETURNING id").fetchone()[0]

        with pytest.raises(consistency.VerificationFailed) as failed:
            consistency.check(conn, keep_mapping=False)
    message = str(failed.value)
    assert str(wrong_task) in message and str(wrong_process) in message
    assert f"constraint {schema.TASK_PROCESS_FK} is missing" in message
    assert f"index {schema.TASK_PROCESS_INDEX} is missing" in message


# --- bad input ---------------------------------------------------------------------------

def assert_one_line_config_error(result, secret: str | None = None, exit_code: int = 2) -> None:
    assert result.exit_code == exit_code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    if secret:
        assert secret not in result.output


def test_unreachable_database_is_a_one_line_error_without_the_password():
    secret = "Sup3r-s3cret-pw"
    result = fold(f"postgresql://fold_user:{secret}@127.0.0.1:1/ponos")
    assert_one_line_config_error(result, secret, exit_code=75)  # nobody answers: run again later
    assert "127.0.0.1" in result.stderr


@pytest.fixture
def password_role(pg_admin_dsn, legacy_dsn):
    """A role that must give its password (a pg_hba.conf line for it alone), else skip."""
    with connect(pg_admin_dsn) as admin:
        try:
            hba = Path(admin.execute("SHOW hba_file").fetchone()[0])
        except psycopg.Error:
            pytest.skip("cannot read the server's hba_file setting")
        if not os.access(hba, os.W_OK):
            pytest.skip("the server's pg_hba.conf is not writable from the tests")
        role, password = f"fold_pw_{uuid.uuid4().hex[:8]}", f"Right-{uuid.uuid4().hex}"
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        original = hba.read_text()
        hba.write_text(f"local all {role} scram-sha-256\nhost all {role} all scram-sha-256\n" + original)
        admin.execute("SELECT pg_reload_conf()")
    try:
        wrong = make_conninfo(legacy_dsn, user=role, password="not-the-password")

        def password_checked() -> bool:
            try:
                psycopg.connect(wrong).close()
                return False
            except psycopg.OperationalError:
                return True
        wait_for(password_checked, timeout=10, interval=0.1, what="pg_hba.conf reload")
        yield role, password
    finally:
        hba.write_text(original)
        with connect(pg_admin_dsn) as admin:
            admin.execute("SELECT pg_reload_conf()")
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_wrong_password_is_a_one_line_error_without_the_password(password_role, legacy_dsn):
    role, password = password_role
    wrong = "Wr0ng-" + password[::-1]
    before = snapshot(legacy_dsn)
    result = fold(make_conninfo(legacy_dsn, user=role, password=wrong))
    assert_one_line_config_error(result, wrong)
    assert password not in result.output
    assert snapshot(legacy_dsn) == before


@pytest.fixture
def unprivileged_role(pg_admin_dsn, legacy_dsn):
    """A login role like the application's: reads and writes rows, owns nothing."""
    role = f"fold_app_{uuid.uuid4().hex[:8]}"
    with connect(pg_admin_dsn) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    with connect(legacy_dsn) as conn:
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(
            sql.Identifier(role)))
    yield make_conninfo(legacy_dsn, user=role)
    with connect(legacy_dsn) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with connect(pg_admin_dsn) as admin:
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_a_role_without_ownership_is_refused_before_any_change(unprivileged_role, legacy_dsn):
    with connect(legacy_dsn) as conn:
        seed.seed_database(conn, seed.SeedSpec(processes=5, seed=9, now=SEED_NOW))
    before = snapshot(legacy_dsn)
    for args in ([], ["--dry-run"]):
        result = fold(unprivileged_role, *args)
        assert_one_line_config_error(result)
        assert "not the owner of ponos_task" in result.stderr
    assert snapshot(legacy_dsn) == before


def test_bad_options_are_usage_errors(legacy_dsn):
    assert fold(legacy_dsn, "--batch-size", "0").exit_code == 2
    assert fold(legacy_dsn, "--lock-timeout", "soon").exit_code == 2
    assert fold(legacy_dsn, "--orphans", "ignore").exit_code == 2


# --- one fold at a time ---------------------------------------------------------------------

@contextmanager
def holding(dsn: str, statement: str, isolation: str = "READ COMMITTED"):
    """A transaction kept open with ``statement`` run in it: the application holding a lock."""
    conn = psycopg.connect(dsn)
    try:
        conn.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        conn.execute(statement)
        yield conn
    finally:
        conn.rollback()
        conn.close()


def test_a_second_fold_while_one_runs_exits_3(make_database):
    dsn = seeded_database(make_database, processes=10, seed=6)
    with connect(dsn) as watcher:
        # The application holds ponos_task: the first fold waits in add_columns, holding the fold lock.
        with holding(dsn, "SELECT count(*) FROM ponos_task"):
            first = fold_process(dsn, "--lock-timeout", "200ms", "--lock-retries", "200")
            try:
                wait_for(lambda: watcher.execute(
                    "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid::text::bigint = %s",
                    (FOLD_LOCK_KEY & 0xFFFFFFFF,)).fetchone(), what="the first fold's lock")
                second = fold(dsn)
                assert second.exit_code == 3, second.output
                assert "another workflow fold is running" in second.stderr
                assert first.poll() is None  # the first one is still waiting, not failed
            except BaseException:
                first.kill()
                raise
        out, err = first.communicate(timeout=60)
        assert first.returncode == 0, err
        assert schema.schema_state(watcher) == schema.FOLDED


def test_a_lock_the_application_never_releases_fails_after_the_retries_and_a_rerun_resumes(make_database):
    dsn = seeded_database(make_database, processes=10, seed=13)
    expected = legacy_expectations(dsn)
    with holding(dsn, "SELECT count(*) FROM ponos_task"):
        started = time.monotonic()
        result = fold(dsn, "--lock-timeout", "50ms", "--lock-retries", "3")
        assert result.exit_code == 1, result.output
        assert "no lock after 3 attempts" in result.stderr
        assert time.monotonic() - started < 10
        with connect(dsn) as conn:
            assert conn.execute("SELECT to_regclass('ponos_workflow') IS NOT NULL").fetchone()[0]
            assert not conn.execute("SELECT count(*) FROM information_schema.columns "
                                    "WHERE table_name = 'ponos_task' AND column_name = 'process_id'").fetchone()[0]
    assert fold(dsn).exit_code == 0
    assert_folded_as_expected(dsn, expected)


def test_deferred_foreign_key_checks_fire_before_a_transaction_alters_a_table(legacy_dsn):
    """Legacy foreign keys are DEFERRABLE INITIALLY DEFERRED: an ALTER after DML in one transaction
    fails on the pending checks, unless they fire first, as in every transaction of the fold."""
    with connect(legacy_dsn) as conn:
        seed.seed_database(conn, seed.SeedSpec(processes=2, seed=1, now=SEED_NOW))
        task = conn.execute("SELECT id FROM ponos_task LIMIT 1").fetchone()[0]

        def insert_then_alter(c: psycopg.Connection) -> None:
            c.execute("INSERT INTO ponos_artifact (id, task_id, path, size, created, updated) "
                      "VALUES (%s, %s, %s, 1, now(), now())", (uuid.uuid4(), task, f"p-{uuid.uuid4()}"))
            c.execute("ALTER TABLE ponos_artifact ALTER COLUMN content_type SET DEFAULT 'text/plain'")

        with pytest.raises(psycopg.errors.ObjectInUse):  # the trap, in a plain transaction
            with conn.transaction():
                insert_then_alter(conn)
        Ddl(conn, LockPolicy(), logging.getLogger("test")).transaction("insert then alter", insert_then_alter)
        assert conn.execute("SELECT count(*) FROM ponos_artifact WHERE task_id = %s AND path LIKE 'p-%%'",
                            (task,)).fetchone()[0] == 1


# --- online: the application keeps working --------------------------------------------------

class Application(threading.Thread):
    """Reads and writes like Ponos does, legacy shape until the columns go, folded shape after.

    Every statement is timed; ``expect`` collects what the fold must have carried over.
    """

    def __init__(self, dsn: str, role: str, stop: threading.Event, fold_running: threading.Event):
        super().__init__(name=f"app-{role}", daemon=True)
        self.dsn, self.role, self.stop, self.fold_running = dsn, role, stop, fold_running
        self.max_wait = 0.0
        self.slowest = ""
        self.errors: list[str] = []
        self.during_fold = 0
        self.legacy_writes_during_fold = 0
        self.started_processes: dict = {}  # process id -> (farm, started, finished, task ids)
        self.workflows: dict = {}  # process id -> its workflow (None when started after the fold)
        self.rng = random.Random(role)

    def timed(self, conn, query, params=None):
        start = time.monotonic()
        cursor = conn.execute(query, params)
        elapsed = time.monotonic() - start
        if elapsed > self.max_wait:
            self.max_wait, self.slowest = elapsed, query
        return cursor

    def run(self) -> None:
        with connect(self.dsn) as conn:
            tasks = [r[0] for r in conn.execute("SELECT id FROM ponos_task")]
            processes = [r[0] for r in conn.execute("SELECT id FROM process_process")]
            self.unstarted = [r[0] for r in conn.execute("SELECT id FROM process_process WHERE workflow_id IS NULL")]
            self.farms = [r[0] for r in conn.execute("SELECT id FROM ponos_farm")]
            folded = False
            while not self.stop.is_set():
                running = self.fold_running.is_set()
                try:
                    if self.role == "reader":
                        self.timed(conn, "SELECT id, state, expiry FROM ponos_task WHERE id = %s",
                                   (self.rng.choice(tasks),)).fetchall()
                        self.timed(conn, "SELECT id, name, updated FROM process_process WHERE id = %s",
                                   (self.rng.choice(processes),)).fetchall()
                        self.timed(conn, "SELECT count(*) FROM ponos_task WHERE expiry < now()").fetchall()
                    else:
                        self.timed(conn, "UPDATE ponos_task SET state = 'running', updated = now() WHERE id = %s",
                                   (self.rng.choice(tasks),))
                        self.timed(conn, "UPDATE process_process SET updated = now() WHERE id = %s",
                                   (self.rng.choice(processes),))
                        if self.unstarted:
                            self.start_process(conn, folded)
                        if self.workflows:
                            self.retry_task(conn, folded)
                        if not folded and running:
                            self.legacy_writes_during_fold += 1
                except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable):
                    folded = True  # the new application version is deployed
                    continue
                except psycopg.Error as exc:
                    self.errors.append(f"{type(exc).__name__}: {' '.join(str(exc).split())}")
                if running:
                    self.during_fold += 1
                time.sleep(0.005)

    def start_process(self, conn, folded: bool) -> None:
        """Start a process and finish it, in one transaction, the way the application's version does.

        Legacy: the workflow, its tasks, then the process points at the workflow (Ponos' order,
        which a NOT NULL process_id enforced before the drop would break), then it finishes.
        """
        process = self.unstarted[-1]
        farm = self.rng.choice(self.farms)
        started = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=self.rng.randint(1, 999))
        finished = started + timedelta(minutes=5)
        task_ids = [uuid.uuid4(), uuid.uuid4()]
        with conn.transaction():
            if folded:
                self.timed(conn, "UPDATE process_process SET farm_id = %s, started = %s WHERE id = %s",
                           (farm, started, process))
                for n, task in enumerate(task_ids):
                    self.insert_task(conn, task, 0, f"task-{n}", "process_id", process)
                self.timed(conn, "UPDATE process_process SET finished = %s WHERE id = %s", (finished, process))
            else:
                workflow = uuid.uuid4()
                self.timed(conn, "INSERT INTO ponos_workflow (id, farm_id, created, updated) VALUES (%s, %s, %s, %s)",
                           (workflow, farm, started, started))
                for n, task in enumerate(task_ids):
                    self.insert_task(conn, task, 0, f"task-{n}", "workflow_id", workflow)
                self.timed(conn, "UPDATE process_process SET workflow_id = %s WHERE id = %s", (workflow, process))
                self.timed(conn, "UPDATE ponos_workflow SET finished = %s WHERE id = %s", (finished, workflow))
        self.unstarted.pop()
        self.started_processes[process] = (farm, started, finished, task_ids)
        self.workflows[process] = None if folded else workflow

    def retry_task(self, conn, folded: bool) -> None:
        """Add a task (a retry, run 1) to a process started earlier."""
        process, workflow = self.rng.choice(list(self.workflows.items()))
        if workflow is None and not folded:
            return
        task = uuid.uuid4()
        self.insert_task(conn, task, 1, f"retry-{task.hex[:8]}", *(("process_id", process) if folded
                                                                    else ("workflow_id", workflow)))
        self.started_processes[process][3].append(task)

    def insert_task(self, conn, task, run: int, slug: str, column: str, owner) -> None:
        self.timed(conn, f"INSERT INTO ponos_task (id, run, depth, slug, image, {column}, created, updated, expiry, "
                         "token) VALUES (%s, %s, 0, %s, 'img', %s, now(), now(), now() + interval '30 days', %s)",
                   (task, run, slug, owner, uuid.uuid4().hex))


@pytest.mark.slow
@pytest.mark.parametrize("keep", [False, True], ids=["drop", "keep-workflow-table"])
def test_the_application_keeps_reading_and_writing_during_the_fold(twins, keep):
    naive, ours = twins(processes=400, unstarted_processes=400, tasks_per_process=(5, 15), seed=12)
    expected = legacy_expectations(ours)
    stop, fold_running = threading.Event(), threading.Event()
    apps = [Application(ours, role, stop, fold_running) for role in ("reader", "writer")]
    for app in apps:
        app.start()
    time.sleep(0.3)
    fold_running.set()
    try:
        # Small batches: the fold lasts long enough for the application to do real work meanwhile.
        result = fold(ours, "--batch-size", "10", *(["--keep-workflow-table"] if keep else []))
    finally:
        fold_running.clear()
        time.sleep(0.3)
        stop.set()
        for app in apps:
            app.join(timeout=30)

    assert result.exit_code == 0, result.output
    reader, writer = apps
    assert reader.errors == [] and writer.errors == []
    for app in apps:
        assert app.max_wait < 2.0, f"{app.role} waited {app.max_wait:.2f}s on: {app.slowest}"
        assert app.during_fold >= 20, f"{app.role} barely ran during the fold"
    assert writer.legacy_writes_during_fold >= 3, "no process was started the legacy way during the fold"

    # Rows that existed before the fold, and rows the application wrote during it.
    with connect(ours) as conn:
        task_process = dict(conn.execute("SELECT id, process_id FROM ponos_task"))
        columns = {row[0]: tuple(row[1:]) for row in conn.execute(
            "SELECT id, farm_id, started, finished FROM process_process")}
    for task, process in expected["task_process"].items():
        assert task_process[task] == process
    for process, (farm, started, finished, task_ids) in writer.started_processes.items():
        assert columns[process] == (farm, started, finished)
        assert all(task_process[task] == process for task in task_ids)
    assert (without_table(describe_schema_of(ours), KEPT_WORKFLOW_TABLE)
            == without_table(describe_schema_of(naive), KEPT_WORKFLOW_TABLE))
    if keep:  # the kept table maps every workflow, those started during the fold too, to its process
        with connect(ours) as conn:
            kept = dict(conn.execute(sql.SQL("SELECT id, process_id FROM {}").format(
                sql.Identifier(KEPT_WORKFLOW_TABLE))))
        started_legacy = {w: p for p, w in writer.workflows.items() if w is not None}
        assert started_legacy and all(kept[w] == p for w, p in started_legacy.items())
        assert sum(1 for p in kept.values() if p is not None) == len(expected["process_columns"]) - len(
            expected["unstarted"]) + len(started_legacy)
    assert_second_run_changes_nothing(ours, *(["--keep-workflow-table"] if keep else []))


# --- SIGKILL and resume ------------------------------------------------------------------------

def kill_and_settle(process: subprocess.Popen, watcher: psycopg.Connection, database: str, release) -> str:
    """SIGKILL the fold, let the application go, wait until the fold's session is gone; its stderr."""
    process.send_signal(signal.SIGKILL)
    _, err = process.communicate(timeout=10)
    release()
    wait_for(lambda: not fold_sessions(watcher, database), timeout=30, what="the killed fold's session to end")
    return err


def terminate_fold_sessions(watcher: psycopg.Connection, database: str) -> None:
    watcher.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = %s AND datname = %s", (FOLD_APP, database))


def fold_waits_on_a_lock(watcher: psycopg.Connection, database: str, statement: str = "") -> bool:
    return any(wait == "Lock" and statement in query for _, _, wait, query in fold_sessions(watcher, database))


def test_sigkill_at_several_points_then_resume(twins):
    naive, ours = twins(processes=300, tasks_per_process=(1, 9), seed=21)
    expected = legacy_expectations(ours)
    database = dbname(ours)
    with connect(ours) as watcher:
        task_ids = sorted(expected["task_process"], key=lambda t: t.bytes)

        # 1. Mid-backfill: once the columns are there (adding them needs the whole table), the
        #    application locks a row near the end of the key order; the batch holding it waits.
        run = fold_process(ours, "--batch-size", "5", "--lock-timeout", "30s")
        wait_for(lambda: watcher.execute("SELECT 1 FROM pg_trigger WHERE tgname = 'ponos_fold_sync_workflow'").fetchone(),
                 what="the sync triggers")
        late_task = task_ids[len(task_ids) * 9 // 10]
        with holding(ours, f"SELECT id FROM ponos_task WHERE id = '{late_task}' FOR UPDATE") as row:
            wait_for(lambda: fold_waits_on_a_lock(watcher, database, "SET process_id"),
                     what="the backfill to wait on the held row")
            kill_and_settle(run, watcher, database, row.rollback)
        done, total = watcher.execute("SELECT count(process_id), count(*) FROM ponos_task").fetchone()
        assert 0 < done < total
        assert schema.schema_state(watcher) == schema.PARTIAL

        # 2. Mid CREATE INDEX CONCURRENTLY: an old snapshot makes it wait, its index INVALID; the
        #    session dies (client SIGKILLed, then its server process terminated): the index stays INVALID.
        with holding(ours, "SELECT txid_current()", isolation="REPEATABLE READ") as old_snapshot:
            run = fold_process(ours, "--batch-size", "10")
            wait_for(lambda: watcher.execute(
                "SELECT 1 FROM pg_index WHERE indexrelid = to_regclass(%s) AND NOT indisvalid",
                (schema.PROCESS_FARM_INDEX,)).fetchone() and fold_waits_on_a_lock(watcher, database, "CONCURRENTLY"),
                what="the index build to wait on the old snapshot")

            def terminate_then_release() -> None:
                terminate_fold_sessions(watcher, database)
                old_snapshot.rollback()
            kill_and_settle(run, watcher, database, terminate_then_release)
        assert watcher.execute("SELECT count(*) FROM ponos_task WHERE process_id IS NULL").fetchone()[0] == 0
        assert watcher.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                               (schema.PROCESS_FARM_INDEX,)).fetchone() == (False,)

        # 3. The unique index built, not yet adopted: a long reader of ponos_task holds it off.
        with holding(ours, "SELECT count(*) FROM ponos_task") as reader:
            run = fold_process(ours, "--lock-timeout", "30s")
            wait_for(lambda: fold_waits_on_a_lock(watcher, database, "USING INDEX"),
                     what="the unique constraint to wait on the reader")

            def terminate_then_release() -> None:  # else the waiting statement completes once released
                terminate_fold_sessions(watcher, database)
                reader.rollback()
            err = kill_and_settle(run, watcher, database, terminate_then_release)
        assert "INVALID" in err  # it found the leftover index and rebuilt it
        assert catalog_state(watcher) == {"farm index valid": True, "task fk valid": True,
                                          "unique index": True, "unique constraint": False}

        # 4. Folded, NOT NULL not yet set: the drop waits on a reader of ponos_workflow; a session
        #    queued behind it for a SHARE lock on ponos_task holds off what follows the drop.
        with holding(ours, "SELECT count(*) FROM ponos_workflow") as workflow_reader:
            run = fold_process(ours, "--lock-timeout", "30s")
            wait_for(lambda: fold_waits_on_a_lock(watcher, database, "LOCK TABLE"), what="the drop to wait")
            queued = threading.Event()
            release_share = threading.Event()

            def share_lock() -> None:
                with psycopg.connect(ours) as conn:
                    queued.set()
                    conn.execute("LOCK TABLE ponos_task IN SHARE MODE")
                    release_share.wait(60)
                    conn.rollback()
            sharer = threading.Thread(target=share_lock, daemon=True)
            sharer.start()
            queued.wait(10)
            wait_for(lambda: watcher.execute(
                "SELECT 1 FROM pg_locks WHERE relation = 'ponos_task'::regclass AND mode = 'ShareLock' AND NOT granted"
            ).fetchone(), what="the SHARE lock to queue")
            workflow_reader.rollback()
            wait_for(lambda: schema.schema_state(watcher) == schema.FOLDED and fold_waits_on_a_lock(watcher, database),
                     what="the fold to wait after the drop")
            kill_and_settle(run, watcher, database, release_share.set)
            sharer.join(10)
        assert schema.schema_state(watcher) == schema.FOLDED
        assert watcher.execute("SELECT attnotnull FROM pg_attribute WHERE attrelid = 'ponos_task'::regclass "
                               "AND attname = 'process_id'").fetchone() == (False,)

    # 5. The resumed run completes; the result is the naive fold's, and a further run is a no-op.
    run = fold_process(ours)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert snapshot(ours) == snapshot(naive)
    assert_folded_as_expected(ours, expected)
    assert_second_run_changes_nothing(ours)


def catalog_state(conn: psycopg.Connection) -> dict:
    def valid_index(name):
        return conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (name,)).fetchone()
    return {
        "farm index valid": valid_index(schema.PROCESS_FARM_INDEX) == (True,),
        "task fk valid": conn.execute("SELECT convalidated FROM pg_constraint WHERE conname = %s",
                                      (schema.TASK_PROCESS_FK,)).fetchone() == (True,),
        "unique index": valid_index(schema.TASK_UNIQUE_PROCESS_RUN_SLUG) == (True,),
        "unique constraint": conn.execute("SELECT 1 FROM pg_constraint WHERE conname = %s",
                                          (schema.TASK_UNIQUE_PROCESS_RUN_SLUG,)).fetchone() is not None,
    }
