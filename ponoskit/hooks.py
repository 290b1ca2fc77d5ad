"""A PostgreSQL transaction with pre-commit and post-commit hooks.

- A pre-commit hook runs inside the transaction, after the job's statements; if it raises,
  the transaction is rolled back and the error propagates.
- A post-commit hook runs once the commit succeeded. The commit stands whatever the hooks
  do; their failures are collected and raised together as :class:`PostCommitError`, after
  every hook had its turn. Work that must not be lost when a post-commit hook fails is made
  durable by the job before the commit (an outbox row), so the next run can retry it.
"""

from __future__ import annotations

import logging
from typing import Callable

import psycopg

from .errors import PostCommitError

Hook = Callable[[], None]


class Transaction:
    def __init__(self, conn: psycopg.Connection, logger: logging.Logger | None = None):
        self.conn = conn
        self.log = logger or logging.getLogger("ponoskit")
        self._pre: list[Hook] = []
        self._post: list[Hook] = []
        self._tx = None

    def on_pre_commit(self, hook: Hook) -> None:
        self._pre.append(hook)

    def on_post_commit(self, hook: Hook) -> None:
        self._post.append(hook)

    def execute(self, query, params=None, **kwargs) -> psycopg.Cursor:
        return self.conn.execute(query, params, **kwargs)

    def __enter__(self) -> "Transaction":
        self._tx = self.conn.transaction()
        self._tx.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                for hook in self._pre:
                    hook()
            except BaseException as pre_error:
                self._tx.__exit__(type(pre_error), pre_error, pre_error.__traceback__)
                raise
        # psycopg commits on a clean exit, rolls back otherwise.
        self._tx.__exit__(exc_type, exc, tb)
        if exc_type is None:
            self._run_post_commit()
        return False

    def _run_post_commit(self) -> None:
        errors = []
        for hook in self._post:
            try:
                hook()
            except Exception as err:  # noqa: BLE001 - collected, raised below
                self.log.error("post-commit hook failed: %s", err)
                errors.append(err)
        if errors:
            raise PostCommitError(errors)
