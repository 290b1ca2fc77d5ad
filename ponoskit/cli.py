"""What the two command groups share: options, logging, progress bars, errors to exit codes.

Only this layer turns a job's end into a one-line message, a report and an exit code: every
command returns a :class:`~ponoskit.runtime.JobResult` or raises, :func:`run_job` sorts both
with :func:`~ponoskit.runtime.result_of` and writes the report with the status and the exit
code (the table is :mod:`ponoskit.runtime`'s). An error nobody expected is one line too,
never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import click
from tqdm import tqdm

from . import ledger
from .connections import redact
from .errors import ConfigError
from .heartbeat import DEFAULT_INTERVAL, Heartbeat
from .metrics import write_textfile
from .report import Report
from .runtime import JobResult, Status, result_of

# The options that name files a run writes; each is checked before anything changes.
OUTPUT_OPTIONS = {"report_path": "--report", "checkpoint": "--checkpoint"}


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        line.update(getattr(record, "progress", None) or {})  # a heartbeat's counts, as fields
        return json.dumps(line, ensure_ascii=False)


class _BarFriendlyHandler(logging.StreamHandler):
    """On a terminal, log lines go above the tqdm bars instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging never raises
            self.handleError(record)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(verbosity: int = 0, fmt: str = "text") -> None:
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    handler = _BarFriendlyHandler(sys.stderr) if sys.stderr.isatty() else logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else
                         _RedactingFormatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # botocore logs every retry at DEBUG; keep our -v readable.
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(max(level, logging.INFO))


def progress(total: Optional[int] = None, desc: str = "", unit: str = "it") -> tqdm:
    """A tqdm bar on a terminal, nothing when stderr is not one (cron, CI, pipes)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not sys.stderr.isatty(),
                dynamic_ncols=True, smoothing=0.1, leave=False)


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas before the job starts its threads.

    glibc gives up to 8 arenas per core to a threaded process and keeps freed memory in each;
    with a thread pool, obstore's runtime and the buffers, resident memory then creeps up
    with run time although the job holds no more data. Two arenas keep it flat. No-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def tune_garbage_collector() -> None:
    """Collect cycles rarely: the jobs allocate millions of short-lived objects (parsed
    listings, futures) and almost no cycles, and the default thresholds spent a tenth of
    the rename's CPU in gc (perf). What exists at start-up is frozen out of every pass."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 50)


def console_entry(group: click.Group) -> Callable[[], None]:
    """A console script's entry point: the process is the job's alone, so tune it (malloc
    arenas, the garbage collector) there, never when a job runs inside another program (tests,
    the demo calling a command in-process)."""
    def entry() -> None:
        limit_malloc_arenas()
        tune_garbage_collector()
        group()
    return entry


class Terminated(KeyboardInterrupt):
    """SIGTERM (a pod deleted, systemd stopping the unit): stop as on Ctrl-C, run again to resume."""


def _raise_terminated(*_) -> None:
    raise Terminated()


@contextlib.contextmanager
def on_sigterm(handler: Callable[..., None] = _raise_terminated) -> Iterator[None]:
    """While the job runs, SIGTERM (a pod deleted, systemd stopping the unit) calls ``handler``;
    by default it stops the job as Ctrl-C does. As PID 1 in a container, Python ignores SIGTERM
    unless it handles it: the job would be killed at the grace period. A job with its own
    handler (the cleanup stops between batches) installs it inside this one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_job(fn: Callable[..., Optional[JobResult]]) -> Callable[..., None]:
    """Wrap a click command body: its JobResult, or what it raised, becomes one line on
    stderr, the report (with ``status`` and ``exit_code``), the metrics and the exit code.

    Before the body runs, every file the run will write (--report, --checkpoint,
    --metrics-file) is checked: a missing folder or an unwritable place is exit 2 with
    nothing changed, not a traceback after the whole job ran.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        click_context = click.get_current_context()
        heartbeat = Heartbeat(lambda: click_context.meta.get("ponos.report"),
                              click_context.meta.get("ponos.progress_interval", DEFAULT_INTERVAL),
                              click_context.meta.get("ponos.metrics_file"))
        try:
            check_output_paths(click_context)
            heartbeat.start()
            with on_sigterm():
                result = fn(*args, **kwargs) or JobResult(Status.DONE)
        except click.ClickException as usage:  # bad usage found by the command itself: click's message, exit 2
            finish(click_context, JobResult(Status.REFUSED, [usage.format_message()]), echo=False)
            raise
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - sorted by the one taxonomy
            result = result_of(exc)
        finally:
            heartbeat.stop()
        sys.exit(finish(click_context, result))
    return wrapper


def finish(click_context: click.Context, result: JobResult, *, echo: bool = True) -> int:
    """The one place a run's end is told: a line on stderr, the report, the metrics."""
    code = result.exit_code
    report = click_context.meta.get("ponos.report")
    if report is not None:  # the ledger's row first: the report says if it was written; the run's line stays last
        warning = ledger.record(click_context.params, report, result.status.value, code,
                                [redact(reason) for reason in result.reasons])
        if warning:
            click.echo(f"Warning: {warning}", err=True)
    if result.status in (Status.INTERRUPTED, Status.TERMINATED):
        click.echo("Interrupted: run again to resume.", err=True)
    elif result.status not in (Status.DONE, Status.LEFT) and echo:
        click.echo(f"Error: {redact(result.reasons[0] if result.reasons else result.status.value)}", err=True)
    if report is not None:
        if result.status not in (Status.DONE, Status.LEFT):
            for reason in result.reasons[:1]:
                report.error(redact(reason))
        try:
            report.write(click_context.params.get("report_path"), status=result.status.value, exit_code=code,
                         reasons=[redact(reason) for reason in result.reasons])
        except OSError as exc:
            click.echo(f"Warning: cannot write --report: {exc}", err=True)
    _write_metrics(click_context, code)
    return code


def check_output_paths(click_context: click.Context) -> None:
    """Exit 2 now if a file the run must write cannot be written."""
    named = {option: click_context.params.get(param) for param, option in OUTPUT_OPTIONS.items()}
    named["--metrics-file"] = click_context.meta.get("ponos.metrics_file")
    for option, value in named.items():
        if value and value != "-":
            problem = _unwritable(Path(value))
            if problem:
                raise ConfigError(f"{option} {value}: {problem}; nothing changed")


def _unwritable(path: Path) -> Optional[str]:
    if path.is_dir():
        return "is a folder"
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        return f"the folder {folder} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder {folder} is not writable"
    if path.exists() and not os.access(path, os.W_OK):
        return "the file is not writable"
    return None


def job_report(job: str, **info) -> Report:
    """The run's report, known to the command layer (which writes the metrics from it)."""
    report = Report(job, **info)
    remember_report(report)
    return report


def remember_report(report: Report) -> Report:
    with contextlib.suppress(RuntimeError):  # outside a click command: nothing to remember
        click.get_current_context().meta["ponos.report"] = report
    return report


def _write_metrics(click_context: click.Context, code: int) -> None:
    path = click_context.meta.get("ponos.metrics_file")
    report = click_context.meta.get("ponos.report")
    if path and report is not None:
        try:
            write_textfile(path, report.to_dict(), code)
        except OSError as exc:
            click.echo(f"Warning: cannot write --metrics-file {path}: {exc}", err=True)


# --- shared options ---------------------------------------------------------------------

def expert_option(*decls: str, envvar: str, **attrs):
    """Expert tuning: hidden from the everyday --help, set by its environment variable (as the
    AWS CLI and s3transfer keep theirs), or by the option for one run. The README's "Expert
    tuning" lists every one (tests/test_expert_tuning.py checks it)."""
    return click.option(*decls, envvar=envvar, show_envvar=True, hidden=True, **attrs)


def dsn_option(f):
    return click.option("--dsn", envvar=None, default=None, metavar="DSN",
                        help="PostgreSQL DSN; default DATABASE_URL, else libpq's PG* variables.")(f)


def retry_deadline_option(f):
    return click.option("--retry-deadline", type=Duration(), default="15m", show_default=True, metavar="DURATION",
                        help="How long S3 or PostgreSQL may keep failing (throttling, an outage, a lost "
                             "connection) before the run stops (exit 75, run again to resume); throttling "
                             "meanwhile slows the run down.")(f)


def s3_options(f):
    f = retry_deadline_option(f)
    f = click.option("--endpoint-url", default=None, metavar="URL",
                     help="S3 endpoint (MinIO, SeaweedFS); default: the AWS configuration "
                          "(AWS_ENDPOINT_URL, profiles). Path-style addressing is used with an endpoint.")(f)
    f = expert_option("--profile", envvar="AWS_PROFILE", default=None, help="AWS profile name.")(f)
    return f


def bucket_options(f):
    f = click.option("--artifacts-bucket", default=None, metavar="NAME", envvar="PONOS_ARTIFACTS_BUCKET",
                     show_envvar=True, help="Bucket of task artifacts.")(f)
    f = click.option("--logs-bucket", default=None, metavar="NAME", envvar="PONOS_LOGS_BUCKET", show_envvar=True,
                     help="Bucket of task logs (may be the artifacts bucket).")(f)
    return f


def _remember_metrics_file(ctx: click.Context, _param, value: Optional[str]) -> None:
    if value:
        ctx.meta["ponos.metrics_file"] = value


def _remember_progress_interval(ctx: click.Context, _param, value: Optional[float]) -> None:
    if value is not None:
        ctx.meta["ponos.progress_interval"] = value


def output_options(f):
    """Where a run's results go: the JSON report, log verbosity and format, metrics."""
    f = expert_option("--progress-interval", envvar="PONOS_PROGRESS_INTERVAL", type=Duration(),
                      default=str(int(DEFAULT_INTERVAL)), show_default=True,
                      metavar="SECONDS", expose_value=False, callback=_remember_progress_interval,
                     help="Log a progress line (counts, rate, time left) and rewrite --metrics-file this "
                          "often while the job runs; 0 for none.")(f)
    f = click.option("--metrics-file", default=None, metavar="FILE", expose_value=False,
                     callback=_remember_metrics_file,
                     help="Write the run's counts, duration and exit code as a Prometheus textfile "
                          "(rewritten at every progress line while the job runs).")(f)
    f = click.option("--report", "report_path", default=None, metavar="FILE",
                     help="Write a JSON report to FILE ('-' for stdout).")(f)
    f = click.option("-v", "--verbose", "verbosity", count=True, help="More log output.")(f)
    f = click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")(f)
    f = expert_option("--log-format", envvar="PONOS_LOG_FORMAT", type=click.Choice(["text", "json"]),
                      default="text", show_default=True, help="Log lines for humans or JSON lines for collectors.")(f)
    return f


def run_options(f):
    """The options of a job that changes things: --dry-run and the output options."""
    f = click.option("--dry-run", is_flag=True, help="Plan and count; change nothing.")(f)
    return output_options(f)


def prices_option(f):
    """Per-request prices for a dry run's S3 bill (ponoskit.s3.bill)."""
    return expert_option("--prices", envvar="PONOS_S3_PRICES", default=None, metavar="TYPE=USD,...",
                        help="S3 prices for the dry run's bill, USD per 1,000 requests (LIST, COPY, PUT, "
                             "HEAD, GET, DELETE) and per GB-month (STORAGE); default AWS us-east-1 list "
                             "prices.")(f)


def init_logging(verbosity: int, quiet: bool, log_format: str) -> None:
    setup_logging(-1 if quiet else verbosity, log_format)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|min|[smhdw]?)")
_UNIT_SECONDS = {"": 1, "ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(option: str, value: Optional[str]) -> Optional[float]:
    """Seconds from ``600``, ``500ms``, ``10m`` (or ``10min``), ``1h30m``, ``7d``; every command
    reads durations this one way. ConfigError otherwise."""
    if value is None:
        return None
    text = str(value).strip().lower()
    parts = _DURATION_PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise ConfigError(f"{option}: {value!r} is not a duration (examples: 600, 500ms, 10m, 1h30m, 7d)")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


class Duration(click.ParamType):
    """A click parameter read with :func:`parse_duration` (every duration option is one);
    ``positive``: zero is refused too."""
    name = "duration"

    def __init__(self, *, positive: bool = False):
        self.positive = positive

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(f"--{param.name.replace('_', '-')}" if param else "duration", value)
            except ConfigError as err:
                self.fail(str(err).split(": ", 1)[-1], param, ctx)
        if self.positive and seconds <= 0:
            self.fail(f"{value!r}: a positive duration such as 500ms, 2s or 1.5 (seconds)", param, ctx)
        return seconds


class ByteSize(click.ParamType):
    """A size such as 5GiB, 512MiB, 100MB or a plain number of bytes."""
    name = "size"
    _UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
              "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        number = text.rstrip("kmgtib")
        unit = text[len(number):]
        try:
            size = int(float(number) * self._UNITS[unit])
        except (ValueError, KeyError, OverflowError):
            self.fail(f"{value!r} is not a size (e.g. 5GiB, 512MiB, 1048576)", param, ctx)
        if size < 1:
            self.fail(f"{value!r} must be positive", param, ctx)
        return size
