"""ponoskit/hooks.py: Transaction's pre- and post-commit hooks (a recording fake connection). No
server.
"""

from __future__ import annotations

import pytest

from ponoskit.errors import PonosError, PostCommitError
from ponoskit.hooks import Transaction


class FakeTransaction:
    def __init__(self, log, fail_commit=None):
        self.log, self.fail_commit = log, fail_commit

    def __enter__(self):
        self.log.append("begin")
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            if self.fail_commit:
                self.log.append("commit failed")
                raise self.fail_commit
            self.log.append("commit")
        else:
            self.log.append("rollback")
        return False  # like psycopg: never swallows the error


class FakeConnection:
    """What Transaction needs of a psycopg connection: transaction() and execute()."""

    def __init__(self, fail_commit=None):
        self.log: list[str] = []
        self.fail_commit = fail_commit

    def transaction(self):
        return FakeTransaction(self.log, self.fail_commit)

    def execute(self, query, params=None, **kwargs):
        self.log.append(f"execute {query}")


def test_hooks_run_in_order_around_the_commit():
    conn = FakeConnection()
    with Transaction(conn) as tx:
        tx.execute("DELETE")
        tx.on_pre_commit(lambda: conn.log.append("pre 1"))
        tx.on_post_commit(lambda: conn.log.append("post 1"))
        tx.on_pre_commit(lambda: conn.log.append("pre 2"))
        tx.on_post_commit(lambda: conn.log.append("post 2"))
        assert conn.log == ["begin", "execute DELETE"]  # nothing runs before the block ends
    assert conn.log == ["begin", "execute DELETE", "pre 1", "pre 2", "commit", "post 1", "post 2"]


def test_pre_commit_failure_rolls_back_and_propagates():
    conn = FakeConnection()
    post = []

    def failing():
        raise ValueError("pre-commit check failed")

    with pytest.raises(ValueError, match="pre-commit check failed"):
        with Transaction(conn) as tx:
            tx.on_pre_commit(failing)
            tx.on_post_commit(lambda: post.append("ran"))
    assert "commit" not in conn.log and conn.log[-1] == "rollback"
    assert post == []


def test_hooks_do_not_run_when_the_body_raises():
    conn = FakeConnection()
    ran = []
    with pytest.raises(KeyError):
        with Transaction(conn) as tx:
            tx.on_pre_commit(lambda: ran.append("pre"))
            tx.on_post_commit(lambda: ran.append("post"))
            raise KeyError("body failed")
    assert ran == []
    assert conn.log == ["begin", "rollback"]


def test_post_commit_hooks_do_not_run_when_the_commit_fails():
    conn = FakeConnection(fail_commit=OSError("connection lost during COMMIT"))
    ran = []
    with pytest.raises(OSError, match="COMMIT"):
        with Transaction(conn) as tx:
            tx.on_post_commit(lambda: ran.append("post"))
    assert ran == []


def test_every_post_commit_hook_runs_then_post_commit_error():
    conn = FakeConnection()
    ran = []

    def fail(name):
        def hook():
            ran.append(name)
            raise RuntimeError(name)
        return hook

    with pytest.raises(PostCommitError) as info:
        with Transaction(conn) as tx:
            tx.on_post_commit(fail("first"))
            tx.on_post_commit(lambda: ran.append("second"))
            tx.on_post_commit(fail("third"))
    assert ran == ["first", "second", "third"]
    assert [str(e) for e in info.value.errors] == ["first", "third"]
    assert isinstance(info.value, PonosError)
    assert "commit" in conn.log and "rollback" not in conn.log  # the commit stands
