"""The orphan sweep: objects whose task no longer exists (new layout, and legacy-shaped keys of
missing tasks), older than the grace period; never a key whose task exists."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from ponoskit import keys
from tests.fixtures.cleanup import later, upload


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
    legacy_orphans = {
        "artifacts": {keys.legacy_artifact_key(uuid.uuid4(), uuid.uuid4(), "unknown.txt"),
                      keys.legacy_artifact_key(uuid.uuid4(), gone[0], "deleted/task.txt")},
        "logs": {keys.legacy_log_key(uuid.uuid4(), 1, uuid.uuid4()), keys.legacy_log_key(uuid.uuid4(), 2, gone[1])},
    }
    upload(folded.ctx, [
        (folded.artifacts, keys.artifact_key(stray, "left over.txt")),
        (folded.logs, keys.log_key(stray_log)),
        # A legacy key whose task exists stays (the rename may still move it) ...
        (folded.artifacts, keys.legacy_artifact_key(uuid.uuid4(), live, "legacy.txt")),
        (folded.logs, keys.legacy_log_key(uuid.uuid4(), 3, live)),
        (folded.logs, keys.log_key(stray_log) + ".bak"),  # not a log key shape: stays
        # ... one whose task is gone is an orphan (orphan_legacy).
        *((bucket, key) for role, bucket in (("artifacts", folded.artifacts), ("logs", folded.logs))
          for key in legacy_orphans[role]),
    ])
    listing = folded.listing()
    orphans = {
        "artifacts": {k for k in listing["artifacts"]
                      if any(k.startswith(keys.artifact_prefix(t)) for t in [*gone, stray])}
        | legacy_orphans["artifacts"],
        "logs": {keys.log_key(t) for t in [*gone, stray_log] if keys.log_key(t) in listing["logs"]}
        | legacy_orphans["logs"],
    }
    assert orphans["artifacts"] and len(orphans["logs"]) >= 4
    return folded, orphans


def _legacy(keys_: set[str]) -> set[str]:
    return {k for k in keys_ if keys.classify(k, set()).kind is keys.KeyKind.ORPHAN_LEGACY}


def _args(folded, *extra):
    return ["orphans", *folded.cli_args("--before", later(folded.now, days=2), "--allow-future-before", *extra)]


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
    assert report["counts"]["orphan_legacy_objects"] == len(_legacy(orphans["artifacts"] | orphans["logs"])) >= 4
    assert folded.listing() == {role: {k: v for k, v in listing[role].items() if k not in orphans[role]}
                                for role in listing}
    assert folded.state() == state
    assert report["counts"]["orphan_scan_not_new_layout"] >= 3  # legacy keys of a live task, seen and kept
    assert report["counts"]["orphan_objects_scanned"] >= count

    code, output, report = run_cli(*_args(folded, "--grace", "1d"))
    assert code == 0 and report["counts"].get("orphan_objects", 0) == 0


def test_cleanup_with_orphans_flag_runs_both(with_orphans, run_cli):
    folded, orphans = with_orphans
    listing, due = folded.listing(), folded.due_tasks()

    code, output, report = run_cli("cleanup", "--orphans", "--grace", "0s", *folded.cli_args())

    assert code == 0, output
    # The cleanup deletes the keys rows name; the sweep then finds what was under their prefixes.
    expected = folded.expected_listing(listing, due, prefixes=True)
    assert folded.listing() == {role: {k: v for k, v in expected[role].items() if k not in orphans[role]}
                                for role in expected}
    assert report["counts"]["tasks"] == len(due)
