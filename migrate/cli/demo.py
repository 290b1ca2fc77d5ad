"""``ponos-migrate demo``: the command layer over :func:`migrate.demo.run_demo`."""

from __future__ import annotations

import click

from ponoskit.cli import init_logging, run_job
from ponoskit.runtime import JobResult


@click.command("demo")
@click.option("--processes", type=click.IntRange(1, 100_000), default=1000, show_default=True,
              help="Started processes to seed (each with 1-6 tasks: about 3,500 tasks and 10,000 objects).")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Folder for the servers' data (wiped first, deleted after); default a temporary one.")
@click.option("-v", "--verbose", "verbosity", count=True, help="Show every job's log lines.")
@run_job
def command(processes, workdir, verbosity):
    """Run the whole migration end to end on local servers and seeded legacy data.

    Starts a PostgreSQL and an S3 server (SeaweedFS), seeds realistic legacy data, runs the
    fold, the rename, the verification and the cleanup, prints what changed, and stops both
    servers. Nothing outside its temporary folder is touched; run it as often as you like.
    """
    init_logging(verbosity - 1, False, "text")  # the jobs' INFO lines only with -v
    from ..demo import run_demo  # imports the servers' helpers only when the demo runs

    ok = run_demo(processes=processes, workdir=workdir, echo=click.echo)
    return JobResult.finished([] if ok else ["a step of the demo failed (see above)"])
