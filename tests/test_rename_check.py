"""The final check and the catch-up read the changed tasks a page at a time and keep their
moves bounded in flight (migrate/rename_check.py): with pages of 2 tasks and 3 moves in
flight, a catch-up over many changed tasks still copies every key written since the copy."""

from __future__ import annotations

import psycopg
import pytest

import migrate.rename_check
from ponoskit import keys
from tests.fixtures.rename import state_of, tasks_of


@pytest.mark.slow
@pytest.mark.s3_servers("seaweedfs", "moto")  # moto: a server that copies over existing keys
def test_a_catch_up_over_many_changed_tasks_pages_and_bounds_and_copies_everything(seeded, run, tmp_path,
                                                                                     monkeypatch):
    checkpoint = str(tmp_path / "copy.checkpoint")
    code, report, err = run("--phase", "expand", "--checkpoint", checkpoint)
    assert code == 0, err
    # The legacy release writes on: a new artifact for every finished task, after the copy.
    written = {}
    with psycopg.connect(seeded["dsn"], autocommit=True) as conn:
        for workflow, task, _run in tasks_of(seeded["dsn"], unfinished=False):
            legacy = keys.legacy_artifact_key(workflow, task, "late.txt")
            seeded["ctx"].s3.put_object(Bucket=seeded["artifacts"], Key=legacy, Body=task.encode())
            conn.execute("INSERT INTO ponos_artifact (id, task_id, path, size, created, updated) "
                         "VALUES (gen_random_uuid(), %s, 'late.txt', %s, now(), now())", (task, len(task)))
            conn.execute("UPDATE ponos_task SET updated = now() WHERE id = %s", (task,))
            written[legacy] = keys.artifact_key(task, "late.txt")
    assert len(written) > 6  # several pages of two tasks
    monkeypatch.setattr(migrate.rename_check, "TASKS_PER_READ", 2)
    monkeypatch.setattr(migrate.rename_check, "MAX_IN_FLIGHT", 3)

    code, report, err = run("--phase", "expand", "--checkpoint", checkpoint)

    assert code == 0, err
    assert report["catch_up"] is True and report["counts"]["copied"] == len(written)
    artifacts, _ = state_of(seeded)
    assert all(artifacts[new] == artifacts[legacy] for legacy, new in written.items())

    code, report, err = run("--phase", "expand", "--checkpoint", checkpoint)  # the second run changes nothing
    assert code == 0, err
    assert not report["counts"].get("copied")
