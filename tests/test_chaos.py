"""Chaos: S3 failing 5-10 % of the time, the server going away, SIGKILL again and again.

The jobs go through the fault proxy (tests/faultproxy.py) or are killed at random moments;
the state is always checked with the fixtures' direct clients, against what the data says it
must be (expected_moves / assert_moved of tests/test_s3_rename.py, expected_state /
expected_listing of tests/test_cleanup_fixtures.py), never against numbers written here.
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
from tests.test_cleanup_fixtures import Folded, expected_state, maint_command, make_folded, run_cli  # noqa: F401
from tests.test_s3_rename import _cli, assert_moved, bigger, expected_moves, rename  # noqa: F401 - fixture

RENAME_OPERATIONS = ("CopyObject", "DeleteObjects", "DeleteObject", "HeadObject", "ListObjectsV2")
CLEANUP_OPERATIONS = ("ListObjectsV2", "DeleteObjects", "DeleteObject")
EVERY_FAULT = {"slowdown", "internal", "reset_before", "reset_after", "slow", "error_200"}
ALLOWED_EXITS = (0, 1, 75)  # done; something left (run again); transient (run again)
SHARE = 0.013  # per fault kind: five or six kinds fail 6.3-7.5 % of the requests
MAX_RUNS = 6
KILLS = 20


def add_faults(proxy, operations, *, error_200_on=("CopyObject",)) -> None:
    """About 7 % of the requests of ``operations`` fail, in every way the proxy knows."""
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


def assert_faults_hit(proxy, operations, *, kinds=EVERY_FAULT, at_least=50) -> None:
    """The faults really hit the job's traffic, of every kind, at about the rate asked for."""
    fired = fired_kinds(proxy)
    assert kinds <= set(fired), fired
    assert sum(fired.values()) >= at_least, fired
    requests = sum(proxy.requests[op] for op in operations)
    failed = sum(n for (_, op), n in proxy.counts.items() if op in operations)
    assert 0.03 <= failed / requests <= 0.12, (failed, requests, dict(proxy.counts))


def error_lines(text: str) -> list[str]:
    return [line for line in (text or "").splitlines() if line.startswith("Error")]


def no_traceback(text: str) -> None:
    assert "Traceback" not in (text or ""), text[-3000:]


# --- the rename ---------------------------------------------------------------------------

class RenameCase:
    """A seeded dataset and what the rename must end with, computed before it runs."""

    def __init__(self, data: dict):
        self.dsn, self.s3 = data["dsn"], data["ctx"].s3
        self.buckets = {"artifacts": data["artifacts"], "logs": data["logs"]}
        self.before = self.listing()
        self.moves = expected_moves(self.dsn, self.before["artifacts"], self.before["logs"])
        assert self.moves["artifacts"] and self.moves["logs"]

    @property
    def total(self) -> int:
        return len(self.moves["artifacts"]) + len(self.moves["logs"])

    def args(self, *extra: str) -> list[str]:
        return ["--artifacts-bucket", self.buckets["artifacts"], "--logs-bucket", self.buckets["logs"],
                "--dsn", self.dsn, *extra]

    def listing(self) -> dict:
        return {role: list_keys(self.s3, bucket) for role, bucket in self.buckets.items()}

    def assert_done(self) -> None:
        """Every legacy object at its new key with its size and ETag; nothing else changed."""
        after = self.listing()
        for role in ("artifacts", "logs"):
            assert_moved(self.before[role], after[role], self.moves[role])

    def assert_nothing_lost(self) -> int:
        """Mid-run: every object is at its old key, its new key or both, with its content;
        nothing else changed (a probe's canary aside). Returns how many moves are left."""
        left, now = 0, self.listing()
        for role in ("artifacts", "logs"):
            before, moves, current = self.before[role], self.moves[role], now[role]
            targets = set(moves.values())
            stray = sorted(k for k in current if k not in before and k not in targets and not keys.is_canary(k))
            assert not stray, stray[:10]
            for key, info in before.items():
                new = moves.get(key)
                if new is None:
                    assert current.get(key) == info, key  # not the rename's to move: untouched
                    continue
                assert key in current or new in current, f"{key} lost: neither it nor {new} exists"
                for present in (key, new):
                    if present in current:
                        assert current[present] == info, (present, current[present], info)
                left += key in current
        return left


@pytest.fixture
def rename_case(bigger):
    return RenameCase(bigger)


@pytest.fixture
def small_rename_case(seeded):
    return RenameCase(seeded)


def test_rename_through_5_to_10_percent_faults_ends_exact(rename_case, fault_proxy, tmp_path):
    case = rename_case
    add_faults(fault_proxy, RENAME_OPERATIONS)
    through = {"AWS_ENDPOINT_URL": fault_proxy.endpoint}
    runs = []
    for _ in range(MAX_RUNS):
        code, report, stderr = rename(through, *case.args("--retry-deadline", "20s"), tmp_path=tmp_path)
        runs.append((code, report and dict(report["counts"]), report and report.get("errors")))
        assert code in ALLOWED_EXITS, (code, stderr[-3000:])
        no_traceback(stderr)
        if code == 0:
            break
        case.assert_nothing_lost()
    else:
        pytest.fail(f"no run exited 0 in {MAX_RUNS}: {runs}")

    case.assert_done()
    print("DEBUG runs", runs, fired_kinds(fault_proxy), dict(fault_proxy.requests))
    assert_faults_hit(fault_proxy, RENAME_OPERATIONS)

    fault_proxy.clear()
    code, again, stderr = rename(through, *case.args(), tmp_path=tmp_path)
    assert code == 0, stderr[-3000:]
    assert again["counts"].get("moved", 0) == 0 and again["counts"].get("already_moved", 0) == 0, again["counts"]
    assert again["counts"]["new_layout"] == case.total
    case.assert_done()


@pytest.mark.parametrize("when", ["before-start", "mid-copy", "at-logs-listing"])
def test_server_going_away(small_rename_case, fault_proxy, tmp_path, when):
    case = small_rename_case
    through = {"AWS_ENDPOINT_URL": fault_proxy.endpoint}
    if when == "before-start":
        fault_proxy.down()  # until up()
    elif when == "mid-copy":
        fault_proxy.add("down", operations=("CopyObject",), after=case.total // 3, times=1, seconds=3)
    else:
        fault_proxy.add("down", operations=("ListObjectsV2",), bucket=case.buckets["logs"], times=1, seconds=3)

    code, report, stderr = rename(through, *case.args("--retry-deadline", "1s"), tmp_path=tmp_path)

    assert fault_proxy.fired("down") > 0, dict(fault_proxy.counts)
    print("DEBUG", when, code, dict(fault_proxy.counts), error_lines(stderr), report and report["counts"])
    no_traceback(stderr)
    if when == "before-start":
        assert code == 75, stderr
        assert len(error_lines(stderr)) == 1, stderr
        assert case.listing() == case.before  # nothing changed
        fault_proxy.up()
    else:
        assert code in (0, 75), (code, stderr[-3000:])
        if code == 75:
            assert len(error_lines(stderr)) == 1, stderr
        case.assert_nothing_lost()
    fault_proxy.clear()  # healthy again (a 'down' rule's outage ends too)

    code, report, stderr = rename(through, *case.args("--retry-deadline", "20s"), tmp_path=tmp_path)
    assert code == 0, stderr[-3000:]
    case.assert_done()
