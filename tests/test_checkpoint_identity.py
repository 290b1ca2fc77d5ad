"""A checkpoint's database identity, on a real PostgreSQL: stable whoever reads it."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ponoskit.checkpoint import Checkpoint, database_identity, same_database
from ponoskit.errors import ConfigError


@pytest.fixture
def app_role_dsn(legacy_dsn):
    """The same database through a role that is not a superuser (no pg_control_system())."""
    role, password = f"app_{uuid.uuid4().hex[:8]}", "app-secret"
    with psycopg.connect(legacy_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        admin.execute(f"GRANT CONNECT ON DATABASE \"{conninfo_to_dict(legacy_dsn)['dbname']}\" TO {role}")
        # As on managed services (and in this database only: function rights are per database).
        admin.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
    yield make_conninfo(legacy_dsn, user=role, password=password)
    with psycopg.connect(legacy_dsn, autocommit=True) as admin:
        admin.execute(f"DROP OWNED BY {role}")
        admin.execute(f"DROP ROLE {role}")


def identity_of(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        return database_identity(conn)


def test_a_superusers_checkpoint_is_resumed_by_an_application_role_and_the_reverse(legacy_dsn, app_role_dsn,
                                                                                  tmp_path):
    admin, app = identity_of(legacy_dsn), identity_of(app_role_dsn)
    assert admin["system_identifier"] and app["system_identifier"] is None  # the role may not read it
    assert admin["oid"] == app["oid"]
    for writer, reader in ((admin, app), (app, admin)):
        path = tmp_path / f"{uuid.uuid4().hex}.checkpoint"
        Checkpoint(str(path), {"job": "s3-rename", "database": writer}).save({"b": {"after": "k"}})
        assert Checkpoint(str(path), {"job": "s3-rename", "database": reader}).load() == {"b": {"after": "k"}}


def test_another_database_is_still_refused(legacy_dsn, make_database, app_role_dsn, tmp_path):
    other = identity_of(make_database())
    path = tmp_path / "c.checkpoint"
    Checkpoint(str(path), {"database": identity_of(legacy_dsn)}).save({})
    with pytest.raises(ConfigError, match="belongs to another run"):
        Checkpoint(str(path), {"database": other}).load()
    # What an application role recorded before (oid and address in one string) still matches.
    old = {"name": other["name"], "system_identifier": f"oid {other['oid']} at local:0"}
    assert same_database(old, other) and not same_database(old, identity_of(legacy_dsn))


class _FailsOnce:
    """A connection whose first read of pg_control fails as a torn read does (a CRC error)."""

    def __init__(self, conn):
        self.conn, self.autocommit, self.failed = conn, conn.autocommit, False

    def execute(self, query, *args):
        if "pg_control_system" in query and not self.failed:
            self.failed = True
            raise psycopg.errors.DataCorrupted("incorrect checksum in control file")
        return self.conn.execute(query, *args)

    def rollback(self):
        self.conn.rollback()


def test_a_transient_failure_of_the_identity_query_does_not_change_the_identity(legacy_dsn):
    with psycopg.connect(legacy_dsn, autocommit=True) as conn:
        flaky = _FailsOnce(conn)
        assert database_identity(flaky) == database_identity(conn)
        assert flaky.failed
