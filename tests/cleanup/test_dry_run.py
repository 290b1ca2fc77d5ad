"""ponos-maint cleanup and orphans --dry-run: nothing changes, the counts are the real run's, and
the bill names the requests the real run makes; bad --prices are refused.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.fixtures.cleanup import one_error_line


@pytest.mark.slow
@pytest.mark.parametrize("mode", [(), ("--list-prefixes",)])
def test_dry_run_bills_the_requests_the_real_run_makes(folded, run_cli, mode):
    code, output, dry = run_cli("cleanup", "--dry-run", *folded.cli_args("--prices", "LIST=1,DELETE=0.5", *mode))

    assert code == 0, output
    bill = dry["bill"]
    assert "S3 requests: LIST" in output and "in requests" in output  # the one summary line
    assert bill["prices"]["LIST"] == 1.0 and bill["prices"]["DELETE"] == 0.5
    expected_usd = sum(n * bill["prices"][kind] / 1000 for kind, n in bill["requests"].items())
    assert bill["estimated_usd"]["requests"] == round(expected_usd, 4) > 0

    code, output, real = run_cli("cleanup", *folded.cli_args(*mode))

    assert code == 0, output
    sent = real["s3_requests"]
    for kind in ("LIST", "PUT", "HEAD", "GET"):
        assert bill["requests"].get(kind, 0) == sent.get(kind, 0), kind
    # DeleteObjects batches depend on timing (a buffer flushes after 0.1 s too): estimated.
    assert sent["DELETE"] / 2 <= bill["requests"]["DELETE"] <= 2 * sent["DELETE"]


def test_orphans_dry_run_bill_and_bad_prices(folded, run_cli):
    code, output, dry = run_cli("orphans", "--dry-run", *folded.cli_args("--grace", "0s"))
    assert code == 0, output
    assert dry["bill"]["requests"]["LIST"] >= 2 and "S3 requests:" in output

    for command in ("cleanup", "orphans"):
        code, output, _ = run_cli(command, "-q", "--dry-run", *folded.cli_args("--prices", "LIST=cheap"))
        assert code == 2
        assert "--prices" in one_error_line(output)


def test_dry_run_changes_nothing_and_counts_what_the_real_run_deletes(folded, run_cli):
    state, listing = folded.state(), folded.listing()
    due = folded.due_tasks()

    code, output, planned = run_cli("cleanup", "--dry-run", *folded.cli_args())

    assert code == 0, output
    assert folded.state() == state
    assert folded.listing() == listing
    with psycopg.connect(folded.dsn) as conn:  # not even the outbox table
        assert conn.execute("SELECT to_regclass('ponos_cleanup_outbox')").fetchone()[0] is None
    assert planned["dry_run"] is True
    assert planned["counts"]["tasks"] == len(due)
    expected = folded.expected_listing(listing, due)
    assert planned["counts"]["s3_objects"] == sum(len(listing[b]) - len(expected[b]) for b in listing)

    code, output, done = run_cli("cleanup", *folded.cli_args("--batch-size", "5"))

    assert code == 0, output
    for name in ("processes", "tasks", "artifacts", "task_parents", "gpus_released", "s3_objects", "s3_bytes"):
        assert planned["counts"].get(name, 0) == done["counts"].get(name, 0), name
