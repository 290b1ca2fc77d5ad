"""The demo (README command 1): its own servers, the whole migration, a table; twice in a row."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from migrate.cli import main


def table_row(output: str, name: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith(name))
    return line[len(name):].split()


@pytest.mark.slow
def test_demo_runs_end_to_end_and_again(tmp_path):
    for attempt in range(2):  # every run starts from scratch
        result = CliRunner().invoke(main, ["demo", "--processes", "15", "--workdir", str(tmp_path / "demo")],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output + result.stderr
        out = result.output
        for step in ("db-fold-workflow", "s3-rename", "verify", "cleanup"):
            assert f"==> {step}" in out
        assert "FAILED" not in out and "every step succeeded" in out
        assert table_row(out, "schema") == ["legacy", "folded"]
        workflows_before, after = table_row(out, "ponos_workflow")
        assert int(workflows_before) == 15 and after == "dropped"
        legacy_before, legacy_after = map(int, table_row(out, "s3 artifacts: legacy keys"))
        assert legacy_before > 0 and legacy_after == 0
        tasks_before, tasks_after = map(int, table_row(out, "ponos_task"))
        assert 0 < tasks_after < tasks_before  # the cleanup deleted the expired processes' tasks
        # Every new-layout object after the run belongs to a task that is left.
        moved = int(re.search(r"moved (\d+)", out)[1])
        assert moved == legacy_before + int(table_row(out, "s3 logs: legacy keys")[0])
    assert not (tmp_path / "demo").exists()  # servers stopped, folder removed


def test_json_log_lines(seeded, s3_env):
    result = CliRunner().invoke(main, ["s3-rename", "--endpoint-url", s3_env["AWS_ENDPOINT_URL"], "--dry-run",
                                       "--artifacts-bucket", seeded["artifacts"], "--dsn", seeded["dsn"],
                                       "--log-format", "json"], catch_exceptions=False)
    assert result.exit_code == 0
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any("would_move" in line["message"] for line in lines)
