"""``--record-django-migration APP NAME``: the new release's own migration, marked as applied.

The release without the Workflow model ships a Django migration doing what the fold did.
Once the contract has run, Django must see that migration as applied, or ``manage.py
migrate`` would try to run it (and fail on columns already gone). The contract can insert its
``django_migrations`` row in the same transaction as the drop, so the two never disagree.
It refuses before any change when the table is missing (not a Django database?) or the row
is there already (recorded by hand, or by ``manage.py migrate --fake``, the alternative).
"""

from __future__ import annotations

from typing import Optional

import psycopg

from ponoskit.errors import ConfigError
from ponoskit.schema import table_exists

RECORD_SQL = "INSERT INTO django_migrations (app, name, applied) VALUES (%(app)s, %(name)s, now())"


def parse(value: Optional[tuple[str, str]]) -> Optional[tuple[str, str]]:
    if not value:
        return None
    app, name = value
    if not app or not name or any(c.isspace() for c in app + name):
        raise ConfigError(f"--record-django-migration {app!r} {name!r}: give an app label and a migration name, "
                          "e.g. ponos 0042_remove_workflow")
    return app, name


def params(migration: Optional[tuple[str, str]]) -> Optional[dict]:
    return None if migration is None else {"app": migration[0], "name": migration[1]}


def check(conn: psycopg.Connection, migration: Optional[tuple[str, str]]) -> None:
    """Refuse now (exit 2) what the contract's transaction would fail on."""
    if migration is None:
        return
    if not table_exists(conn, "django_migrations"):
        raise ConfigError("--record-django-migration: this database has no django_migrations table; "
                          "nothing changed")
    app, name = migration
    if conn.execute("SELECT EXISTS (SELECT 1 FROM django_migrations WHERE app = %s AND name = %s)",
                    (app, name)).fetchone()[0]:
        raise ConfigError(f"--record-django-migration: {app}.{name} is already recorded as applied; nothing changed")


def recorded(conn: psycopg.Connection, migration: Optional[tuple[str, str]]) -> bool:
    if migration is None or not table_exists(conn, "django_migrations"):
        return False
    return conn.execute("SELECT EXISTS (SELECT 1 FROM django_migrations WHERE app = %s AND name = %s)",
                        migration).fetchone()[0]
