"""db-fold-workflow --phase expand | contract, --rollback, --record-django-migration.

The expanded schema must serve both releases at once: what each writes fills the other's
columns (synchronously, in its own transaction). The contract after an expand ends where the
one-go fold (and the naive fold) ends. The rollback brings the legacy schema back exactly,
keeping every row either release wrote. Each is idempotent; the rollback resumes after
SIGKILL; after the contract the rollback refuses.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Optional

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from ponoskit import schema
from tests.fixtures.fold import (assert_second_run_changes_nothing, connect, describe_schema, fold,
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


class TransactionPool:
    """A PostgreSQL pooler in transaction mode, as PgBouncer's ``pool_mode = transaction``
    (PgBouncer itself is not to be had here): each client gets ``servers`` server connections
    of its own and, every time the one serving it is idle again (ReadyForQuery, status I),
    its next transaction goes to the next one. Trust authentication only (the harness's
    pgserver); anything else skips the test."""

    SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102

    def __init__(self, dsn: str, servers: int = 2):
        with psycopg.connect(dsn) as conn:  # where the server really is, as libpq resolved it
            host, port = conn.info.host, conn.info.port
        self.target = (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}") if host.startswith("/") \
            else (socket.AF_INET, (host, port))
        self.servers = servers
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.dsn = make_conninfo(dsn, host="127.0.0.1", port=self.listener.getsockname()[1],
                                 sslmode="disable", gssencmode="disable")
        self.served_by: list[int] = []  # which server connection served each transaction, in order
        self.skip_reason: Optional[str] = None
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        for sock in [self.listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _upstream(self) -> socket.socket:
        family, address = self.target
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.connect(address)
        self._sockets.append(sock)
        return sock

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstreams: list[socket.socket] = []
        try:
            while True:
                startup = _read_startup(client)
                code = struct.unpack("!i", startup[4:8])[0]
                if code in (self.SSL_REQUEST, self.GSSENC_REQUEST):
                    client.sendall(b"N")
                    continue
                break
            if code == self.CANCEL_REQUEST:
                upstreams.append(self._upstream())
                upstreams[0].sendall(startup)
                return
            for n in range(self.servers):
                upstream = self._upstream()
                upstreams.append(upstream)
                upstream.sendall(startup)
                while True:
                    kind, body = _read_message(upstream)
                    if kind == b"R" and struct.unpack("!i", body[:4])[0] != 0:
                        self.skip_reason = "the test PostgreSQL asks for a password: the pool replays trust only"
                        return
                    if n == 0 or kind == b"E":  # the client sees its first server's greeting
                        client.sendall(kind + struct.pack("!i", len(body) + 4) + body)
                    if kind == b"E":
                        return
                    if kind == b"Z":
                        break
            current = [0]
            lock = threading.Lock()

            def answers(index: int, upstream: socket.socket) -> None:
                with contextlib.suppress(OSError, EOFError):
                    while True:
                        kind, body = _read_message(upstream)
                        with lock:
                            if kind == b"Z" and body == b"I" and current[0] == index:
                                self.served_by.append(index)
                                current[0] = (index + 1) % len(upstreams)  # before the client may go on
                            client.sendall(kind + struct.pack("!i", len(body) + 4) + body)

            for index, upstream in enumerate(upstreams):
                threading.Thread(target=answers, args=(index, upstream), daemon=True).start()
            while True:
                kind, body = _read_message(client)
                message = kind + struct.pack("!i", len(body) + 4) + body
                if kind == b"X":  # the client says goodbye: so do its server connections
                    for upstream in upstreams:
                        upstream.sendall(message)
                    return
                with lock:
                    serving = upstreams[current[0]]
                serving.sendall(message)
        except (OSError, EOFError):
            return
        finally:
            for sock in [client, *upstreams]:
                with contextlib.suppress(OSError):
                    sock.close()


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _read_startup(sock: socket.socket) -> bytes:
    head = _read_exactly(sock, 4)
    return head + _read_exactly(sock, struct.unpack("!i", head)[0] - 4)


def _read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    head = _read_exactly(sock, 5)
    return head[:1], _read_exactly(sock, struct.unpack("!i", head[1:])[0] - 4)


@pytest.fixture
def transaction_pool(legacy):
    pool = TransactionPool(legacy)
    yield pool
    pool.close()


def test_a_connection_that_keeps_no_session_is_refused_nothing_else(legacy, transaction_pool):
    """Through a transaction pool the fold refuses before any change (its advisory lock and
    lock_timeout would not hold); the same fold straight to PostgreSQL runs."""
    try:
        conn = psycopg.connect(transaction_pool.dsn, autocommit=True)
    except psycopg.OperationalError:
        if transaction_pool.skip_reason:
            pytest.skip(transaction_pool.skip_reason)
        raise
    with conn:
        # The pool is one: each transaction on the next server connection, answers intact.
        pids = [conn.execute("SELECT pg_backend_pid()").fetchone()[0] for _ in range(4)]
        assert pids[0] == pids[2] != pids[1] == pids[3], pids
        assert conn.execute("SELECT count(*) FROM ponos_task").fetchone()[0] > 0
    before = snapshot(legacy)
    served = len(transaction_pool.served_by)

    result = fold(transaction_pool.dsn, "--phase", "expand")

    assert result.exit_code == 2, result.output
    assert "does not keep a session" in result.stderr and "PgBouncer in transaction mode" in result.stderr \
        and "nothing changed" in result.stderr, result.stderr
    assert len(set(transaction_pool.served_by[served:])) == 2  # the fold's own session did go round the pool
    assert snapshot(legacy) == before
    with connect(legacy) as conn:
        assert schema.schema_state(conn) == schema.LEGACY
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                            "(SELECT oid FROM pg_database WHERE datname = current_database())").fetchone()[0] == 0
    # A direct connection is a session: the check does not refuse it.
    direct = fold(legacy, "--phase", "expand")
    assert direct.exit_code == 0, direct.output
    assert "does not keep a session" not in direct.stderr
