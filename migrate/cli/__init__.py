"""``ponos-migrate``: the one-off migrations of the workflow removal.

Each module of this package defines one subcommand as ``command``; the group finds them, so a
migration is added or retired by adding or deleting its module alone. A module is imported
only when its subcommand runs (or --help lists it): one broken migration never breaks the
others.
"""

from __future__ import annotations

import importlib
import pkgutil

import click

from ponoskit.cli import console_entry


class _LazyGroup(click.Group):
    """The subcommands are this package's modules, imported on demand."""

    def list_commands(self, ctx):
        return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules(__path__))

    def get_command(self, ctx, name):
        module_name = name.replace("-", "_")
        if module_name not in {m.name for m in pkgutil.iter_modules(__path__)}:
            return None
        return importlib.import_module(f"{__name__}.{module_name}").command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ponos-toolkit")
def main() -> None:
    """One-off migrations that carry Ponos through the removal of its Workflow model.

    \b
    Run them in this order (see the README's runbook):
      1. db-fold-workflow   fold workflow rows into processes, online
      2. s3-rename          move artifacts and logs to their new keys
      3. verify             check database and buckets agree
    Any time: status (where things stand, the next command; read only).
    """


# The console script (pyproject.toml): process tuning, then the group.
entry = console_entry(main)
