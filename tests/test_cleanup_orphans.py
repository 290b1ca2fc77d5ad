"""The orphan sweep: new-layout objects whose task no longer exists, older than the grace period."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from ponoskit import keys
from tests.test_cleanup_fixtures import folded, later, run_cli, upload  # noqa: F401 - fixtures


@pytest.fixture
def with_orphans(folded):
    """Delete two tasks behind S3's back, add stray objects; return (folded, orphan keys per role)."""
    with psycopg.connect(folded.dsn, autocommit=True) as conn:
        gone = [r[0] for r in conn.execute(
            "SELECT id::text FROM ponos_task WHERE expiry > now() ORDER BY id LIMIT 2").fetchall()]
        live = conn.execute("SELECT id::text FROM ponos_task WHERE expiry > now() ORDER BY id DESC LIMIT 1"
                            ).fetchone()[0]
        with conn.transaction():
            conn.execute("UPDATE ponos_gpu SET task_id = NULL WHERE task_id = ANY(%s::uuid[])", (gone,))
            conn.execute("DELETE FROM ponos_task_parents WHERE from_task_id = ANY(%(ids)s::uuid[]) "
                         "OR to_task_id = ANY(%(ids)s::uuid[])", {"ids": gone})
            conn.execute("DELETE FROM ponos_artifact WHERE task_id = ANY(%s::uuid[])", (gone,))
            conn.execute("DELETE FROM ponos_task WHERE id = ANY(%s::uuid[])", (gone,))
    stray, stray_log = str(uuid.uuid4()), str(uuid.uuid4())
    upload(folded.ctx, [
        (folded.artifacts, keys.artifact_key(stray, "left over.txt")),
        (folded.logs, keys.log_key(stray_log)),
        # Legacy shapes stay, whether their task exists or not (the rename may still move them):
        (folded.artifacts, keys.legacy_artifact_key(uuid.uuid4(), live, "legacy.txt")),
        (folded.artifacts, keys.legacy_artifact_key(uuid.uuid4(), uuid.uuid4(), "unknown.txt")),
        (folded.logs, keys.legacy_log_key(uuid.uuid4(), 1, uuid.uuid4())),
        (folded.logs, keys.log_key(stray_log) + ".bak"),  # not a log key shape: stays
    ])
    listing = folded.listing()
    orphans = {
        "artifacts": {k for k in listing["artifacts"]
                      if any(k.startswith(keys.artifact_prefix(t)) for t in [*gone, stray])},
        "logs": {keys.log_key(t) for t in [*gone, stray_log] if keys.log_key(t) in listing["logs"]},
    }
    assert orphans["artifacts"] and len(orphans["logs"]) >= 2
    return folded, orphans


def _args(folded, *extra):
    return ["orphans", *folded.cli_args("--before", later(folded.now, days=2), *extra)]


def test_orphan_sweep_dry_run_then_grace_then_exactly_the_orphans(with_orphans, run_cli):
    folded, orphans = with_orphans
    listing, state = folded.listing(), folded.state()
    count = sum(len(v) for v in orphans.values())

    code, output, report = run_cli(*_args(folded, "--grace", "1d", "--dry-run"))

    assert code == 0, output
    assert report["counts"]["orphan_objects"] == count
    assert folded.listing() == listing and folded.state() == state

    code, output, report = run_cli(*_args(folded, "--grace", "3d"))  # cutoff: a day ago

    assert code == 0, output
    assert folded.listing() == listing
    assert report["counts"].get("orphan_objects", 0) == 0
    assert report["counts"]["orphans_within_grace"] == count

    code, output, report = run_cli(*_args(folded, "--grace", "1d"))

    assert code == 0, output
    assert report["counts"]["orphan_objects"] == count
    assert folded.listing() == {role: {k: v for k, v in listing[role].items() if k not in orphans[role]}
                                for role in listing}
    assert folded.state() == state
    assert report["counts"]["orphan_scan_not_new_layout"] >= 3  # the legacy-shaped keys, seen and kept

    code, output, report = run_cli(*_args(folded, "--grace", "1d"))
    assert code == 0 and report["counts"].get("orphan_objects", 0) == 0


def test_cleanup_with_orphans_flag_runs_both(with_orphans, run_cli):
    folded, orphans = with_orphans
    listing, due = folded.listing(), folded.due_tasks()

    code, output, report = run_cli("cleanup", "--orphans", "--grace", "0s", *folded.cli_args())

    assert code == 0, output
    expected = folded.expected_listing(listing, due)
    assert folded.listing() == {role: {k: v for k, v in expected[role].items() if k not in orphans[role]}
                                for role in expected}
    assert report["counts"]["tasks"] == len(due)
