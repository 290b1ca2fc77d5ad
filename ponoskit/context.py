"""The shared context every job receives.

It owns the PostgreSQL connection, the S3 client, the logger, the buffers, the dry-run flag
and the run report. Jobs ask it for what they need and never build clients themselves;
clients are created on first use, so a job that needs no database opens none. Closing the
context drains every buffer (raising their errors) and closes the connections.
"""

from __future__ import annotations

import contextlib
import logging
import time
from functools import cached_property
from typing import Any, Callable, Iterator, Optional, Sequence

import psycopg

from . import connections
from .buffer import BatchBuffer
from .errors import AlreadyRunning, FlushError, ServiceUnreachable
from .hooks import Transaction
from .pgsession import require_session
from .report import Report
from .runtime import pg_connection_lost, pg_is_transient
from .s3 import capabilities
from .s3.capabilities import BucketCapabilities
from .s3.limiter import AdaptiveLimiter
from .s3.retry import Retrier, observe_throttles


class Context:
    def __init__(self, *, job: str, dsn: Optional[str] = None, use_db: bool = True,
                 s3: Optional[connections.S3Settings] = None, dry_run: bool = False,
                 logger: Optional[logging.Logger] = None, report: Optional[Report] = None,
                 progress: Optional[Callable[..., Any]] = None):
        self.job = job
        self.dsn = connections.resolve_dsn(dsn) if use_db else None
        self.use_db = use_db
        self.s3_settings = s3 or connections.S3Settings()
        self.dry_run = dry_run
        self.log = logger or logging.getLogger(f"ponos.{job}")
        self.report = report or Report(job, dry_run=dry_run)
        self.progress = progress  # (total, desc, unit) -> a tqdm-like bar; the CLI gives its own
        self._buffers: dict[str, BatchBuffer] = {}
        self._buckets: dict[str, BucketCapabilities] = {}
        self._closed = False
        self._db_opened = False  # a session was had: losing it later is worth waiting for

    def bar(self, desc: str, *, total: Optional[int] = None, unit: str = "it"):
        """A progress bar (a context manager with ``update(n)``): the CLI's, else one that shows nothing."""
        return self.progress(total=total, desc=desc, unit=unit) if self.progress else NoBar()

    # --- PostgreSQL ------------------------------------------------------------------
    @cached_property
    def db(self) -> psycopg.Connection:
        """The job's autocommit connection; use :meth:`transaction` for atomic work."""
        if not self.use_db:
            raise RuntimeError("this run has no database (--no-db)")
        conn = connections.connect_pg(self.dsn, application_name=f"ponos-{self.job}")
        self._db_opened = True
        return conn

    def with_db(self, what: str, fn: Callable[[psycopg.Connection], Any]) -> Any:
        """``fn(db)``; where the connection is lost (a failover, pg_terminate_backend, a
        restart), connect again and ask again, under the run's --retry-deadline, the progress
        line saying so meanwhile; past it, :class:`ServiceUnreachable` (exit 75). Only for
        statements a job can simply repeat, on the job's own autocommit connection (a session
        lock or a transaction would not survive the new connection)."""
        with _Outage(self.retrier, self.report.waits, what) as outage:
            while True:
                try:
                    return fn(self.db)
                except (psycopg.Error, ServiceUnreachable) as exc:  # the latter: connecting again failed
                    if isinstance(exc, psycopg.Error) and not pg_is_transient(exc):
                        raise
                    failure = exc
                self._drop_db()
                outage.check(failure)
                outage.wait(failure)

    def resuming(self, what: str, run: Callable[[], Any]) -> Any:
        """``run()``, and again from its last safe point each time the database session is lost
        mid-run (a failover, a restart, pg_terminate_backend), under --retry-deadline.

        For jobs whose progress lives in the database and that resume where a killed run would
        (the fold's step list, the cleanup's outbox), holding session state (an advisory lock)
        that :meth:`with_db` could not carry to a new connection: ``run`` takes it again. A
        database out of reach from the start is not waited for (exit 75 at once, as before).
        """
        with _Outage(self.retrier, self.report.waits, what) as outage:
            while True:
                opened_before, started = self._db_opened, time.monotonic()
                try:
                    return run()
                except Exception as exc:  # noqa: BLE001 - only a lost session is handled here
                    lost = pg_connection_lost(exc)
                    if lost is None or not (opened_before or self._db_opened):
                        raise
                self._drop_db()
                # A run that went on longer than the deadline before losing its session again
                # meets a new outage, not the same one going on.
                outage.check(lost, new=time.monotonic() - started >= self.retrier.deadline)
                self.report.count("database_sessions_lost")
                self.log.warning("%s: the database session was lost (%s); resuming from the last safe point",
                                 what, _one_line(lost))
                outage.wait(lost)

    def _drop_db(self) -> None:
        conn = self.__dict__.pop("db", None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def connect(self, **kwargs) -> psycopg.Connection:
        """A further connection (a worker thread's, a lock holder's); the caller closes it."""
        return connections.connect_pg(self.dsn, application_name=f"ponos-{self.job}", **kwargs)

    def transaction(self, conn: Optional[psycopg.Connection] = None) -> Transaction:
        return Transaction(conn or self.db, self.log)

    @contextlib.contextmanager
    def advisory_lock(self, key: int, what: str) -> Iterator[None]:
        """Hold a session-level advisory lock, or raise AlreadyRunning at once."""
        require_session(self.db)
        got = self.db.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
        if not got:
            raise AlreadyRunning(f"another {what} is running (advisory lock {key} is held)")
        try:
            yield
        finally:
            if not self.db.closed:
                self.db.execute("SELECT pg_advisory_unlock(%s)", (key,))

    # --- S3 --------------------------------------------------------------------------
    @cached_property
    def aws_session(self):
        return connections.s3_session(self.s3_settings)

    @cached_property
    def s3(self):
        client = connections.s3_client(self.s3_settings, self.aws_session)
        observe_throttles(client, self.limiter)
        return client

    @cached_property
    def limiter(self) -> AdaptiveLimiter:
        """The run's S3 concurrency window, shared by every worker (see ponoskit.s3.limiter)."""
        settings = self.s3_settings
        return AdaptiveLimiter(settings.concurrency, max_rps=settings.max_rps)

    @cached_property
    def retrier(self) -> Retrier:
        return Retrier(self.limiter, deadline=self.s3_settings.retry_deadline, waits=self.report.waits)

    @property
    def endpoint(self) -> str:
        """The S3 endpoint as reports show it: the URL (no userinfo), or aws:<region>."""
        return connections.describe_endpoint(self.s3)

    def bucket(self, name: str, *, probe: bool = False) -> BucketCapabilities:
        """Check a bucket once (exists, reachable, allowed) and learn what its server does.

        With ``probe`` (and not in a dry run), canaries find out whether conditional copies and
        deletes are honoured and whether obstore copies awkward keys exactly.
        """
        found = self._buckets.get(name)
        if found is None:
            found = BucketCapabilities(name, region=connections.check_bucket(self.s3, name))
            capabilities.read_configuration(self.s3, name, found)
            self._buckets[name] = found
        if probe and not found.probed and not self.dry_run:
            capabilities.probe(self.s3, name, found, retrier=self.retrier,
                               make_store=lambda conditional: self.object_store(name, conditional=conditional))
        return found

    def object_store(self, bucket: str, *, concurrency: Optional[int] = None, conditional: bool = False,
                     retries: int = 0):
        known = self._buckets.get(bucket)
        return connections.obstore_store(self.s3_settings, self.aws_session, self.s3, bucket,
                                         concurrency=concurrency or self.s3_settings.concurrency,
                                         region=known.region if known else None, conditional_copy=conditional,
                                         retries=retries)

    # --- buffers ---------------------------------------------------------------------
    def buffer(self, name: str, flush: Callable[[list], Optional[Sequence[Any]]], **options) -> BatchBuffer:
        """Create (once) and track a buffer; every tracked buffer is drained on close.

        A buffer closed by :meth:`drain_buffers` is replaced, so a job may drain mid-run and
        go on under the same name.
        """
        if name not in self._buffers or self._buffers[name].closed:
            self._buffers[name] = BatchBuffer(name, flush, **options)
        return self._buffers[name]

    def drain_buffers(self) -> None:
        """Close every buffer; raise the first FlushError after all were closed."""
        failures: list[FlushError] = []
        for buffer in self._buffers.values():
            try:
                buffer.close()
            except FlushError as err:
                failures.append(err)
        if failures:
            raise failures[0]

    # --- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.drain_buffers()
        finally:
            if "db" in self.__dict__ and not self.db.closed:
                self.db.close()

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


class _Outage:
    """One PostgreSQL outage as a job waits it out: since when, the progress line's "waiting
    for PostgreSQL", the pause between attempts; past --retry-deadline, ServiceUnreachable."""

    def __init__(self, retrier: Retrier, waits, what: str):
        self.retrier, self.waits, self.what = retrier, waits, what
        self.since: Optional[float] = None
        self.attempt = 0
        self.token = None

    def __enter__(self) -> "_Outage":
        return self

    def __exit__(self, *exc) -> None:
        self.waits.end(self.token)

    def check(self, failure: BaseException, *, new: bool = False) -> None:
        """Raise ServiceUnreachable (exit 75) once the outage outlasted the deadline."""
        now = time.monotonic()
        if self.since is None or new:
            self.since = now
        if self.retrier.stopping.is_set() or now - self.since >= self.retrier.deadline:
            raise ServiceUnreachable(f"PostgreSQL ({self.what}) kept failing for {now - self.since:.0f}s "
                                     f"({_one_line(failure)}); run again to resume") from None

    def wait(self, failure: BaseException) -> None:
        if self.token is None:
            self.token = self.waits.begin("PostgreSQL", self.what, "", _one_line(failure), self.retrier.deadline)
        else:
            self.waits.update(self.token, _one_line(failure))
        time.sleep(self.retrier.pause(self.attempt))
        self.attempt += 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class NoBar:
    """No progress bar (a library call, a test): ``update`` does nothing."""

    def __enter__(self) -> "NoBar":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **_) -> None:
        pass

    def close(self) -> None:
        pass
