"""``ponos-migrate``: the one-off migrations of the workflow removal.

Each module of this package defines one subcommand as ``command``; the group finds them, so a
migration is added or retired by adding or deleting its module alone.
"""

from __future__ import annotations

import importlib
import pkgutil

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ponos-toolkit")
def main() -> None:
    """One-off migrations that carry Ponos through the removal of its Workflow model.

    \b
    Run them in this order (see the README's runbook):
      1. db-fold-workflow   fold workflow rows into processes, online
      2. s3-rename          move artifacts and logs to their new keys
      3. verify             check database and buckets agree
    """


for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    main.add_command(importlib.import_module(f"{__name__}.{_module.name}").command)
