"""Typed errors. The library raises these; only the CLI turns them into messages and exit codes."""


class PonosError(Exception):
    """Base class of every error the toolkit raises on purpose."""

    exit_code = 1


class ConfigError(PonosError):
    """Bad usage or configuration, found before anything changed."""

    exit_code = 2


class ServiceUnreachable(ConfigError):
    """PostgreSQL or S3 cannot be reached or refuses our credentials."""


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
