"""Every command and subcommand of both CLIs answers --help and is documented.

The command paths are discovered by walking the click groups, so a new command (or a new
migration module under migrate/cli/) is covered without touching this file.
"""

from __future__ import annotations

import importlib

import click
import pytest
from click.testing import CliRunner

# (program name, module holding the click group ``main``)
PROGRAMS = [("ponos-migrate", "migrate.cli"), ("ponos-maint", "maint.cli")]


def _load(module: str):
    try:
        return importlib.import_module(module).main
    except ModuleNotFoundError as err:
        if err.name is not None and module.startswith(err.name):
            return None  # the CLI itself does not exist yet: skipped in the test
        raise  # the CLI exists but one of its imports is broken: a real failure


def _walk(command: click.Command, path: tuple[str, ...]):
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command, info_name=path[-1])
        names = command.list_commands(ctx)
        assert names, f"{' '.join(path)} is a group without commands"
        for name in names:
            sub = command.get_command(ctx, name)
            assert sub is not None, f"{' '.join(path)} lists {name!r} but cannot load it"
            yield from _walk(sub, path + (name,))


def _discover():
    params = []
    for program, module in PROGRAMS:
        main = _load(module)
        if main is None:
            params.append(pytest.param(module, (program,), id=program))  # importorskip in the test
            continue
        for path, _ in _walk(main, (program,)):
            params.append(pytest.param(module, path, id=" ".join(path)))
    return params


COMMAND_PATHS = _discover()


def _resolve(module: str, path: tuple[str, ...]) -> tuple[click.Command, click.Command]:
    main = pytest.importorskip(module).main
    command = main
    for name in path[1:]:
        command = command.get_command(click.Context(command, info_name=name), name)
    return main, command


def test_both_programs_are_walked():
    programs = {p.values[1][0] for p in COMMAND_PATHS}
    assert programs == {program for program, _ in PROGRAMS}
    # ponos-migrate has at least one subcommand besides the group itself.
    assert any(p.values[1][0] == "ponos-migrate" and len(p.values[1]) > 1 for p in COMMAND_PATHS)


@pytest.mark.parametrize("module, path", COMMAND_PATHS)
def test_help_of_every_command(module, path):
    main, command = _resolve(module, path)
    result = CliRunner().invoke(main, [*path[1:], "--help"], prog_name=path[0])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.output.startswith("Usage: " + " ".join(path)), result.output
    assert (command.help or "").strip(), f"{' '.join(path)} has no help text"
    # The help text shows up in the --help output (first line at least).
    first_line = command.help.strip().splitlines()[0].strip()
    assert first_line in " ".join(result.output.split())


@pytest.mark.parametrize("module, path", COMMAND_PATHS)
def test_every_option_is_documented(module, path):
    _, command = _resolve(module, path)
    undocumented = [param.name for param in command.params
                    if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()]
    assert not undocumented, f"{' '.join(path)}: options without help: {undocumented}"
