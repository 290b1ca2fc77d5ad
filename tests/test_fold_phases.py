"""db-fold-workflow --phase expand | contract, --rollback, --record-django-migration.

The expanded schema must serve both releases at once: what each writes fills the other's
columns (synchronously, in its own transaction). The contract after an expand ends where the
one-go fold (and the naive fold) ends. The rollback brings the legacy schema back exactly,
keeping every row either release wrote. Each is idempotent; the rollback resumes after
SIGKILL; after the contract the rollback refuses.
"""

from __future__ import annotations

import signal
import time
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from ponoskit import schema
from tests.test_db_fold_workflow import (assert_second_run_changes_nothing, connect, describe_schema, fold,
                                         fold_process, seeded_database, snapshot, wait_for)

NOW = datetime(2026, 11, 1, tzinfo=timezone.utc)


@pytest.fixture
def legacy(make_database):
    return seeded_database(make_database, processes=40, unstarted_processes=5, seed=31)


def _farm(conn) -> str:
    return conn.execute("SELECT id FROM ponos_farm ORDER BY id LIMIT 1").fetchone()[0]


def _new_release_starts_a_process(conn, farm) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """What the new release's code does: a process with farm and start, tasks with process_id."""
    process, tasks = uuid.uuid4(), [uuid.uuid4(), uuid.uuid4()]
    with conn.transaction():
        conn.execute("INSERT INTO process_process (id, mode, creator_id, created, updated, farm_id, started) "
                     "VALUES (%s, 'workers', 1, %s, %s, %s, %s)", (process, NOW, NOW, farm, NOW))
        for n, task in enumerate(tasks):
            conn.execute("INSERT INTO ponos_task (id, run, depth, slug, image, process_id, created, updated, expiry, "
                         "token) VALUES (%s, 0, 0, %s, 'img', %s, %s, %s, %s, %s)",
                         (task, f"t{n}", process, NOW, NOW, NOW + timedelta(days=9), uuid.uuid4().hex))
    return process, tasks


def _legacy_release_starts_a_process(conn, farm) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    process, workflow, task = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with conn.transaction():
        conn.execute("INSERT INTO process_process (id, mode, creator_id, created, updated) "
                     "VALUES (%s, 'workers', 1, %s, %s)", (process, NOW, NOW))
        conn.execute("INSERT INTO ponos_workflow (id, farm_id, created, updated) VALUES (%s, %s, %s, %s)",
                     (workflow, farm, NOW, NOW))
        conn.execute("INSERT INTO ponos_task (id, run, depth, slug, image, workflow_id, created, updated, expiry, token) "
                     "VALUES (%s, 0, 0, 't', 'img', %s, %s, %s, %s, %s)",
                     (task, workflow, NOW, NOW, NOW + timedelta(days=9), uuid.uuid4().hex))
        conn.execute("UPDATE process_process SET workflow_id = %s, updated = %s WHERE id = %s", (workflow, NOW, process))
    return process, workflow, task


def test_the_expanded_schema_serves_both_releases_at_once(legacy):
    assert fold(legacy, "--phase", "expand").exit_code == 0
    with connect(legacy) as conn:
        assert schema.schema_state(conn) == schema.PARTIAL
        farm = _farm(conn)
        # The new release: its process gets a workflow (its own id), its tasks that workflow.
        process, tasks = _new_release_starts_a_process(conn, farm)
        workflow, = conn.execute("SELECT workflow_id FROM process_process WHERE id = %s", (process,)).fetchone()
        assert workflow == process
        assert conn.execute("SELECT farm_id, created, finished FROM ponos_workflow WHERE id = %s",
                            (workflow,)).fetchone() == (farm, NOW, None)
        assert {r[0] for r in conn.execute("SELECT workflow_id FROM ponos_task WHERE id = ANY(%s)", (tasks,))} \
            == {workflow}
        # ...and what a legacy pod reads of it: a started process with its tasks.
        legacy_view = conn.execute("SELECT count(*) FROM ponos_task t JOIN process_process p "
                                   "ON p.workflow_id = t.workflow_id WHERE p.id = %s", (process,)).fetchone()[0]
        assert legacy_view == 2
        # The new release finishes it: the legacy view follows.
        done = NOW + timedelta(hours=1)
        conn.execute("UPDATE process_process SET finished = %s, updated = now() WHERE id = %s", (done, process))
        assert conn.execute("SELECT finished FROM ponos_workflow WHERE id = %s", (workflow,)).fetchone()[0] == done
        # The legacy release, as before: its writes fill the new columns.
        legacy_process, legacy_workflow, legacy_task = _legacy_release_starts_a_process(conn, farm)
        assert conn.execute("SELECT process_id FROM ponos_task WHERE id = %s", (legacy_task,)).fetchone()[0] \
            == legacy_process
        assert conn.execute("SELECT farm_id, started FROM process_process WHERE id = %s",
                            (legacy_process,)).fetchone() == (farm, NOW)
        conn.execute("UPDATE ponos_workflow SET finished = %s WHERE id = %s", (done, legacy_workflow))
        assert conn.execute("SELECT finished FROM process_process WHERE id = %s",
                            (legacy_process,)).fetchone()[0] == done
    assert_second_run_changes_nothing(legacy, "--phase", "expand")


def test_the_contract_after_the_expand_ends_where_the_one_go_fold_ends(make_database):
    one_go = seeded_database(make_database, processes=25, seed=32)
    phased = seeded_database(make_database, processes=25, seed=32)
    assert fold(one_go).exit_code == 0
    assert fold(phased, "--phase", "expand").exit_code == 0
    assert fold(phased, "--phase", "contract").exit_code == 0
    with connect(one_go) as a, connect(phased) as b:
        assert describe_schema(a) == describe_schema(b)
    assert snapshot(one_go)["data"] == snapshot(phased)["data"]
    assert_second_run_changes_nothing(phased, "--phase", "contract")


def test_the_contract_refuses_an_unfinished_expand(legacy):
    before = snapshot(legacy)
    result = fold(legacy, "--phase", "contract")
    assert result.exit_code == 2 and "--phase expand" in result.stderr
    assert snapshot(legacy) == before


def test_the_rollback_restores_the_legacy_schema_and_keeps_every_row(legacy):
    with connect(legacy) as conn:
        original = describe_schema(conn)
    assert fold(legacy, "--phase", "expand").exit_code == 0
    with connect(legacy) as conn:
        farm = _farm(conn)
        process, tasks = _new_release_starts_a_process(conn, farm)
        legacy_process, _, legacy_task = _legacy_release_starts_a_process(conn, farm)
    assert fold(legacy, "--rollback").exit_code == 0
    with connect(legacy) as conn:
        assert describe_schema(conn) == original  # nothing of the expand left
        # Rows both releases wrote stay, in the shape the legacy release reads.
        assert conn.execute("SELECT count(*) FROM ponos_task WHERE id = ANY(%s) AND workflow_id = %s",
                            (tasks, process)).fetchone()[0] == 2
        assert conn.execute("SELECT workflow_id IS NOT NULL FROM process_process WHERE id = %s",
                            (legacy_process,)).fetchone()[0]
        assert conn.execute("SELECT count(*) FROM ponos_task WHERE id = %s", (legacy_task,)).fetchone()[0] == 1
    assert_second_run_changes_nothing(legacy, "--rollback")
    # And the expand can be done again.
    assert fold(legacy, "--phase", "expand").exit_code == 0


def test_the_rollback_resumes_after_sigkill(legacy):
    assert fold(legacy, "--phase", "expand").exit_code == 0
    with connect(legacy) as blocker:
        # A long transaction holds ponos_task: the rollback's DROP COLUMN waits and retries.
        blocker.execute("BEGIN")
        blocker.execute("SELECT count(*) FROM ponos_task")
        proc = fold_process(legacy, "--rollback", "--lock-timeout", "100ms", "--lock-retries", "50")
        wait_for(lambda: _waiting_on_a_lock(legacy), what="the rollback to wait on ponos_task")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        blocker.execute("ROLLBACK")
    with connect(legacy) as conn:
        assert schema.schema_state(conn) == schema.PARTIAL  # half undone
    time.sleep(0.5)  # the killed session's lock wait ends with its statement
    result = fold(legacy, "--rollback")
    assert result.exit_code == 0, result.output
    with connect(legacy) as conn:
        assert schema.schema_state(conn) == schema.LEGACY


def _waiting_on_a_lock(dsn: str) -> bool:
    """The rollback has undone what it could without ponos_task and waits for its lock."""
    with connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND query ILIKE '%%ponos_task%%'").fetchone()[0] > 0


def test_the_rollback_refuses_after_the_contract(legacy):
    assert fold(legacy).exit_code == 0
    before = snapshot(legacy)
    result = fold(legacy, "--rollback")
    assert result.exit_code == 2 and "contract has run" in result.stderr
    assert snapshot(legacy) == before


def test_the_rollback_dry_run_prints_what_it_would_undo(legacy):
    assert fold(legacy, "--phase", "expand").exit_code == 0
    before = snapshot(legacy)
    result = fold(legacy, "--rollback", "--dry-run")
    assert result.exit_code == 0
    assert "DROP TRIGGER" in result.stdout and "DROP COLUMN" in result.stdout and "to do" in result.stdout
    assert snapshot(legacy) == before


@pytest.mark.parametrize("table, row, exit_code", [(True, False, 0), (False, False, 2), (True, True, 2)],
                         ids=["recorded", "no-django-table", "already-recorded"])
def test_the_contract_records_the_new_releases_django_migration(legacy, table, row, exit_code):
    with connect(legacy) as conn:
        if table:
            conn.execute("CREATE TABLE django_migrations (id serial PRIMARY KEY, app varchar(255) NOT NULL, "
                         "name varchar(255) NOT NULL, applied timestamptz NOT NULL)")
        if row:
            conn.execute("INSERT INTO django_migrations (app, name, applied) VALUES ('ponos', '0042_x', now())")
    assert fold(legacy, "--phase", "expand").exit_code == 0
    before = snapshot(legacy)
    result = fold(legacy, "--phase", "contract", "--record-django-migration", "ponos", "0042_x")
    assert result.exit_code == exit_code, result.output
    with connect(legacy) as conn:
        if exit_code == 0:
            assert schema.schema_state(conn) == schema.FOLDED
            assert conn.execute("SELECT count(*) FROM django_migrations WHERE app = 'ponos' AND name = '0042_x'"
                                ).fetchone()[0] == 1
    if exit_code:
        assert snapshot(legacy) == before  # refused before any change


def test_a_connection_that_keeps_no_session_is_refused_nothing_else(legacy):
    """A direct connection is a session: the check must not refuse it (PgBouncer itself is
    not to be had here; the README says what it does)."""
    from ponoskit.pgsession import require_session
    with psycopg.connect(legacy, autocommit=True) as conn:
        require_session(conn)
