"""ponos-maint cleanup against S3 as production has it: a key XML cannot carry, a key S3 keeps
refusing, per-key answers that must be explicit. On every test S3 server, faults injected by
the proxy in front of it.
"""

from __future__ import annotations

import psycopg
import pytest

from maint import outbox
from ponoskit import keys
from tests.test_cleanup_fixtures import expected_state, folded, run_cli  # noqa: F401 - fixtures


def _due_task_with_artifacts(folded) -> str:
    with psycopg.connect(folded.dsn) as conn:
        return conn.execute(
            "SELECT a.task_id::text FROM ponos_artifact a WHERE a.task_id::text = ANY(%s) ORDER BY 1 LIMIT 1",
            (sorted(folded.due_tasks()),)).fetchone()[0]


MODES = {"keys": (), "prefixes": ("--list-prefixes",)}  # the keys rows name, or each task's prefix listed


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
