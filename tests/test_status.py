"""``ponos-migrate status`` and the run ledger behind it.

The two runbooks are walked forward and back by running, at each step, the next command
status printed, as printed (the database and the S3 endpoint come from the environment, so
the printed command carries no secret), and checking the phase it reaches. The sample
estimate is checked against the exact count on buckets with a known share of legacy
prefixes left.
"""

from __future__ import annotations

import json
import shlex
import uuid
from datetime import datetime, timezone

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import make_conninfo

from migrate import legacy_estimate
from migrate.cli import main as migrate_main
from migrate.status import StatusOptions, pass_of_phase, read_status
from ponos_dev import seed
from ponos_dev.naive_fold import naive_fold
from ponoskit import keys, ledger

# The runbooks' walks and the estimate on every server the suite runs (the issue asks for it).
pytestmark = pytest.mark.s3_servers("seaweedfs", "moto", "rgw")


@pytest.fixture
def world(make_database, context_factory, make_bucket, s3_env, monkeypatch, tmp_path):
    """A small legacy installation; the database and the endpoint reached through the environment."""
    dsn = make_database("legacy")
    ctx = context_factory(dsn)
    buckets = {"artifacts": make_bucket("artifacts"), "logs": make_bucket("logs")}
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed.seed_database(conn, seed.SeedSpec(processes=12, running_share=0.0, seed=13))
        seed.seed_s3(ctx, conn, artifacts_bucket=buckets["artifacts"], logs_bucket=buckets["logs"], seed=13,
                     with_unrecognized=False)
    # A password in the DSN (the test server trusts the socket and ignores it): it must show nowhere.
    dsn = make_conninfo(dsn, password=f"pw-{uuid.uuid4().hex}")
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.chdir(tmp_path)  # the printed commands' relative checkpoints land here
    return {"dsn": dsn, "ctx": ctx, "buckets": buckets}


def status(world, *args: str, code: int = 0) -> dict:
    b = world["buckets"]
    result = CliRunner().invoke(migrate_main, ["status", "--artifacts-bucket", b["artifacts"], "--logs-bucket",
                                               b["logs"], "--sample", "50", "--report", "-", *args])
    assert result.exit_code == code, result.output
    assert password_of(world["dsn"]) not in result.output
    return json.loads(result.stdout)


def run_printed(command: str, password: str) -> None:
    """Run a printed command as printed: no DSN or secret in it, exit 0."""
    argv = shlex.split(command)
    assert argv[0] == "ponos-migrate" and "--dsn" not in argv and password not in command, command
    result = CliRunner().invoke(migrate_main, argv[1:])
    assert result.exit_code == 0, (command, result.output)


def step(world, expected_phase: str, expected_command: str) -> dict:
    found = status(world)
    assert found["phase"] == expected_phase, found
    assert expected_command in (found["next"]["command"] or ""), found["next"]
    return found


def password_of(dsn: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(dsn).get("password") or "no-password-in-this-dsn"


@pytest.mark.slow
def test_the_forward_runbook_step_by_step(world):
    secret = password_of(world["dsn"])
    found = step(world, "legacy", "db-fold-workflow --phase expand")
    assert found["database"]["orphans_refused"] == 0 and found["next"]["rollback"] is None
    run_printed(found["next"]["command"], secret)

    found = step(world, "expanded", "s3-rename")
    assert "--phase expand --checkpoint copy.checkpoint" in found["next"]["command"]
    assert found["database"]["next_step"] is None and "install_sync_triggers" in found["database"]["steps_done"]
    assert found["next"]["rollback"] == "ponos-migrate db-fold-workflow --rollback"
    status(world, "--expect", "copied", code=1)
    run_printed(found["next"]["command"], secret)

    found = step(world, "copied", "--phase expand --checkpoint")
    status(world, "--expect", "copied")
    assert all(b["passes"]["expand"]["exit_code"] == 0 for b in found["buckets"])
    assert all(b["legacy"]["workflows_left"] > 0 for b in found["buckets"])  # the copy keeps the sources
    assert "s3-rename --artifacts-bucket" in found["next"]["rollback"] and "--rollback" in found["next"]["rollback"]
    with psycopg.connect(world["dsn"], autocommit=True) as conn:  # a legacy pod touches one of its tasks
        conn.execute("UPDATE ponos_task SET updated = now() "
                     "WHERE id = (SELECT id FROM ponos_task ORDER BY id LIMIT 1)")
    found = status(world)
    assert all(b["catch_up_due"] and b["changed_since_check"] == 1 for b in found["buckets"])
    run_printed(found["next"]["command"], secret)

    found = step(world, "caught-up", "--phase contract")
    assert not any(b["catch_up_due"] for b in found["buckets"])
    assert all(b["passes"]["expand"]["catch_up"] for b in found["buckets"])
    run_printed(found["next"]["command"], secret)

    found = step(world, "contracted-buckets", "db-fold-workflow --phase contract")
    assert all(b["legacy"]["workflows_left"] == 0 for b in found["buckets"])
    run_printed(found["next"]["command"], secret)

    found = step(world, "contracted", "ponos-migrate verify")
    assert found["next"]["rollback"] is None
    assert all(b["legacy"]["method"] == "none" for b in found["buckets"])  # no workflow ids left to sample
    counted = status(world, "--exact")  # but every key can be listed
    assert all(b["legacy"]["method"] == "exact" and b["legacy"]["objects_left"] == 0 for b in counted["buckets"])
    run_printed(found["next"]["command"], secret)

    found = status(world, "--expect", "contracted")
    assert found["next"]["command"] is None and ledger.DROP_SQL in found["next"]["note"]
    assert found["verified"]
    with psycopg.connect(world["dsn"]) as conn:  # every job left its row, and no secret
        rows = conn.execute(f"SELECT job, phase, exit_code, info::text FROM {ledger.TABLE} ORDER BY id").fetchall()
    assert [(job, phase, code) for job, phase, code, _ in rows] == [
        ("db-fold-workflow", "expand", 0), ("s3-rename", "expand", 0), ("s3-rename", "expand", 0),
        ("s3-rename", "contract", 0), ("db-fold-workflow", "contract", 0), ("verify", None, 0)]
    assert not any(secret in info for *_, info in rows)


@pytest.mark.slow
def test_the_rollback_runbook_step_by_step(world):
    secret = password_of(world["dsn"])
    run_printed(step(world, "legacy", "--phase expand")["next"]["command"], secret)
    run_printed(step(world, "expanded", "--phase expand")["next"]["command"], secret)

    found = step(world, "copied", "--phase expand")
    run_printed(found["next"]["rollback"], secret)  # the way back, as printed

    found = step(world, "expanded", "db-fold-workflow --rollback")
    assert found["intent"] == "rollback" and all(b["rolled_back"] for b in found["buckets"])
    run_printed(found["next"]["command"], secret)

    found = status(world, "--expect", "legacy")
    assert found["phase"] == "rolled-back" and found["next"]["command"] is None
    status(world, "--expect", "expanded", code=1)
    run_printed(found["next"]["note"].split("to start again: ")[1], secret)  # and forward again
    found = step(world, "expanded", "--phase expand")
    assert found["intent"] == "forward" and not any(b["copied"] for b in found["buckets"])


@pytest.mark.slow
def test_what_blocks_the_next_step_is_said(world):
    secret = password_of(world["dsn"])
    with psycopg.connect(world["dsn"], autocommit=True) as conn:  # a killed CREATE INDEX CONCURRENTLY
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY ponos_task_process_id ON ponos_task (state)")
    found = step(world, "legacy", "--phase expand")
    assert any("failed index: ponos_task_process_id is INVALID" in b for b in found["next"]["blockers"])
    run_printed(found["next"]["command"], secret)  # the expand rebuilds it

    found = step(world, "expanded", "--phase expand")
    assert found["next"]["blockers"] == [] and found["database"]["invalid_indexes"] == []
    with psycopg.connect(world["dsn"], autocommit=True) as conn:  # a different object in a copy's way
        task, path = conn.execute("SELECT task_id::text, path FROM ponos_artifact WHERE path ~ '^[A-Za-z0-9_./-]+$' "
                                  "ORDER BY id LIMIT 1").fetchone()
    world["ctx"].s3.put_object(Bucket=world["buckets"]["artifacts"], Key=keys.artifact_key(task, path),
                               Body=b"not the same bytes")
    argv = shlex.split(found["next"]["command"])[1:]
    assert CliRunner().invoke(migrate_main, argv).exit_code == 1  # the conflict is left

    found = step(world, "expanded", "--phase expand")  # the same command again, once resolved
    assert any("1 conflicts" in b and world["buckets"]["artifacts"] in b for b in found["next"]["blockers"])
    world["ctx"].s3.delete_object(Bucket=world["buckets"]["artifacts"], Key=keys.artifact_key(task, path))
    run_printed(found["next"]["command"], secret)

    with psycopg.connect(world["dsn"], autocommit=True) as conn:  # a legacy pod still runs a task
        conn.execute("UPDATE ponos_task SET state = 'running' WHERE id = %s", (task,))
    found = step(world, "copied", "--phase expand")
    assert any("legacy pods still writing: 1 task" in b for b in found["next"]["blockers"])


def test_the_text_names_the_phase_and_the_next_command(world):
    b = world["buckets"]
    result = CliRunner().invoke(migrate_main, ["status", "--artifacts-bucket", b["artifacts"], "--logs-bucket",
                                               b["logs"], "--sample", "5"])
    assert result.exit_code == 0, result.output
    assert "Phase: legacy" in result.stdout
    assert "Next: ponos-migrate db-fold-workflow --phase expand" in result.stdout
    assert password_of(world["dsn"]) not in result.output


# --- the estimate ----------------------------------------------------------------------

@pytest.fixture
def partly_moved(legacy_dsn, context_factory, make_bucket):
    """One artifact per workflow: every fifth workflow keeps it at its legacy key (20% left)."""
    ctx = context_factory(legacy_dsn)
    artifacts, logs = make_bucket("artifacts"), make_bucket("logs")
    with psycopg.connect(legacy_dsn, autocommit=True) as conn:
        seed.seed_database(conn, seed.SeedSpec(processes=60, seed=21))
        tasks = conn.execute("SELECT DISTINCT ON (workflow_id) workflow_id::text, id::text FROM ponos_task "
                             "ORDER BY workflow_id, id").fetchall()
    legacy = 0
    for index, (workflow, task) in enumerate(tasks):
        still_legacy = index % 5 == 0
        legacy += still_legacy
        key = (keys.legacy_artifact_key(workflow, task, "out.txt") if still_legacy
               else keys.artifact_key(task, "out.txt"))
        ctx.s3.put_object(Bucket=artifacts, Key=key, Body=b"x")
    return {"ctx": ctx, "dsn": legacy_dsn, "artifacts": artifacts, "logs": logs, "legacy": legacy}


def test_the_sample_interval_holds_the_exact_count(partly_moved):
    ctx = partly_moved["ctx"]
    with psycopg.connect(partly_moved["dsn"]) as conn:
        population = conn.execute("SELECT count(*) FROM ponos_workflow").fetchone()[0]
    for seed_value in (0.1, -0.4, 0.7):
        found = read_status(ctx, StatusOptions(partly_moved["artifacts"], partly_moved["logs"], sample=25,
                                               seed=seed_value))
        estimate = next(b.legacy for b in found.buckets if b.bucket == partly_moved["artifacts"])
        assert estimate.method == "sample" and estimate.sampled == 25 and estimate.requests == 25
        assert estimate.population == population
        assert estimate.low <= partly_moved["legacy"] <= estimate.high, estimate
    exact = read_status(ctx, StatusOptions(partly_moved["artifacts"], partly_moved["logs"], exact=True))
    counted = next(b.legacy for b in exact.buckets if b.bucket == partly_moved["artifacts"])
    assert counted.method == "exact" and counted.objects_left == counted.workflows_left == partly_moved["legacy"]


def test_after_the_contract_the_kept_mapping_is_sampled(partly_moved):
    with psycopg.connect(partly_moved["dsn"], autocommit=True) as conn:  # --keep-workflow-table's copy
        conn.execute("CREATE TABLE ponos_workflow_before_fold AS SELECT * FROM ponos_workflow")
        naive_fold(conn)
    found = read_status(partly_moved["ctx"], StatusOptions(partly_moved["artifacts"], partly_moved["logs"],
                                                           sample=10_000))
    assert found.phase == "contracted"
    estimate = next(b.legacy for b in found.buckets if b.bucket == partly_moved["artifacts"])
    assert estimate.method == "sample" and estimate.workflows_left == partly_moved["legacy"]


def test_a_sample_as_large_as_the_population_is_exact(partly_moved):
    found = read_status(partly_moved["ctx"], StatusOptions(partly_moved["artifacts"], partly_moved["logs"],
                                                           sample=10_000))
    estimate = next(b.legacy for b in found.buckets if b.bucket == partly_moved["artifacts"])
    assert estimate.low == estimate.high == estimate.workflows_left == partly_moved["legacy"]


def test_exact_says_what_it_costs_first(partly_moved, s3_env, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", partly_moved["dsn"])
    result = CliRunner().invoke(migrate_main, ["status", "--artifacts-bucket", partly_moved["artifacts"],
                                               "--logs-bucket", partly_moved["logs"], "--exact"])
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[0]
    assert first.startswith("--exact lists every key") and "LIST requests" in first
    assert f"{partly_moved['legacy']} legacy object(s)" in result.stdout


def test_wilson_interval():
    low, high = legacy_estimate.wilson(0, 20)
    assert low == 0.0 and 0.1 < high < 0.2
    low, high = legacy_estimate.wilson(10, 20)
    assert abs((0.5 - low) - (high - 0.5)) < 1e-9 and 0.25 < low < 0.35


def test_the_ledger_keeps_no_secret_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kept = ledger.kept_params({"dsn": "postgresql://u:hunter2@db/ponos", "endpoint_url": "https://key@s3.example",
                               "checkpoint": "copy.checkpoint", "report_path": "-", "rollback": False,
                               "workers": 8, "record_django_migration": ("ponos", "0042_x"), "shard": None})
    assert "dsn" not in kept and "shard" not in kept and "key@" not in kept["endpoint_url"]
    assert kept["checkpoint"] == str(tmp_path / "copy.checkpoint") and kept["report_path"] == "-"
    assert kept["rollback"] is False and kept["workers"] == 8 and kept["record_django_migration"] == ["ponos", "0042_x"]


def _rename_run(shard: str, minute: int, exit_code: int = 0, checked: str = "2026-01-01T00:00:00+00:00"):
    moment = datetime(2026, 1, 1, 12, minute, tzinfo=timezone.utc)
    return ledger.Run("s3-rename", "copy", moment, moment, "done" if exit_code == 0 else "left", exit_code,
                      {"copied": 10, "conflicts": 1 - (exit_code == 0)},
                      {"buckets": ["b"], "shard": shard, "checks": [{"bucket": "b", "checked_at": checked}]})


def test_a_sharded_pass_is_its_shards_last_runs_together():
    only_one = pass_of_phase([_rename_run("0/2", 5)], "b")
    assert not only_one.done and only_one.status == "1 of 2 shards not recorded" and only_one.checked_at is None
    both = pass_of_phase([_rename_run("1/2", 6, checked="2026-01-01T00:02:00+00:00"), _rename_run("0/2", 5),
                          _rename_run("1/2", 1, exit_code=1)], "b")  # shard 1's failure is older: run again
    assert both.done and both.shards == 2 and both.counts == {"copied": 20}
    assert both.checked_at == "2026-01-01T00:00:00+00:00"  # the earliest check: what changed after it is due
    failed = pass_of_phase([_rename_run("1/2", 6, exit_code=1), _rename_run("0/2", 5)], "b")
    assert not failed.done and failed.left == 1


# --- bad input -------------------------------------------------------------------------

def _errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error")]


def test_an_unknown_phase_for_expect_is_exit_2(world):
    b = world["buckets"]
    result = CliRunner().invoke(migrate_main, ["status", "--artifacts-bucket", b["artifacts"], "--logs-bucket",
                                               b["logs"], "--expect", "folded"])
    assert result.exit_code == 2 and len(_errors(result)) == 1 and "--expect" in _errors(result)[0]


def test_a_missing_bucket_is_exit_2(world):
    result = CliRunner().invoke(migrate_main, ["status", "--artifacts-bucket", world["buckets"]["artifacts"],
                                               "--logs-bucket", f"missing-{uuid.uuid4().hex[:8]}"])
    assert result.exit_code == 2, result.output
    assert len(_errors(result)) == 1 and "does not exist" in _errors(result)[0]


def test_no_ponos_tables_is_exit_2(make_database, make_bucket, s3_env):
    dsn = make_database(schema=None)
    result = CliRunner().invoke(migrate_main, ["status", "--dsn", dsn, "--artifacts-bucket", make_bucket("a"),
                                               "--logs-bucket", make_bucket("l")])
    assert result.exit_code == 2, result.output
    assert len(_errors(result)) == 1 and "Ponos tables" in _errors(result)[0]
    assert password_of(dsn) not in result.output


def test_no_buckets_is_exit_2(world, monkeypatch):
    monkeypatch.delenv("PONOS_ARTIFACTS_BUCKET", raising=False)
    result = CliRunner().invoke(migrate_main, ["status"])
    assert result.exit_code == 2 and "--artifacts-bucket" in _errors(result)[0]


# --- the ledger ------------------------------------------------------------------------

def _runs(dsn: str) -> list[ledger.Run]:
    with psycopg.connect(dsn) as conn:
        return ledger.last_runs(conn)


def test_a_run_appends_one_row_and_a_dry_run_none(world, tmp_path):
    assert CliRunner().invoke(migrate_main, ["db-fold-workflow", "--phase", "expand", "--dry-run"]).exit_code == 0
    assert _runs(world["dsn"]) == []
    report = tmp_path / "expand.json"
    result = CliRunner().invoke(migrate_main, ["db-fold-workflow", "--phase", "expand", "--report", str(report)])
    assert result.exit_code == 0, result.output
    runs = _runs(world["dsn"])
    assert [(r.job, r.phase, r.status, r.exit_code) for r in runs] == [("db-fold-workflow", "expand", "done", 0)]
    assert runs[0].started <= runs[0].ended and runs[0].counts
    assert "dsn" not in runs[0].params and password_of(world["dsn"]) not in json.dumps(runs[0].to_dict())
    assert json.loads(report.read_text())["ledger"] == "recorded"


def test_a_run_without_a_database_leaves_no_row(world, s3_env):
    b = world["buckets"]
    result = CliRunner().invoke(migrate_main, ["s3-rename", "--no-db", "--artifacts-bucket", b["artifacts"],
                                               "--logs-bucket", b["logs"], "--phase", "copy"])
    assert result.exit_code in (0, 1), result.output
    assert _runs(world["dsn"]) == []


@pytest.fixture
def reader_role(world, pg_admin_dsn):
    """A role that may read the Ponos tables but create nothing (no CREATE on the database)."""
    name, password = f"reader_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    dbname = psycopg.conninfo.conninfo_to_dict(world["dsn"])["dbname"]
    with psycopg.connect(world["dsn"], autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        conn.execute(f'GRANT CONNECT ON DATABASE "{dbname}" TO {name}')
        conn.execute(f"GRANT USAGE ON SCHEMA public TO {name}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {name}")
    yield make_conninfo(world["dsn"], user=name, password=password)
    with psycopg.connect(world["dsn"], autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {name}")
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(f'REVOKE ALL ON DATABASE "{dbname}" FROM {name}')
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.execute(f"DROP ROLE IF EXISTS {name}")


def test_a_role_that_may_not_create_the_ledger_still_runs_and_says_so(world, reader_role, tmp_path):
    b = world["buckets"]
    report = tmp_path / "verify.json"
    result = CliRunner().invoke(migrate_main, ["verify", "--dsn", reader_role, "--artifacts-bucket", b["artifacts"],
                                               "--logs-bucket", b["logs"], "--report", str(report)])
    assert result.exit_code == 1, result.output  # legacy keys left: verify's own verdict, unchanged
    written = json.loads(report.read_text())
    assert written["ledger"].startswith("not recorded: ") and written["exit_code"] == 1
    assert "was not written" in result.stderr and password_of(reader_role) not in result.output
    assert _runs(world["dsn"]) == []
