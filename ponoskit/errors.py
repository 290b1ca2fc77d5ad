"""Typed errors. The library raises these; only the CLI turns them into messages and exit codes."""


class PonosError(Exception):
    """Base class of every error the toolkit raises on purpose."""

    exit_code = 1


class ConfigError(PonosError):
    """Bad usage or configuration, found before anything changed."""

    exit_code = 2


class AccessDenied(ConfigError):
    """PostgreSQL or S3 refuses our credentials or our rights: configuration, fix and re-run."""


class TransientError(PonosError):
    """Something that may pass (a failover, S3 unreachable or failing after retries): run again later.

    Exit code 75 (EX_TEMPFAIL): a Kubernetes Job or a cron wrapper retries it; 1 and 2 fail fast.
    """

    exit_code = 75


class ServiceUnreachable(TransientError):
    """PostgreSQL or S3 does not answer (refused, timed out, failing over)."""


class AlreadyRunning(PonosError):
    """Another run of the same job holds its advisory lock."""

    exit_code = 3


class Refused(PonosError):
    """A preflight check found data the job will not touch without an explicit option."""


class FlushError(PonosError):
    """A buffer could not flush a batch; the items it carried were not processed."""

    def __init__(self, buffer_name: str, errors: list[BaseException]):
        self.buffer_name = buffer_name
        self.errors = errors
        first = errors[0] if errors else None
        super().__init__(f"buffer {buffer_name!r}: {len(errors)} flush error(s), first: {first!r}")


class PostCommitError(PonosError):
    """The transaction committed, but a post-commit hook failed."""

    def __init__(self, errors: list[BaseException]):
        self.errors = errors
        super().__init__(f"{len(errors)} post-commit hook(s) failed, first: {errors[0]!r}")


class OutOfTime(TransientError):
    """A run stopped at its --max-runtime with its progress saved: not done, run again (75)."""
