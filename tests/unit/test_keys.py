"""ponoskit/keys.py: which layout a key is in, where it moves, the key builders, listing groups and
bucket passes. No server.
"""

from __future__ import annotations

import random
import uuid

import pytest

from ponoskit import keys
from ponoskit.errors import ConfigError
from ponoskit.keys import KeyKind
from tests.unit.helpers import new_id


AWKWARD_PATHS = [
    "model.bin",
    "with space/and more spaces.txt",
    "données/été/naïve-ü.json",
    "日本語/ファイル.txt",
    "plus+sign%20percent#hash?query=1&x",
    "a/b/c/d/e/f/deeply/nested.tar.gz",
    "trailing-dot.",
    ".hidden/..dots/...",
    "run_1/not-a-log.txt",
    "emoji-😀.png",
]


@pytest.fixture
def ids():
    rng = random.Random(1234)
    return {name: new_id(rng) for name in ("wf", "task", "other", "inner")}


@pytest.mark.parametrize("path", AWKWARD_PATHS)
def test_legacy_artifact_moves_to_task_key_keeping_the_path(ids, path):
    wf, task = ids["wf"], ids["task"]
    key = f"{wf}/{task}/{path}"
    found = keys.classify(key, {task})
    assert found.kind is KeyKind.LEGACY_ARTIFACT
    assert found.is_legacy
    assert found.task_id == task
    assert found.new_key == f"{task}/{path}"  # only the workflow folder goes away
    # The new key is in the new layout for good: a re-run never moves it again.
    again = keys.classify(found.new_key, {task})
    assert again.kind is KeyKind.NEW_ARTIFACT and not again.is_legacy and again.new_key is None


@pytest.mark.parametrize("run", [0, 1, 42, 1000])
def test_legacy_log_moves_to_task_log(ids, run):
    wf, task = ids["wf"], ids["task"]
    # With a database; or without one in a logs-only bucket, where the shape is unambiguous.
    for known, artifacts in (({task}, True), ({task}, False), (None, False)):
        found = keys.classify(f"{wf}/run_{run}/{task}.log", known, artifacts=artifacts)
        assert found.kind is KeyKind.LEGACY_LOG and found.is_legacy
        assert found.task_id == task
        assert found.new_key == f"{task}.log"
        assert keys.classify(found.new_key, known, artifacts=artifacts).kind is KeyKind.NEW_LOG


def test_new_layout_artifact_under_uuid_folder_is_never_legacy(ids):
    """``<task>/<uuid>/model.bin`` has the legacy shape; the known task id settles it."""
    task, inner = ids["task"], ids["inner"]
    key = f"{task}/{inner}/model.bin"
    found = keys.classify(key, {task})
    assert found.kind is KeyKind.NEW_ARTIFACT
    assert found.task_id == task
    assert not found.is_legacy and found.new_key is None
    # Even when the inner folder is also a task id, the first segment being a task wins.
    assert keys.classify(key, {task, inner}).kind is KeyKind.NEW_ARTIFACT


def test_new_layout_artifact_without_uuid_folder_needs_no_database(ids):
    task = ids["task"]
    for known in (None, set(), {task}):
        found = keys.classify(f"{task}/some/path.txt", known)
        assert found.kind is KeyKind.NEW_ARTIFACT and found.task_id == task and found.new_key is None


def test_new_log(ids):
    task = ids["task"]
    for known in (None, set(), {task}):
        found = keys.classify(f"{task}.log", known)
        assert found.kind is KeyKind.NEW_LOG and found.task_id == task and not found.is_legacy


def test_orphan_legacy_when_task_unknown(ids):
    wf, task = ids["wf"], ids["task"]
    known = {ids["other"]}
    artifact = keys.classify(f"{wf}/{task}/model.bin", known)
    log = keys.classify(f"{wf}/run_1/{task}.log", known)
    for found in (artifact, log):
        assert found.kind is KeyKind.ORPHAN_LEGACY
        assert found.task_id == task
        assert not found.is_legacy and found.new_key is None  # nothing to move it to
    # An empty set is a database that knows no task: still orphans, not undecided.
    assert keys.classify(f"{wf}/{task}/model.bin", set()).kind is KeyKind.ORPHAN_LEGACY


def test_undecided_without_database(ids):
    a, b = ids["wf"], ids["task"]
    found = keys.classify(f"{a}/{b}/model.bin", None)
    assert found.kind is KeyKind.UNDECIDED
    assert found.task_id == b
    assert not found.is_legacy and found.new_key is None  # reported, never moved


@pytest.mark.parametrize("template", [
    "README", "README.md", "tmp/x", "tmp/", "", "/",
    "{task}",                    # a bare UUID, no slash
    "{task}/",                   # folder marker
    "not-a-uuid/{task}/x",
    "{short}/x",                 # one hex digit short
    "{nodash}/x",                # hex without dashes
    "{task}.log.gz", "{task}.txt", "x{task}.log", "/{task}/x", "{task}.LOG.d/",
])
def test_unrecognized(ids, template):
    key = template.format(short=ids["task"][:-1], nodash=ids["task"].replace("-", ""), **ids)
    for known in (None, {ids["other"]}):
        found = keys.classify(key, known)
        assert found.kind is KeyKind.UNRECOGNIZED, (key, found)
        assert found.new_key is None and not found.is_legacy


@pytest.mark.parametrize("path", ["", "dir/", "notes/", "a//", "a/b/"])
def test_folder_markers_under_a_task_move_like_any_key(ids, path):
    wf, task = ids["wf"], ids["task"]
    key = f"{wf}/{task}/{path}"
    found = keys.classify(key, {task})
    assert found.kind is KeyKind.LEGACY_ARTIFACT and found.new_key == f"{task}/{path}"
    assert keys.classify(key, {ids["other"]}).kind is KeyKind.ORPHAN_LEGACY
    assert keys.classify(key, None).kind is KeyKind.UNDECIDED


def test_artifacts_only_bucket_does_not_know_logs(ids):
    wf, task = ids["wf"], ids["task"]
    assert keys.classify(f"{task}.log", {task}, logs=False).kind is KeyKind.UNRECOGNIZED
    legacy_log = keys.classify(f"{wf}/run_1/{task}.log", {task}, logs=False)
    assert legacy_log.kind not in (KeyKind.LEGACY_LOG, KeyKind.NEW_LOG)
    assert not legacy_log.is_legacy and legacy_log.new_key is None
    # Artifacts are still handled there.
    assert keys.classify(f"{wf}/{task}/x", {task}, logs=False).kind is KeyKind.LEGACY_ARTIFACT
    assert keys.classify(f"{task}/x", {task}, logs=False).kind is KeyKind.NEW_ARTIFACT


def test_logs_only_bucket_does_not_know_artifacts(ids):
    wf, task = ids["wf"], ids["task"]
    for known in ({task}, None):
        for key in (f"{wf}/{task}/model.bin", f"{task}/model.bin", f"{task}/{ids['inner']}/m.bin"):
            found = keys.classify(key, known, artifacts=False)
            assert found.kind is KeyKind.UNRECOGNIZED, (key, known, found)
            assert found.new_key is None
        assert keys.classify(f"{wf}/run_2/{task}.log", known, artifacts=False).kind is KeyKind.LEGACY_LOG
        assert keys.classify(f"{task}.log", known, artifacts=False).kind is KeyKind.NEW_LOG


def test_upper_case_ids_are_normalised_to_lower(ids):
    wf, task = ids["wf"], ids["task"]
    known = {task}  # the database answers lower-case ids
    cases = {
        f"{wf.upper()}/{task.upper()}/model.bin": KeyKind.LEGACY_ARTIFACT,
        f"{wf.upper()}/run_3/{task.upper()}.log": KeyKind.LEGACY_LOG,
        f"{task.upper()}/model.bin": KeyKind.NEW_ARTIFACT,
        f"{task.upper()}/{ids['inner']}/model.bin": KeyKind.NEW_ARTIFACT,
        f"{task.upper()}.log": KeyKind.NEW_LOG,
    }
    for key, kind in cases.items():
        found = keys.classify(key, known)
        assert found.kind is kind, key
        assert found.task_id == task, key
    assert keys.classify(f"{wf}/{task.upper()}/m", None).task_id == task
    assert keys.is_uuid(task.upper())


def test_upper_case_legacy_keys_move_to_the_lower_case_key_arkindex_reads(ids):
    wf, task = ids["wf"], ids["task"]
    artifact = keys.classify(f"{wf.upper()}/{task.upper()}/model.bin", {task})
    log = keys.classify(f"{wf.upper()}/run_1/{task.upper()}.log", {task})
    assert artifact.new_key == keys.artifact_key(task, "model.bin")
    assert log.new_key == keys.log_key(task)


def test_is_uuid_is_exact(ids):
    task = ids["task"]
    assert keys.is_uuid(task) and keys.is_uuid(task.upper())
    for text in (task + "x", " " + task, task + " ", task[:-1], task + "\r\n", task.replace("-", "")):
        assert not keys.is_uuid(text), text


def test_is_uuid_rejects_a_trailing_newline(ids):
    assert not keys.is_uuid(ids["task"] + "\n")


def _new_key_is_the_key_minus_legacy_folders(found: keys.Classified) -> bool:
    """A move only drops ``<workflow>/`` (artifacts) or ``<workflow>/run_<N>/`` (logs)."""
    if found.kind is KeyKind.LEGACY_ARTIFACT:
        return found.new_key == found.key.split("/", 1)[1]
    if found.kind is KeyKind.LEGACY_LOG:
        return found.new_key == found.key.rsplit("/", 1)[1]
    return found.new_key is None


@pytest.mark.parametrize("path", AWKWARD_PATHS + ["ends-with-newline\n", "new\nline"])
def test_legacy_moves_only_drop_the_workflow_folders(ids, path):
    wf, task = ids["wf"], ids["task"]
    for key in (f"{wf}/{task}/{path}", f"{wf}/run_7/{task}.log", f"{wf}/run_7/{task}.log/{path}"):
        for known in ({task}, None):
            found = keys.classify(key, known)
            assert _new_key_is_the_key_minus_legacy_folders(found), found


def test_trailing_newline_does_not_make_a_log(ids):
    wf, task = ids["wf"], ids["task"]
    found = keys.classify(f"{wf}/run_1/{task}.log\n", {task})
    assert _new_key_is_the_key_minus_legacy_folders(found), found
    assert keys.classify(f"{task}.log\n", {task}).kind is not KeyKind.NEW_LOG


def test_no_database_does_not_guess_log_shape_in_a_shared_bucket(ids):
    first, second = ids["task"], ids["inner"]
    key = f"{first}/run_1/{second}.log"
    # With a database the key is settled: under a known task it stays.
    assert keys.classify(key, {first}).kind is KeyKind.NEW_ARTIFACT
    # Without one it may be either layout: it must not be moved.
    found = keys.classify(key, None, logs=True, artifacts=True)
    assert not found.is_legacy, found


def test_logs_only_bucket_without_database_moves_legacy_logs(ids):
    """In a logs-only bucket the legacy log shape is unambiguous, even without a database."""
    found = keys.classify(f"{ids['wf']}/run_1/{ids['task']}.log", None, logs=True, artifacts=False)
    assert found.kind is KeyKind.LEGACY_LOG


def test_task_ids_in_lists_every_position_classify_looks_up(ids):
    """Looking up only task_ids_in(key) in the database must give the same answer as
    knowing every task: that is what lets the rename query ids page by page."""
    rng = random.Random(99)
    wf, task, other, inner = ids["wf"], ids["task"], ids["other"], ids["inner"]
    candidates = [
        f"{wf}/{task}/m.bin", f"{wf}/run_1/{task}.log", f"{task}/{inner}/m.bin", f"{task}/m.bin",
        f"{task}.log", f"{wf}/{task}/", f"{task}/", "README", "tmp/x", f"{wf}/{other}/x",
        f"{wf.upper()}/{task.upper()}/x", f"{task}/run_1/{inner}.log", f"{wf}/run_1/{other}.log",
    ]
    everyone = {task, inner, new_id(rng)}
    for key in candidates:
        looked_up = {i for i in keys.task_ids_in(key) if i in everyone}
        for logs, artifacts in ((True, True), (True, False), (False, True)):
            full = keys.classify(key, everyone, logs=logs, artifacts=artifacts)
            partial = keys.classify(key, looked_up, logs=logs, artifacts=artifacts)
            assert partial == full, key


def test_task_ids_in_positions(ids):
    wf, task, inner = ids["wf"], ids["task"], ids["inner"]
    assert set(keys.task_ids_in(f"{wf}/{task}/x")) == {wf, task}
    assert set(keys.task_ids_in(f"{wf}/run_4/{task}.log")) >= {task}
    assert keys.task_ids_in(f"{task}.log") == [task]
    assert set(keys.task_ids_in(f"{task}/{inner}/m")) == {task, inner}
    assert keys.task_ids_in(f"{task.upper()}/x") == [task]
    assert keys.task_ids_in("README") == []
    assert keys.task_ids_in("tmp/x") == []
    assert keys.task_ids_in(f"tmp/{task}/x") == []
    assert all(i == i.lower() for i in keys.task_ids_in(f"{wf.upper()}/{task.upper()}/x"))


def test_top_level_task(ids):
    task = ids["task"]
    assert keys.top_level_task(f"{task}/") == task
    assert keys.top_level_task(f"{task.upper()}/") == task
    assert keys.top_level_task(f"{task}.log") == task
    assert keys.top_level_task(f"{task.upper()}.log") == task
    for entry in (task, f"{task}/x", "README", "tmp/", f"{task}.txt", f"{task[:-1]}/", ""):
        assert keys.top_level_task(entry) is None, entry


def test_key_builders_round_trip_with_classify():
    rng = random.Random(5)
    for path in AWKWARD_PATHS + [f"{new_id(rng)}/model.bin"]:
        wf, task = new_id(rng), new_id(rng)
        legacy = keys.legacy_artifact_key(wf, task, path)
        found = keys.classify(legacy, {task})
        assert (found.kind, found.task_id, found.new_key) == (
            KeyKind.LEGACY_ARTIFACT, task, keys.artifact_key(task, path))
        assert keys.artifact_key(task, path).startswith(keys.artifact_prefix(task))
        assert keys.classify(keys.artifact_key(task, path), {task}).kind is KeyKind.NEW_ARTIFACT
        # uuid.UUID objects are accepted too, and spelled like str(uuid).
        assert keys.artifact_key(uuid.UUID(task), path) == keys.artifact_key(task, path)
    for run in (1, 12):
        wf, task = new_id(rng), new_id(rng)
        found = keys.classify(keys.legacy_log_key(uuid.UUID(wf), run, uuid.UUID(task)), {task})
        assert (found.kind, found.task_id, found.new_key) == (KeyKind.LEGACY_LOG, task, keys.log_key(task))
        assert keys.top_level_task(keys.log_key(task)) == task
        assert keys.top_level_task(keys.artifact_prefix(task)) == task


def test_listing_group_keeps_a_tasks_keys_together_in_both_orders():
    from ponoskit.keys import listing_group
    task, other = "0b5c6b4e-8d1f-4c1e-9a57-0f6a1c2b3d4e", "0b5c6b4e-8d1f-4c1e-9a57-0f6a1c2b3d4f"
    task_keys = [f"{task}.log", f"{task}/a.txt", f"{task}/dir/b", f"{task}.log.bak"]
    assert {listing_group(k) for k in task_keys} == {task}
    assert listing_group(f"{other}/x") == other and other > task
    assert listing_group("README") == "README" and listing_group("tmp/x") == "tmp/x"
    # Byte order and a tree order (folder before its sibling files) differ on these keys but
    # give the same sequence of groups.
    byte_order = sorted(task_keys + [f"{other}/x"])
    tree_order = [f"{task}/a.txt", f"{task}/dir/b", f"{task}.log", f"{task}.log.bak", f"{other}/x"]
    groups = lambda ks: [g for i, g in enumerate(map(listing_group, ks)) if i == 0 or g != listing_group(ks[i - 1])]
    assert groups(byte_order) == groups(tree_order) == [task, other]


def test_bucket_passes_one_listing_when_both_layouts_share_a_bucket():
    assert keys.bucket_passes("b", "b") == [keys.BucketPass("b", artifacts=True, logs=True)]
    assert keys.bucket_passes("a", "l") == [keys.BucketPass("a", artifacts=True, logs=False),
                                            keys.BucketPass("l", artifacts=False, logs=True)]
    assert keys.bucket_passes("a", None) == [keys.BucketPass("a", artifacts=True, logs=False)]
    assert keys.bucket_passes(None, "l") == [keys.BucketPass("l", artifacts=False, logs=True)]
    with pytest.raises(ConfigError, match="--artifacts-bucket, --logs-bucket or both"):
        keys.bucket_passes(None, "")


def test_is_new_is_exactly_the_new_layout_kinds():
    for kind in KeyKind:
        assert keys.Classified("k", kind).is_new == (kind in (KeyKind.NEW_ARTIFACT, KeyKind.NEW_LOG))
