"""Fixtures: a real PostgreSQL and a real S3-compatible server for the whole session.

By default they are started here: pgserver, and every S3 implementation of
``PONOS_TEST_S3`` (default ``seaweedfs,moto,rgw``): each test that uses S3 runs once per server,
its id saying which ([seaweedfs], [moto], [rgw]). SeaweedFS is a real server with its own listing
order; moto in server mode has AWS semantics (byte-order listings, a plain copy resets the
storage class, objects keep their own SSE-KMS key); rgw is Ceph RGW 16.2 from Debian's packages
(ponos_dev/rgw.py; scripts/test installs them), with the gaps DESIGN.md lists. To use existing
servers instead:
  PONOS_TEST_DSN=postgresql://user:pass@host/db   a role allowed to CREATE DATABASE
  PONOS_TEST_S3_ENDPOINT=http://127.0.0.1:9000    with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
Every test gets its own database and its own buckets, so tests never see each other's data.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from ponos_dev import local, rgw, seed
from ponoskit.connections import S3Settings
from ponoskit.context import Context

# Fixtures shared by several test modules live in fixtures modules, registered here (a test
# module never imports another's); their plain helpers are imported from them.
pytest_plugins = ["tests.fixtures.cleanup", "tests.fixtures.fold", "tests.fixtures.rename"]


def pytest_configure(config):
    # pytest keeps the last three basetemp folders of *any* session and deletes older ones,
    # servers' data included: give each session its own folder so parallel sessions (two
    # checkouts, a developer and an editor plugin) never pull the ground from under each other.
    if not config.option.basetemp:
        config.option.basetemp = tempfile.mkdtemp(prefix="ponos-pytest-")
        config._ponos_owned_basetemp = config.option.basetemp


def pytest_unconfigure(config):
    owned = getattr(config, "_ponos_owned_basetemp", None)
    if owned and not os.environ.get("PONOS_KEEP_TMP"):
        shutil.rmtree(owned, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory):
    if os.environ.get("PONOS_TEST_DSN"):
        yield os.environ["PONOS_TEST_DSN"]
        return
    with local.postgres(tmp_path_factory.mktemp("pg")) as dsn:
        yield dsn


S3_SERVERS = ("seaweedfs", "moto", "rgw")


def _s3_implementations() -> list[str]:
    if os.environ.get("PONOS_TEST_S3_ENDPOINT"):
        return ["external"]
    chosen = [name.strip() for name in os.environ.get("PONOS_TEST_S3", ",".join(S3_SERVERS)).split(",") if name.strip()]
    unknown = set(chosen) - set(S3_SERVERS)
    if unknown:
        raise pytest.UsageError(f"PONOS_TEST_S3: unknown server(s) {sorted(unknown)}; choose among {S3_SERVERS}")
    return chosen


# Which servers run which S3 tests. SeaweedFS (a real server, its own listing order, honours
# If-None-Match) runs every one. moto (AWS's semantics: byte-order listings, a plain copy resets
# the storage class, objects keep their own SSE-KMS key, no If-None-Match on copies) and Ceph RGW
# (the gaps DESIGN.md lists) run the modules where their answers differ: what S3 does to an
# object (listings, copies, conditions, deletes, folder markers, versions, storage classes,
# encryption, capabilities, error answers and exit codes, the cleanup's deletes and request
# counts). What only drives the same calls again runs on SeaweedFS alone: the SIGKILL chaos,
# the two-release runbooks, the operations' CLI plumbing (metrics, SIGTERM, progress lines),
# the cleanup's resilience, and, marked ``pytest.mark.s3_servers("seaweedfs")`` one by one,
# the tests whose faults are the proxy's (injected refusals, slowdowns, outages, 200s that are
# errors), whose subject is the database (a session killed, a failover) or a checkpoint's
# identity: their S3 requests are those of the tests above. A test's own marker wins over its
# module's entry; every module that uses S3 is listed (a new one fails the collection until it
# is). PONOS_TEST_S3_EVERYWHERE=1 (or PONOS_TEST_RGW=all) runs every S3 test on every server;
# when PONOS_TEST_S3 picks none of a test's servers, it runs on the first one picked.
EVERY_SERVER = ("seaweedfs", "moto", "rgw")
S3_SERVERS_BY_MODULE = {
    "test_s3_never_lose": EVERY_SERVER,
    "test_s3_production": EVERY_SERVER,
    "test_s3_capabilities": EVERY_SERVER,
    "test_s3_rename": EVERY_SERVER,
    "test_verify": EVERY_SERVER,
    "test_exit_codes": EVERY_SERVER,
    "test_foundation_smoke": EVERY_SERVER,
    "test_rgw_harness": ("rgw",),
    "cleanup.test_s3": EVERY_SERVER,
    "cleanup.test_scope": EVERY_SERVER,
    "cleanup.test_dry_run": ("seaweedfs", "moto"),
    "cleanup.test_orphans": ("seaweedfs", "moto"),
    "cleanup.test_fold_leftovers": ("seaweedfs", "moto"),
    "test_cli_before_any_change": ("seaweedfs", "moto"),
    "cleanup.test_resilience": ("seaweedfs",),
    "test_chaos": ("seaweedfs",),
    "test_zero_downtime": ("seaweedfs",),
    "test_operations": ("seaweedfs",),
    "test_demo": ("seaweedfs",),
}


def _module_key(item) -> str:
    return item.module.__name__.removeprefix("tests.")


def _servers_of(item) -> tuple[str, ...]:
    marker = item.get_closest_marker("s3_servers")
    if marker is not None:
        return marker.args
    key = _module_key(item)
    if key not in S3_SERVERS_BY_MODULE:
        raise pytest.UsageError(f"{item.nodeid}: tests/conftest.py's S3_SERVERS_BY_MODULE does not say which S3 "
                                f"servers {key!r} runs on (or mark the test with pytest.mark.s3_servers)")
    return S3_SERVERS_BY_MODULE[key]


def pytest_collection_modifyitems(config, items):
    everywhere = os.environ.get("PONOS_TEST_S3_EVERYWHERE") or os.environ.get("PONOS_TEST_RGW") == "all"
    chosen = _s3_implementations()
    kept, dropped = [], []
    for item in items:
        server = item.callspec.params.get("s3_server") if getattr(item, "callspec", None) else None
        if server is not None and server != "external" and not everywhere:
            wanted = [name for name in chosen if name in _servers_of(item)] or chosen[:1]
            if server not in wanted:
                dropped.append(item)
                continue
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    # The slow tests first: with several workers, a long test handed out last keeps one worker
    # busy while the others idle (it made the run's tail minutes long).
    items[:] = sorted(kept, key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session", params=_s3_implementations())
def s3_server(request, tmp_path_factory):
    if request.param == "external":
        yield local.LocalS3(os.environ["PONOS_TEST_S3_ENDPOINT"], os.environ["AWS_ACCESS_KEY_ID"],
                            os.environ["AWS_SECRET_ACCESS_KEY"])
        return
    if request.param == "seaweedfs":
        server = local.seaweedfs(tmp_path_factory.mktemp("s3"))
    elif request.param == "rgw":
        server = rgw.ceph_rgw(tmp_path_factory.mktemp("rgw"))
    else:
        server = local.moto_server()
    with server as started:
        yield started


@pytest.fixture
def s3_implementation(s3_server, request) -> str:
    """Which server the test runs against: seaweedfs, moto, rgw or external."""
    return request.node.callspec.params.get("s3_server", "external")


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point boto3 (ours and subprocesses') at the test S3 server."""
    for name, value in s3_server.environ().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_server.environ()


@pytest.fixture
def fault_proxy(s3_server):
    """A fault-injecting proxy in front of the test S3 server (see tests/faultproxy.py)."""
    from tests.faultproxy import FaultProxy

    with FaultProxy(s3_server.endpoint_url, seed=1234) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def legacy_template(pg_admin_dsn):
    """A database holding the empty legacy schema, for ``make_database`` to copy: CREATE DATABASE
    ... TEMPLATE takes 0.03 s where loading the schema into an empty database takes 0.15 s."""
    name = f"t_template_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(make_conninfo(pg_admin_dsn, dbname=name), autocommit=True) as conn:
        seed.load_legacy_schema(conn)
    yield name
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def make_database(pg_admin_dsn, legacy_template):
    """Create databases on demand, empty or holding the legacy schema (a copy of
    ``legacy_template``); drop them after the test."""
    created = []

    def make(schema: str | None = "legacy") -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        template = f' TEMPLATE "{legacy_template}"' if schema == "legacy" else ""
        with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"{template}')
        created.append(name)
        return make_conninfo(pg_admin_dsn, dbname=name)

    yield make
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        for name in created:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def legacy_dsn(make_database):
    """A fresh database holding the legacy tables, empty."""
    return make_database("legacy")


@pytest.fixture
def context_factory(s3_env):
    contexts = []

    def make(dsn=None, **kwargs) -> Context:
        ctx = Context(job=kwargs.pop("job", "test"), dsn=dsn,
                      s3=S3Settings(endpoint_url=s3_env["AWS_ENDPOINT_URL"]), **kwargs)
        contexts.append(ctx)
        return ctx

    yield make
    for ctx in contexts:
        ctx.close()


@pytest.fixture
def make_bucket(context_factory):
    ctx = context_factory(use_db=False)

    created = []

    def make(prefix: str = "b") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:16]}"
        ctx.s3.create_bucket(Bucket=name)
        created.append(name)
        return name

    yield make
    for name in created:
        _drop_bucket(ctx.s3, name)


def _drop_bucket(s3, name: str) -> None:
    """Free the server's space: SeaweedFS drops a non-empty bucket at once; moto and RGW want it
    emptied first, 1,000 keys a DeleteObjects (one DeleteObject per key cost them a second a
    test on the 1,800-object tests)."""
    try:
        s3.delete_bucket(Bucket=name)
        return
    except s3.exceptions.ClientError:
        pass

    def delete(entries: list[dict]) -> None:
        for start in range(0, len(entries), 1000):
            s3.delete_objects(Bucket=name, Delete={"Objects": entries[start:start + 1000], "Quiet": True})

    try:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
            delete([{"Key": entry["Key"], "VersionId": entry["VersionId"]}
                    for entry in page.get("Versions", []) + page.get("DeleteMarkers", [])])
    except Exception:  # noqa: BLE001 - moto cannot list versions of keys XML cannot carry
        pass
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            delete([{"Key": obj["Key"]} for obj in page.get("Contents", [])])
        s3.delete_bucket(Bucket=name)
    except s3.exceptions.ClientError:
        pass  # a test server's leftovers die with it


@pytest.fixture
def make_seeded(make_database, context_factory, make_bucket):
    """Realistic legacy datasets on demand: a legacy database holding ``spec``'s rows, their
    objects in two buckets (artifacts, logs), and a context on both."""
    def make(spec: seed.SeedSpec) -> dict:
        dsn = make_database("legacy")
        ctx = context_factory(dsn)
        artifacts, logs = make_bucket("artifacts"), make_bucket("logs")
        with psycopg.connect(dsn, autocommit=True) as conn:
            summary = seed.seed_database(conn, spec)
            counts = seed.seed_s3(ctx, conn, artifacts_bucket=artifacts, logs_bucket=logs, seed=spec.seed)
        return {"dsn": dsn, "artifacts": artifacts, "logs": logs, "summary": summary, "counts": counts,
                "ctx": ctx}
    return make


@pytest.fixture
def seeded(make_seeded):
    """A small realistic legacy dataset in PostgreSQL and S3 (separate buckets)."""
    return make_seeded(seed.SeedSpec(processes=12, seed=7))
