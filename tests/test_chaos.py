"""Chaos: S3 failing 5-10 % of the time, the server going away, SIGKILL again and again.

The jobs go through the fault proxy (tests/faultproxy.py) or are killed at random moments;
the state is always checked with the fixtures' direct clients, against what the data says it
must be (expected_moves / assert_moved of tests/fixtures/rename.py, expected_state /
expected_listing of tests/fixtures/cleanup.py), never against numbers written here.
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
from ponoskit.s3.listing import timestamp
from ponos_dev.seed import SeedSpec
from tests.helpers import list_keys
from tests.fixtures.cleanup import Folded, expected_state, maint_command, make_folded
from tests.fixtures.rename import assert_moved, cli_command, expected_moves, rename

# Every test here runs jobs again and again through faults or SIGKILLs: slow (scripts/test --fast leaves them out).
pytestmark = pytest.mark.slow

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


def assert_faults_hit(proxy, operations, *, kinds=EVERY_FAULT, at_least=50, most=0.12) -> None:
    """The faults really hit the job's traffic, of every kind, at about the rate asked for
    (``most`` higher where a few planted faults weigh on few requests)."""
    fired = fired_kinds(proxy)
    assert kinds <= set(fired), fired
    assert sum(fired.values()) >= at_least, fired
    requests = sum(proxy.requests[op] for op in operations)
    failed = sum(n for (_, op), n in proxy.counts.items() if op in operations)
    assert 0.03 <= failed / requests <= most, (failed, requests, dict(proxy.counts))


def error_lines(text: str) -> list[str]:
    return [line for line in (text or "").splitlines() if line.startswith("Error")]


def no_traceback(text: str) -> None:
    assert "Traceback" not in (text or ""), text[-3000:]


@pytest.fixture
def proxy(fault_proxy):
    """The fault proxy, tuned for throughput: its handler writes a response's headers and body
    in two sends, and without TCP_NODELAY each answer waits ~40 ms for the client's delayed
    ACK (a rename with --workers 2 took 43 s through it instead of 6 s). A client SIGKILLed
    mid-request makes its server print a traceback per connection: noise, kept quiet."""
    fault_proxy._server.RequestHandlerClass.disable_nagle_algorithm = True
    fault_proxy._server.handle_error = lambda request, client_address: None
    return fault_proxy


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

    def assert_nothing_lost(self) -> tuple[int, int]:
        """Mid-run: every object is at its old key, its new key or both, with its content;
        nothing else changed (a probe's canary aside). Returns how many sources are left and
        how many new keys exist."""
        left = copied = 0
        now = self.listing()
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
                copied += new in current
        return left, copied


@pytest.fixture
def rename_case(bigger):
    return RenameCase(bigger)


@pytest.fixture
def small_rename_case(seeded):
    return RenameCase(seeded)


def test_rename_through_5_to_10_percent_faults_ends_exact(rename_case, proxy, tmp_path):
    case = rename_case
    add_faults(proxy, RENAME_OPERATIONS)
    through = {"AWS_ENDPOINT_URL": proxy.endpoint}
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
    assert_faults_hit(proxy, RENAME_OPERATIONS)

    proxy.clear()
    code, again, stderr = rename(through, *case.args(), tmp_path=tmp_path)
    assert code == 0, stderr[-3000:]
    assert again["counts"].get("moved", 0) == 0 and again["counts"].get("already_moved", 0) == 0, again["counts"]
    assert again["counts"]["new_layout"] == case.total
    case.assert_done()


@pytest.mark.parametrize("when", ["before-start", "mid-copy", "at-logs-listing"])
def test_server_going_away(small_rename_case, proxy, tmp_path, when):
    case = small_rename_case
    through = {"AWS_ENDPOINT_URL": proxy.endpoint}
    if when == "before-start":
        proxy.down()  # until up()
    elif when == "mid-copy":
        proxy.add("down", operations=("CopyObject",), after=case.total // 3, times=1, seconds=3)
    else:
        proxy.add("down", operations=("ListObjectsV2",), bucket=case.buckets["logs"], times=1, seconds=3)

    code, report, stderr = rename(through, *case.args("--retry-deadline", "1s"), tmp_path=tmp_path)

    assert proxy.fired("down") > 0, dict(proxy.counts)
    no_traceback(stderr)
    if when == "before-start":
        assert code == 75, stderr
        assert len(error_lines(stderr)) == 1, stderr
        assert report["errors"], report  # the report is written all the same
        assert case.listing() == case.before  # nothing changed
        proxy.up()
    else:
        assert code in (0, 75), (code, stderr[-3000:])
        if code == 75:
            assert len(error_lines(stderr)) == 1, stderr
            assert report["errors"], report
        case.assert_nothing_lost()
    proxy.clear()  # healthy again (a 'down' rule's outage ends too)

    code, report, stderr = rename(through, *case.args("--retry-deadline", "20s"), tmp_path=tmp_path)
    assert code == 0, stderr[-3000:]
    case.assert_done()


# --- the cleanup --------------------------------------------------------------------------

@pytest.fixture
def folded_large(make_database, context_factory, make_bucket) -> Folded:
    """About 650 due tasks: over a thousand S3 requests, and work for twenty kills."""
    return make_folded(make_database, context_factory, make_bucket,
                       SeedSpec(processes=350, seed=9, now=datetime.now(timezone.utc)))


class CleanupCase:
    """A folded dataset and what the cleanup must end with, computed before it runs."""

    def __init__(self, folded: Folded, *, prefixes: bool = False):
        self.folded = folded
        self.prefixes = prefixes  # --list-prefixes: everything under a due task's prefix goes
        self.state, self.before, self.due = folded.state(), folded.listing(), folded.due_tasks()
        self.kept = {task for task, _ in self.state["tasks"]} - self.due
        stuck = {task for task, process in self.state["tasks"] if process == folded.stuck_process}
        assert self.due and self.kept and stuck <= self.kept

    def args(self, *extra: str, endpoint: str | None = None) -> list[str]:
        args = self.folded.cli_args(*extra)
        if endpoint:
            args[args.index("--endpoint-url") + 1] = endpoint
        return args

    def quiesce(self, timeout: float = 30.0) -> None:
        """Wait until the killed run's sessions are gone: a COMMIT it had sent may still land,
        and the checks below read the database in several statements."""
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.folded.dsn, autocommit=True) as conn:
            while conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                               "AND application_name = 'ponos-cleanup'").fetchone()[0]:
                assert time.monotonic() < deadline, "the killed run's sessions never went away"
                time.sleep(0.01)

    def remaining(self) -> set[str]:
        with psycopg.connect(self.folded.dsn) as conn:
            return {r[0] for r in conn.execute("SELECT id::text FROM ponos_task").fetchall()}

    def assert_consistent(self) -> int:
        """Mid-run: whole due tasks gone from the database, nothing else; every object gone
        belongs to a gone task, every object of a gone task still there is owed in the
        outbox. Returns how many due tasks are left."""
        folded = self.folded
        remaining = self.remaining()
        assert self.kept <= remaining, sorted(self.kept - remaining)[:5]  # nothing of a live task
        gone = self.due - remaining
        assert folded.state() == expected_state(self.state, gone)
        owed = {(bucket, key) for bucket, key, _ in folded.outbox_rows()}
        expected = folded.expected_listing(self.before, gone, prefixes=self.prefixes)
        now = folded.listing()
        for role, bucket in (("artifacts", folded.artifacts), ("logs", folded.logs)):
            assert set(now[role]) <= set(self.before[role]), sorted(set(now[role]) - set(self.before[role]))[:5]
            missing = set(self.before[role]) - set(now[role])
            assert missing <= set(self.before[role]) - set(expected[role]), sorted(missing - (
                set(self.before[role]) - set(expected[role])))[:5]  # only objects of gone tasks
            for key in set(now[role]) - set(expected[role]):
                assert any(bucket == b and key.startswith(k) for b, k in owed), (role, key)
            assert all(now[role][k] == self.before[role][k] for k in now[role])
        return len(self.due & remaining)

    def assert_done(self) -> None:
        folded = self.folded
        assert folded.state() == expected_state(self.state, self.due)
        assert folded.listing() == folded.expected_listing(self.before, self.due, prefixes=self.prefixes)
        assert folded.outbox_rows() == set()
        assert self.kept <= self.remaining()


@pytest.mark.parametrize("listing", [False, True], ids=["keys-from-rows", "list-prefixes"])
def test_cleanup_through_5_to_10_percent_faults_ends_exact(folded_large, proxy, run_cli, listing):
    case = CleanupCase(folded_large, prefixes=listing)
    add_faults(proxy, CLEANUP_OPERATIONS, error_200_on=())
    # DeleteObjects answering 200 with an <Error> body: nothing was deleted, nothing confirmed.
    # Few requests are DeleteObjects (1,000 keys each): these few fire surely, early on.
    proxy.add("error_200", probability=0.3, operations=("DeleteObjects",), after=10, times=5 if listing else 2)
    # Deleting the keys the rows name needs no LIST and few requests: smaller batches give the
    # faults as many requests to hit as the listing mode has.
    mode = ["--list-prefixes", "--batch-size", "10"] if listing else ["--batch-size", "1"]
    if not listing:  # 70-170 requests: each kind also fires once for sure, early on
        for nth, kind in enumerate(sorted(EVERY_FAULT - {"error_200"})):
            proxy.add(kind, operations=("DeleteObjects",), after=5 + 3 * nth, times=1, seconds=0.2)
    args = case.args(*mode, "--retry-deadline", "20s", "--s3-max-attempts", "2", endpoint=proxy.endpoint)
    runs = []
    for _ in range(MAX_RUNS):
        code, output, report = run_cli("cleanup", *args)
        runs.append((code, report and report["status"], report and dict(report["counts"])))
        assert code in ALLOWED_EXITS, (code, output[-3000:])
        no_traceback(output)
        if code == 0:
            break
        case.assert_consistent()
    else:
        pytest.fail(f"no run exited 0 in {MAX_RUNS}: {runs}")

    case.assert_done()
    assert report["status"] == "done"
    assert_faults_hit(proxy, CLEANUP_OPERATIONS, kinds=EVERY_FAULT, at_least=30 if listing else 8,
                      most=0.12 if listing else 0.2)

    proxy.clear()
    state, listing = case.folded.state(), case.folded.listing()
    code, output, again = run_cli("cleanup", *args)
    assert code == 0, output[-3000:]
    assert again["counts"].get("tasks", 0) == again["counts"].get("s3_objects", 0) == 0, again["counts"]
    assert case.folded.state() == state and case.folded.listing() == listing
    case.assert_done()


# --- SIGKILL, again and again -------------------------------------------------------------

def wait_until(proc: subprocess.Popen, condition, timeout: float = 60.0) -> bool:
    """Poll ``condition`` until it holds (True) or the process ended on its own (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the condition to kill on never came"
        time.sleep(0.005)
    return True


def run_killed(command: list[str], env: dict, log_path, trigger) -> tuple[int, str]:
    """Start ``command``, let ``trigger(proc)`` return at the moment to kill, SIGKILL it (unless it
    ended first); return its exit code (-9 when killed) and its output."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        try:
            trigger(proc)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            code = proc.wait()
    return code, log_path.read_text()


def after_first_request(proxy, delay: float):
    """The random kill: ``delay`` seconds after the job's first S3 request.

    Counted from the job's first request (the command goes through ``proxy``, which counts
    them), not from the fork: the interpreter's own start-up takes 0.3-0.8 s on a loaded machine
    and a kill there tells nothing; from the first request the window covers the preflight
    and the work alike, on a fast machine as on a slow one.
    """
    seen = sum(proxy.requests.values())

    def trigger(proc):
        if wait_until(proc, lambda: sum(proxy.requests.values()) > seen):
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                pass
    return trigger


def kill_again_and_again(command: list[str], env: dict, tmp_path, proxy, *, kills: int, seed: int, after_each,
                         first_triggers=(), max_starts: int = 60) -> list[dict]:
    """SIGKILL ``command`` once at each of ``first_triggers`` (chosen moments), then ``kills``
    times at random, 0.15-0.9 s after its first S3 request (a seeded random); every start
    resumes what the killed ones left. ``after_each(run)`` checks the state between two starts
    and returns what it saw. One entry per start; code -9: killed."""
    rng = random.Random(seed)
    runs: list[dict] = []
    chosen = list(first_triggers)
    while sum(r["code"] == -signal.SIGKILL for r in runs) < kills + len(first_triggers):
        assert len(runs) < max_starts, summary(runs)
        if chosen:
            what, trigger = chosen.pop(0)
        else:
            delay = rng.uniform(0.15, 0.9)
            what, trigger = round(delay, 2), after_first_request(proxy, delay)
        code, log = run_killed(command, env, tmp_path / f"run-{len(runs)}.log", trigger)
        run = {"when": what, "code": code, "log": log}
        run.update(after_each(run))
        runs.append(run)
    return runs


def summary(runs: list[dict]) -> list[tuple]:
    return [tuple(v for k, v in r.items() if k != "log") for r in runs]


def test_rename_sigkill_20_times_then_resume_is_exact(rename_case, proxy, s3_env, tmp_path):
    case = rename_case
    checkpoint = tmp_path / "rename.checkpoint"
    # Through the proxy, healthy: it tells when the job starts and where it is.
    command = cli_command("s3-rename", "--endpoint-url", proxy.endpoint,
                   *case.args("--checkpoint", str(checkpoint), "--workers", "2"))
    env = {**os.environ, **s3_env}
    moves = proxy.add("hook", action=lambda: None, operations=("CopyObject",), skip_key=keys.CANARY_PREFIX)
    # The probe's second canary waits at the proxy: the first kill lands inside the preflight.
    held = proxy.add("hook", action=lambda: time.sleep(2), operations=("PutObject",), key=keys.CANARY_PREFIX,
                     after=1, times=1)

    def in_probe(proc):
        wait_until(proc, lambda: held.fired)
        time.sleep(0.1)

    def mid_move(proc):
        wait_until(proc, lambda: moves.fired >= 50)

    def after_each(run) -> dict:
        if run["code"] != -signal.SIGKILL:
            assert run["code"] == 0, run["log"][-3000:]  # it finished before its kill
        no_traceback(run["log"])
        if checkpoint.exists():
            saved = json.loads(checkpoint.read_text())  # never half written
            assert saved["identity"]["job"] == "s3-rename"
            assert set(saved["state"]) <= set(case.buckets.values()), saved
            for values in saved["state"].values():
                assert isinstance(values["after"], (str, type(None))) and isinstance(values["complete"], bool)
        left, copied = case.assert_nothing_lost()
        return {"left": left, "copied": copied, "checkpoint": checkpoint.exists()}

    runs = kill_again_and_again(command, env, tmp_path, proxy, kills=KILLS, seed=20240611, after_each=after_each,
                                first_triggers=[("in-probe", in_probe), ("mid-move", mid_move)])
    assert runs[1]["copied"] >= 25, summary(runs)  # the second kill landed mid-move

    report_file = tmp_path / "final.json"
    done = subprocess.run([*command, "--workers", "16", "--report", str(report_file)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    after = case.listing()
    left_behind = {role: [k for k in listing if keys.is_canary(k)] for role, listing in after.items()}
    for role in ("artifacts", "logs"):  # the rename's own work, exact
        assert_moved(case.before[role], {k: v for k, v in after[role].items() if not keys.is_canary(k)},
                     case.moves[role])
    # ...and nothing else in the buckets but the canaries of killed probes young enough to
    # be another shard's live probe: the next run past CANARY_MAX_AGE removes them
    # (test_s3_production.test_canaries_of_killed_probes_are_swept_once_stale).
    from ponoskit.s3.capabilities import CANARY_MAX_AGE
    for role, stray in left_behind.items():
        bucket = case.buckets[role]
        for key in stray:
            modified = timestamp(case.s3.head_object(Bucket=bucket, Key=key)["LastModified"])
            age = datetime.now(timezone.utc) - modified
            assert age < CANARY_MAX_AGE, (key, age)


def test_cleanup_sigkill_20_times_then_resume_is_exact(folded_large, proxy, run_cli, tmp_path):
    case = CleanupCase(folded_large)
    # Every listing takes 0.3 s (16 at a time: 53 targets a second at most, some 1,300 to do,
    # about 18 s of kill windows): the S3 side of a run lasts, so kills land in the purge behind
    # the batches and in the next run's outbox drain, and the work outlasts the twenty kills on
    # any machine.
    proxy.add("slow", operations=("ListObjectsV2",), seconds=0.3)
    command = [*maint_command(), "cleanup", *case.args("--batch-size", "1", endpoint=proxy.endpoint)]

    def amid_batches(proc):  # the first kill: once a few batches committed, many still due
        wait_until(proc, lambda: len(case.due & case.remaining()) <= len(case.due) * 0.95)

    def after_each(run) -> dict:
        if run["code"] != -signal.SIGKILL:
            # It finished before its kill, or the killed run's session still held the lock.
            assert run["code"] in (0, 3), run["log"][-3000:]
        no_traceback(run["log"])
        case.quiesce()
        left = case.assert_consistent()
        return {"left": left, "owed": len(case.folded.outbox_rows())}

    runs = kill_again_and_again(command, dict(os.environ), tmp_path, proxy, kills=KILLS, seed=20240612,
                                after_each=after_each, first_triggers=[("amid-batches", amid_batches)])
    assert 0 < runs[0]["left"] < len(case.due) and runs[0]["owed"], summary(runs)

    proxy.clear()
    code, output, report = run_cli("cleanup", *case.args())
    assert code == 0, output[-3000:]
    case.assert_done()
