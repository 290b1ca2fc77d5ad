"""Expert tuning stays out of the everyday --help, and each such setting is an environment
variable the README's "Expert tuning" table names (ponoskit.cli.expert_option).
No server: the commands are only parsed."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from maint.cli import main as maint_main
from migrate.cli import main as migrate_main

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
EVERYDAY_COMMANDS = [("ponos-migrate", migrate_main, "db-fold-workflow"), ("ponos-migrate", migrate_main, "s3-rename"),
                     ("ponos-migrate", migrate_main, "verify"), ("ponos-maint", maint_main, "cleanup"),
                     ("ponos-maint", maint_main, "orphans")]


def _command(group: click.Group, name: str) -> click.Command:
    return group.get_command(click.Context(group), name)


def _options(command: click.Command, *, hidden: bool) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and p.hidden is hidden]


@pytest.mark.parametrize("program, group, name", EVERYDAY_COMMANDS, ids=[f"{p} {n}" for p, _, n in EVERYDAY_COMMANDS])
def test_every_hidden_option_is_an_environment_variable_the_readme_names(program, group, name):
    command = _command(group, name)
    # A hidden option is expert tuning, or the release before's spelling of a visible one.
    hidden = [p for p in _options(command, hidden=True) if not (p.help or "").startswith("The release before's")]
    assert hidden, f"{program} {name} has no expert tuning at all?"
    for option in hidden:
        assert option.envvar, f"{option.opts[0]} is hidden but has no environment variable"
        row = next((line for line in README.splitlines() if f"`{option.envvar}`" in line), None)
        assert row is not None and f"`{option.opts[0]}`" in row, \
            f"README's Expert tuning does not list {option.envvar} for {option.opts[0]}"
    help_text = CliRunner().invoke(group, [name, "--help"]).output
    assert all(option.opts[0] not in help_text.split() for option in hidden)


def test_the_everyday_help_of_the_five_jobs_stays_short():
    visible = {name: len(_options(_command(group, name), hidden=False)) for _, group, name in EVERYDAY_COMMANDS}
    assert sum(visible.values()) <= 71, visible  # was 102 before the expert tuning moved out
    assert max(visible.values()) <= 18, visible


def test_an_expert_setting_set_in_the_environment_is_read(monkeypatch):
    monkeypatch.setenv("PONOS_LOCK_TIMEOUT", "soon")  # read and refused like the option would be
    result = CliRunner().invoke(migrate_main, ["db-fold-workflow", "--dsn", "postgresql://nowhere/x"])
    assert result.exit_code == 2 and "soon" in result.output

    monkeypatch.setenv("PONOS_LOCK_TIMEOUT", "0")
    result = CliRunner().invoke(migrate_main, ["db-fold-workflow", "--dsn", "postgresql://nowhere/x"])
    assert result.exit_code == 2 and "positive duration" in result.output


def test_the_bucket_variables_work_for_every_command(monkeypatch):
    monkeypatch.setenv("PONOS_ARTIFACTS_BUCKET", "arts")
    monkeypatch.setenv("PONOS_LOGS_BUCKET", "logs")
    for _, group, name in EVERYDAY_COMMANDS:
        command = _command(group, name)
        names = {p.name: p for p in command.params}
        if "artifacts_bucket" not in names:
            continue  # the fold has no bucket
        context = command.make_context(name, ["--dsn", "postgresql://nowhere/x"])
        assert (context.params["artifacts_bucket"], context.params["logs_bucket"]) == ("arts", "logs"), name


def test_the_buckets_phases_have_the_databases_words_and_the_old_ones_still_work():
    command = _command(migrate_main, "s3-rename")
    help_text = CliRunner().invoke(migrate_main, ["s3-rename", "--help"]).output
    assert "[all|expand|contract]" in help_text and "copy|delete" not in help_text
    for old, new in (("copy", "expand"), ("delete", "contract")):
        result = CliRunner().invoke(migrate_main, ["s3-rename", "--phase", old, "--no-db", "--endpoint-url",
                                                   "http://127.0.0.1:1", "--artifacts-bucket", "a", "--dry-run"])
        assert f"--phase {old} is now --phase {new}" in result.stderr
        context = command.make_context("s3-rename", ["--phase", old])
        assert context.params["phase"] == new


def test_the_fold_reads_the_old_name_of_orphan_workflows():
    command = _command(migrate_main, "db-fold-workflow")
    assert "--orphans" not in CliRunner().invoke(migrate_main, ["db-fold-workflow", "--help"]).output.split()
    context = command.make_context("db-fold-workflow", ["--orphans", "delete"])
    assert context.params["old_orphans"] == "delete" and context.params["orphans"] is None
