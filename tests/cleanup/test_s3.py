"""ponos-maint cleanup against S3 as production has it: the keys rows name or --list-prefixes (and
dense batches listed by shared prefix), an older run's outbox, a key XML cannot carry, a key S3
keeps refusing, --max-rps, the permission preflight. On every test S3 server, faults injected
by the proxy in front of it.
"""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest

from maint import outbox
from maint.outbox import Target
from maint.purge import Purger
from ponoskit import keys, tasks
from tests.fixtures.cleanup import expected_state, no_outbox, one_error_line, through, upload
from tests.helpers import list_keys


def _due_task_with_artifacts(folded) -> str:
    with psycopg.connect(folded.dsn) as conn:
        return conn.execute(
            "SELECT a.task_id::text FROM ponos_artifact a WHERE a.task_id::text = ANY(%s) ORDER BY 1 LIMIT 1",
            (sorted(folded.due_tasks()),)).fetchone()[0]


MODES = {"keys": (), "prefixes": ("--list-prefixes",)}  # the keys rows name, or each task's prefix listed


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_a_key_xml_cannot_carry_never_strands_the_others_of_its_batch(folded, run_cli, mode):
    task = _due_task_with_artifacts(folded)
    bell = folded.add_artifact(task, "bell\x07and\uffffnonchar.bin", b"ring")
    state, listing, due = folded.state(), folded.listing(), folded.due_tasks()
    assert bell in listing["artifacts"]

    code, output, report = run_cli("cleanup", *folded.cli_args(*MODES[mode]))

    assert code == 0, output
    assert folded.state() == expected_state(state, due)
    # The bell key and its neighbours gone.
    assert folded.listing() == folded.expected_listing(listing, due, prefixes=mode == "prefixes")
    assert folded.outbox_rows() == set()
    assert report["counts"]["s3_objects"] == sum(len(v) for v in listing.values()) - sum(
        len(v) for v in folded.listing().values())


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_a_key_s3_keeps_refusing_is_retried_then_set_aside_and_never_stalls_the_rest(folded, run_cli, fault_proxy,
                                                                                    mode):
    task = _due_task_with_artifacts(folded)
    # XML cannot carry it, so it is deleted alone, with DeleteObject; a bucket policy denies
    # deleting this one key (403), and only this one.
    stubborn = folded.add_artifact(task, "protected/by-a-policy\x07.bin", b"kept by policy")
    fault_proxy.add("denied", operations=("DeleteObject",), key="protected/by-a-policy\x07.bin")
    state, listing, due = folded.state(), folded.listing(), folded.due_tasks()
    prefixes = mode == "prefixes"
    args = folded.cli_args("--batch-size", "5", *MODES[mode])
    args[args.index("--endpoint-url") + 1] = fault_proxy.endpoint

    codes = []
    for _ in range(outbox.MAX_ATTEMPTS):
        code, output, report = run_cli("cleanup", *args)
        codes.append(code)
        # Every other due task, row and file, is gone from the first run on.
        assert folded.state() == expected_state(state, due), output
        gone = folded.expected_listing(listing, due, prefixes=prefixes)
        gone["artifacts"][stubborn] = listing["artifacts"][stubborn]
        assert folded.listing() == gone
    assert codes == [1] * outbox.MAX_ATTEMPTS  # never 0 while something in scope is left
    assert report["counts"]["outbox_set_aside"] == 1
    # The target set aside: the task's prefix (listed), or the key itself (named by its row).
    assert report["items"]["outbox_set_aside_rows"][0]["key"] == (keys.artifact_prefix(task) if prefixes else stubborn)
    assert "AccessDenied" in report["items"]["outbox_set_aside_rows"][0]["last_error"]

    # Set aside: the next run does not try again (the key is not touched) and still says so.
    before = fault_proxy.fired("denied")
    code, output, report = run_cli("cleanup", *args)
    assert code == 1 and fault_proxy.fired("denied") == before and "--retry-set-aside" in output

    # The policy is fixed: --retry-set-aside deletes it and the outbox empties.
    fault_proxy.clear()
    code, output, report = run_cli("cleanup", *args, "--retry-set-aside")
    assert code == 0, output
    assert folded.listing() == folded.expected_listing(listing, due, prefixes=prefixes)
    assert folded.outbox_rows() == set()


# --- the keys rows name, --list-prefixes, an older run's outbox ------------------------------

def test_list_prefixes_lists_and_deletes_objects_without_rows_too(folded, run_cli):
    state, listing, due = folded.state(), folded.listing(), folded.due_tasks()

    code, output, report = run_cli("cleanup", *folded.cli_args("--list-prefixes", "--batch-size", "7"))

    assert code == 0, output
    assert folded.state() == expected_state(state, due)
    expected = folded.expected_listing(listing, due, prefixes=True)
    assert folded.listing() == expected
    assert expected != folded.expected_listing(listing, due)  # objects without rows were there, and went
    assert report["counts"]["s3_listings"] > 0 and report["s3_requests"]["LIST"] > 2 * 2
    assert report["counts"]["s3_objects"] == sum(len(listing[b]) - len(expected[b]) for b in listing)
    assert folded.outbox_rows() == set()


def test_an_outbox_written_by_an_older_run_still_drains(folded, run_cli):
    """Prefix targets (what earlier releases wrote) and key targets, owed for tasks already gone."""
    state, listing, due = folded.state(), folded.listing(), folded.due_tasks()
    older, newer = sorted(due)[:2], sorted(due)[2:4]
    with psycopg.connect(folded.dsn, autocommit=True) as conn:
        outbox.ensure(conn)
        with conn.transaction():
            owed = outbox.targets_for_tasks(older, artifacts_bucket=folded.artifacts, logs_bucket=folded.logs)
            owed += outbox.targets_for_rows(conn, newer, artifacts_bucket=folded.artifacts, logs_bucket=folded.logs)
            tasks.delete_tasks(conn, [*older, *newer])
            outbox.add(conn, owed)
    assert {kind for _, _, kind in folded.outbox_rows()} == {outbox.KEY, outbox.PREFIX}

    code, output, report = run_cli("cleanup", *folded.cli_args())

    assert code == 0, output
    assert report["counts"]["outbox_rows_pending_at_start"] == len(owed)
    assert folded.outbox_rows() == set()
    assert folded.state() == expected_state(state, due)
    # The older run's prefixes were listed (objects without rows went); the rest, keys only.
    expected = folded.expected_listing(listing, due)
    prefixed = folded.expected_listing(listing, set(older), prefixes=True)
    assert folded.listing() == {role: {k: v for k, v in expected[role].items() if k in prefixed[role]}
                                for role in expected}


def test_dense_batch_lists_by_shared_prefix_and_deletes_exactly_its_targets(
        context_factory, make_bucket, make_database):
    """One bucket for logs and artifacts, foreign keys around and between the targets."""
    ctx = context_factory(make_database(None))
    bucket = make_bucket("dense")
    tasks = sorted(str(uuid.uuid4()) for _ in range(80))
    targeted = tasks[20:70]
    objects = [keys.artifact_key(t, name) for t in tasks for name in ("a.txt", "b/c.txt", "z z/%41+#?.bin")]
    objects += [keys.log_key(t) for t in tasks]
    objects += [keys.log_key(t) + ".old" for t in targeted]  # not the log: stays
    objects += [keys.artifact_prefix(targeted[5])]  # a folder marker under a target: goes
    upload(ctx, [(bucket, key) for key in objects])
    targets = [Target(bucket, keys.artifact_prefix(t), "prefix") for t in targeted]
    targets += [Target(bucket, keys.log_key(t), "key") for t in targeted]
    purger = Purger(ctx, count_only=False)

    purger.submit(targets, dense=True)
    purger.close()

    gone = {key for key in objects if any(target.covers(key) for target in targets)}
    assert set(list_keys(ctx.s3, bucket)) == set(objects) - gone
    assert ctx.report.counts["s3_objects"] == len(gone) == 4 * len(targeted) + 1
    assert ctx.report.counts["s3_listings"] < len(targets) / 2  # shared prefixes, not one per target


# --- --max-rps ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.s3_servers("seaweedfs")
@pytest.mark.parametrize("command", ["cleanup", "orphans"])
def test_max_rps_keeps_the_request_rate_under_the_ceiling(folded, run_cli, fault_proxy, command):
    if command == "orphans":  # tasks gone behind S3's back: one listing per task's entry
        with psycopg.connect(folded.dsn, autocommit=True) as conn, conn.transaction():
            tasks.delete_tasks(conn, sorted(folded.due_tasks()))
    sent: list[float] = []
    fault_proxy.add("hook", operations=("ListObjectsV2",), action=lambda: sent.append(time.monotonic()))
    extra = ("--list-prefixes", "--batch-size", "3") if command == "cleanup" else ("--grace", "0s")
    rps = 40

    code, output, report = run_cli(command, "--dry-run", *through(folded, fault_proxy, "--max-rps", str(rps), *extra))

    assert code == 0, output
    assert len(sent) >= 20, "enough requests to see a rate"
    assert sent[-1] - sent[0] >= 0.9 * (len(sent) - 1) / rps
    busiest = max(sum(1 for t in sent if start <= t < start + 1.0) for start in sent)
    assert busiest <= rps + 1


# --- the permission preflight ------------------------------------------------------------

@pytest.mark.parametrize("command", ["cleanup", "orphans"])
def test_a_refused_delete_is_found_by_the_canary_exit_2_before_any_change(folded, run_cli, fault_proxy, command):
    state, listing = folded.state(), folded.listing()
    fault_proxy.add("denied", operations=("DeleteObject", "DeleteObjects"), bucket=folded.logs)

    code, output, report = run_cli(command, "-q", *through(folded, fault_proxy))

    assert code == 2, output
    line = one_error_line(output)
    assert "s3:DeleteObject" in line and folded.logs in line
    assert fault_proxy.fired("denied") >= 1
    assert folded.state() == state and no_outbox(folded)
    assert folded.listing() == listing
    canaries = [k for objects in folded.listing(canaries=True).values() for k in objects if keys.is_canary(k)]
    assert len(canaries) == 1  # the one it could not delete (a later run sweeps it, once stale)
    assert report["status"] == "refused"


def test_a_dry_run_checks_listing_only_and_names_a_missing_s3_listbucket(folded, run_cli, fault_proxy):
    code, output, report = run_cli("cleanup", "--dry-run", *through(folded, fault_proxy))
    assert code == 0, output
    assert fault_proxy.requests["PutObject"] == 0
    assert fault_proxy.requests["DeleteObject"] == fault_proxy.requests["DeleteObjects"] == 0

    fault_proxy.add("denied", operations=("ListObjectsV2",), bucket=folded.artifacts)
    code, output, report = run_cli("cleanup", "-q", "--dry-run", *through(folded, fault_proxy))

    assert code == 2, output
    line = one_error_line(output)
    assert "s3:ListBucket" in line and folded.artifacts in line


def test_a_refused_canary_put_is_no_reason_to_stop_a_job_that_never_writes(folded, run_cli, fault_proxy):
    state, listing, due = folded.state(), folded.listing(), folded.due_tasks()
    fault_proxy.add("denied", operations=("PutObject",))

    code, output, report = run_cli("cleanup", *through(folded, fault_proxy))

    assert code == 0, output
    assert fault_proxy.fired("denied") == 2  # one canary per bucket
    assert all("s3:PutObject refused" in " ".join(p["notes"]) for p in report["s3_permissions"].values())
    assert fault_proxy.requests["DeleteObject"] >= 2  # the delete was checked all the same
    assert folded.state() == expected_state(state, due)
    assert folded.listing() == folded.expected_listing(listing, due)
