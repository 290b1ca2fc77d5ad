"""Every command finds what would make it fail before it changes anything: a file it cannot
write (--report, --checkpoint, --metrics-file), a database without the Ponos tables. Exit 2,
one line, nothing changed (the fold used to drop ponos_workflow and then fail on --report).
"""

from __future__ import annotations

import psycopg
import pytest
from click.testing import CliRunner

from maint.cli import main as maint_main
from migrate.cli import main as migrate_main
from ponos_dev import seed
from ponos_dev.naive_fold import naive_fold
from tests.helpers import list_keys

COMMANDS = {
    "db-fold-workflow": (migrate_main, "legacy", False),
    "s3-rename": (migrate_main, "legacy", True),
    "verify": (migrate_main, "folded", True),
    "cleanup": (maint_main, "folded", True),
    "orphans": (maint_main, "folded", True),
}
BAD_PATHS = {
    "report-folder": ("--report", "{tmp}/missing/report.json", "does not exist"),
    "metrics-is-a-folder": ("--metrics-file", "{tmp}", "is a folder"),
}


@pytest.fixture
def world(make_seeded):
    """A small seeded database (legacy, or folded) and its buckets, and how to snapshot both."""
    def build(shape: str):
        seeded = make_seeded(seed.SeedSpec(processes=5, seed=4))
        dsn, ctx, artifacts, logs = seeded["dsn"], seeded["ctx"], seeded["artifacts"], seeded["logs"]
        if shape == "folded":
            with psycopg.connect(dsn, autocommit=True) as conn:
                naive_fold(conn)

        def snapshot():
            with psycopg.connect(dsn) as conn:
                names = [r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables "
                                                    "WHERE table_schema = 'public' ORDER BY 1")]
                tables = [(name, conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]) for name in names]
                columns = conn.execute("SELECT table_name, column_name FROM information_schema.columns "
                                       "WHERE table_schema = 'public' ORDER BY 1, 2").fetchall()
            return tables, columns, list_keys(ctx.s3, artifacts), list_keys(ctx.s3, logs)
        return dsn, artifacts, logs, snapshot
    return build


def _args(command: str, dsn: str, artifacts: str, logs: str, endpoint: str, uses_s3: bool) -> list[str]:
    args = [command, "--dsn", dsn]
    if uses_s3:
        args += ["--artifacts-bucket", artifacts, "--logs-bucket", logs, "--endpoint-url", endpoint]
    return args


@pytest.mark.parametrize("bad", list(BAD_PATHS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_output_file_that_cannot_be_written_is_exit_2_before_any_change(world, s3_env, tmp_path, command, bad):
    group, shape, uses_s3 = COMMANDS[command]
    dsn, artifacts, logs, snapshot = world(shape)
    option, value, message = BAD_PATHS[bad]
    before = snapshot()

    result = CliRunner().invoke(group, [*_args(command, dsn, artifacts, logs, s3_env["AWS_ENDPOINT_URL"], uses_s3),
                                        option, value.format(tmp=tmp_path)])

    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and message in errors[0] and option in errors[0]
    assert "Traceback" not in result.output
    assert snapshot() == before


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_database_without_the_ponos_tables_is_exit_2_for_every_command(make_database, make_bucket, s3_env,
                                                                         command):
    group, _, uses_s3 = COMMANDS[command]
    dsn = make_database(schema=None)
    result = CliRunner().invoke(group, _args(command, dsn, make_bucket("a"), make_bucket("l"),
                                             s3_env["AWS_ENDPOINT_URL"], uses_s3))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and ("Ponos" in errors[0] or "ponos_task" in errors[0]), result.stderr
    with psycopg.connect(dsn) as conn:  # nothing was created in it either
        assert conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
                            ).fetchone()[0] == 0
