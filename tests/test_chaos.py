"""Chaos: S3 failing 5-10 % of the time, the server going away, SIGKILL again and again.

Every job goes through the fault proxy (tests/faultproxy.py) or is killed at random moments;
the state is always checked with direct clients, against what the data says it must be
(tests/test_s3_rename.py's expected_moves, tests/test_cleanup_fixtures.py's expected_state),
never against numbers written down here.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from datetime import datetime, timezone

import psycopg
import pytest

from ponoskit import keys
from ponoskit.seed import SeedSpec
from tests.conftest import list_keys
from tests.test_cleanup_fixtures import (  # noqa: F401 - fixtures
    Folded, expected_state, maint_command, make_folded, run_cli)
from tests.test_s3_rename import _cli, assert_moved, bigger, expected_moves, rename  # noqa: F401 - fixture

RENAME_OPERATIONS = ("CopyObject", "DeleteObjects", "DeleteObject", "HeadObject", "ListObjectsV2")
CLEANUP_OPERATIONS = ("ListObjectsV2", "DeleteObjects", "DeleteObject")
ALLOWED_EXITS = (0, 1, 75)  # done; something left (run again); transient (run again)
SHARE = 0.013  # per fault kind: five or six kinds make 6.3-7.5 % of the requests fail


def add_faults(proxy, operations, *, error_200_on=("CopyObject",)) -> None:
    """About 7 % of the requests of ``operations`` fail, every way the proxy knows."""
    for fault in ("slowdown", "internal", "reset_before", "reset_after"):
        proxy.add(fault, probability=SHARE, operations=operations)
    proxy.add("slow", probability=SHARE, operations=operations, seconds=0.2)
    error_200_on = tuple(op for op in error_200_on if op in operations)
    if error_200_on:
        proxy.add("error_200", probability=SHARE, operations=error_200_on)


def fired_kinds(proxy) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for (fault, _), n in proxy.counts.items():
        kinds[fault] = kinds.get(fault, 0) + n
    return kinds


def assert_fault_rate(proxy, operations, low=0.03, high=0.12) -> None:
    """The faults really hit the job's traffic, at about the rate asked for."""
    requests = sum(proxy.requests[op] for op in operations)
    fired = sum(n for (_, op), n in proxy.counts.items() if op in operations)
    assert requests > 0 and low <= fired / requests <= high, (fired, requests, dict(proxy.counts))


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in (stderr or ""), stderr[-3000:]


def error_lines(stderr: str) -> list[str]:
    return [line for line in (stderr or "").splitlines() if line.startswith("Error")]


def canaries(listing: dict) -> list[str]:
    return sorted(k for k in listing if keys.is_canary(k))


# --- the rename ---------------------------------------------------------------------------

class RenameCase:
    """``bigger`` (or another dataset) with what the rename must end with, computed before."""

    def __init__(self, data: dict):
        self.data = data
        self.s3 = data["ctx"].s3
        self.artifacts, self.logs = data["artifacts"], data["logs"]
        self.before = {"artifacts": list_keys(self.s3, self.artifacts), "logs": list_keys(self.s3, self.logs)}
        self.moves = expected_moves(data["dsn"], self.before["artifacts"], self.before["logs"])
        assert self.moves["artifacts"] and self.moves["logs"]

    def args(self, *extra: str) -> list[str]:
        return ["--artifacts-bucket", self.artifacts, "--logs-bucket", self.logs, "--dsn", self.data["dsn"], *extra]

    def listing(self) -> dict:
        return {"artifacts": list_keys(self.s3, self.artifacts), "logs": list_keys(self.s3, self.logs)}

    def assert_done(self) -> None:
        after = self.listing()
        assert_moved(self.before["artifacts"], after["artifacts"], self.moves["artifacts"])
        assert_moved(self.before["logs"], after["logs"], self.moves["logs"])

    def assert_nothing_changed(self) -> None:
        assert self.listing() == self.before

    def assert_nothing_lost(self) -> int:
        """Mid-run (after a kill, a failed run): every object is at its old key, its new key or
        both, with its content; nothing else changed. Returns how many moves are still to do."""
        left = 0
        for role in ("artifacts", "logs"):
            before, now, moves = self.before[role], self.listing()[role], self.moves[role]
            stray = sorted(k for k in now if k not in before and k not in moves.values() and not keys.is_canary(k))
            assert not stray, stray[:10]
            for key, info in before.items():
                new = moves.get(key)
                if new is None:
                    assert now.get(key) == info, key  # not ours to move: untouched
                    continue
                assert key in now or new in now, f"{key} lost: neither it nor {new} exists"
                for present in (key, new):
                    if present in now:
                        assert now[present] == info, (present, now[present], info)
                left += key in now
        return left


def test_rename_through_5_to_10_percent_faults_ends_exact(bigger, tmp_path):
    case = RenameCase(bigger)
    from tests.faultproxy import FaultProxy  # noqa: F401 - documents where fault_proxy comes from


@pytest.fixture
def rename_case(bigger):
    return RenameCase(bigger)
