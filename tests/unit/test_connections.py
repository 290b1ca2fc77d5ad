"""ponoskit/connections.py: secrets redacted, DSN resolution, unreachable PostgreSQL in one line, a 200
body that is an error. No server.
"""

from __future__ import annotations

import pytest

from ponoskit.connections import connect_pg, describe_dsn, redact, resolve_dsn
from ponoskit.errors import ConfigError, ServiceUnreachable


SECRET = "hunter2-S3cr3t"


@pytest.fixture
def clean_pg_env(monkeypatch):
    for name in ("DATABASE_URL", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD",
                 "PGSERVICE", "PGSERVICEFILE", "PGPASSFILE", "PGSSLMODE", "PGOPTIONS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("text", [
    f"postgresql://alice:{SECRET}@db.example:5432/ponos",
    f"postgres://alice:{SECRET}@db.example/ponos?sslmode=require",
    f"postgresql://:{SECRET}@db.example/ponos",
    f"error: could not connect to postgresql://alice:{SECRET}@db.example/ponos: refused",
    f"host=db.example password={SECRET} dbname=ponos",
    f"host=db.example password = {SECRET} dbname=ponos",
    f"host=db.example PASSWORD={SECRET}",
    f"host=db.example password='{SECRET}' dbname=ponos",
    f"host=db.example password='{SECRET} with spaces' dbname=ponos",
    f"host=db.example password='it\\'s {SECRET}' dbname=ponos",
    f"postgresql://alice@db.example/ponos?password={SECRET}&sslmode=require",
])
def test_redact_masks_dsn_passwords(text):
    redacted = redact(text)
    assert SECRET not in redacted
    assert "with spaces" not in redacted and "it\\'s" not in redacted
    assert "***" in redacted
    assert "db.example" in redacted  # the rest stays readable


def test_redact_leaves_passwordless_text_alone():
    for text in ("postgresql://alice@db.example:5432/ponos", "host=db port=5432 dbname=ponos",
                 "postgresql://db.example:5432/ponos", "s3://bucket/key: AccessDenied"):
        assert redact(text) == text


def test_redact_masks_extra_secrets_and_ignores_empty_ones():
    assert redact(f"token {SECRET} and again {SECRET}", SECRET) == "token *** and again ***"
    assert redact("nothing to hide", None, "") == "nothing to hide"
    text = f"postgresql://a:{SECRET}@h/d key=AKIAEXAMPLE"
    redacted = redact(text, "AKIAEXAMPLE")
    assert SECRET not in redacted and "AKIAEXAMPLE" not in redacted


def test_redact_masks_sslpassword():
    assert SECRET not in redact(f"host=db sslpassword={SECRET} sslkey=/k.pem")


def test_describe_dsn_never_shows_the_password(clean_pg_env):
    assert describe_dsn(f"postgresql://alice:{SECRET}@db.example:6543/ponos") == "alice@db.example:6543/ponos"
    described = describe_dsn(f"host=db.example port=6543 user=alice password='{SECRET}' dbname=ponos")
    assert described == "alice@db.example:6543/ponos"
    assert SECRET not in describe_dsn(f"postgresql://alice:{SECRET}@db.example/ponos")
    assert "bad" not in describe_dsn("host='bad password=x")  # unparsable: says so, echoes nothing


def test_resolve_dsn_precedence(clean_pg_env):
    monkeypatch = clean_pg_env
    assert resolve_dsn(None) == ""  # libpq reads PG* itself
    monkeypatch.setenv("DATABASE_URL", "postgresql://from-env/db")
    assert resolve_dsn(None) == "postgresql://from-env/db"
    assert resolve_dsn("") == "postgresql://from-env/db"
    assert resolve_dsn("postgresql://explicit/db") == "postgresql://explicit/db"
    monkeypatch.delenv("DATABASE_URL")
    assert resolve_dsn("host=explicit") == "host=explicit"


@pytest.mark.parametrize("dsn", [
    f"postgresql://alice:{SECRET}@127.0.0.1:1/ponos",
    f"host=127.0.0.1 port=1 user=alice password='{SECRET}' dbname=ponos",
])
def test_connect_pg_unreachable_is_one_redacted_line(clean_pg_env, dsn):
    with pytest.raises(ServiceUnreachable) as info:
        connect_pg(dsn)
    message = str(info.value)
    assert "\n" not in message
    assert SECRET not in message
    assert "127.0.0.1" in message  # says which server
    assert info.value.exit_code == 75  # nobody answers: maybe a failover, run again later


def test_connect_pg_unreachable_via_database_url_and_pgpassword(clean_pg_env):
    clean_pg_env.setenv("DATABASE_URL", "postgresql://alice@127.0.0.1:1/ponos")
    clean_pg_env.setenv("PGPASSWORD", SECRET)
    with pytest.raises(ServiceUnreachable) as info:
        connect_pg(None)
    assert SECRET not in str(info.value) and "\n" not in str(info.value)


def test_connect_pg_invalid_dsn_is_a_config_error_without_the_password(clean_pg_env):
    with pytest.raises(ConfigError) as info:
        connect_pg(f"postgresql://alice:{SECRET}@[db/ponos")  # libpq echoes the URI back
    assert not isinstance(info.value, ServiceUnreachable)
    assert SECRET not in str(info.value)


def test_connect_pg_invalid_dsn_message_is_one_line(clean_pg_env):
    with pytest.raises(ConfigError) as info:
        connect_pg("host=127.0.0.1 password='unterminated")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("body, bad", [
    (b'<?xml version="1.0"?>\n<ListBucketResult xmlns="x"><Name>b</Name></ListBucketResult>', False),
    (b'<?xml version="1.0"?>\n<ListBucketResult xmlns="x"><Name>b</Na', True),
    (b'<?xml version="1.0"?><Error><Code>InternalError</Code></Error>', True),
    (b'<?xml version="1.0" encoding="UTF-8"?>\n<VersioningConfiguration xmlns="x"/>', False),
    (b"<CopyObjectResult><ETag>x</ETag></CopyObjectResult>\n", False),
    (b"not xml", True),
], ids=["whole", "cut-short", "error", "empty-root", "copy", "garbage"])
def test_a_200_body_is_an_error_when_it_says_so_or_is_cut_short(body, bad):
    from ponoskit.connections import _error_or_truncated
    assert _error_or_truncated(body) is bad
