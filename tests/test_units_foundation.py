"""Fast unit tests of the shared foundation (ponoskit/): no PostgreSQL, no S3 server.

S3 behaviour comes from botocore's Stubber (exact requests, canned answers) or moto (an
in-process fake); PostgreSQL transactions from a recording fake connection. Expectations are
derived from each module's documented contract, not copied from its output.
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
import uuid
from datetime import datetime, timezone
from concurrent.futures import CancelledError, wait as wait_futures

import boto3
import click
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from click.testing import CliRunner

from ponoskit import keys
from ponoskit.bloom import UUIDBloomFilter
from ponoskit.buffer import BatchBuffer
from ponoskit.checkpoint import Checkpoint
from ponoskit.cli import ByteSize
from ponoskit.connections import connect_pg, describe_dsn, redact, resolve_dsn
from ponoskit.context import Context
from ponoskit.errors import ConfigError, FlushError, PonosError, PostCommitError, ServiceUnreachable
from ponoskit.hooks import Transaction
from ponoskit.report import Report
from ponoskit.s3.copy import MAX_PARTS, MIN_PART_SIZE, obstore_can_copy, part_ranges
from ponoskit.s3.delete import MAX_KEYS_PER_REQUEST, ObjectDeleteError, ObjectRef, delete_keys, delete_objects
from ponoskit.s3.errors import Kind as S3Kind, S3PermissionError
from ponoskit.s3.listing import iter_objects, iter_pages, iter_top_level, timestamp
from ponoskit.keyrange import KeyRange
from ponoskit.shard import Shard

from ponoskit.keys import Kind

KiB, MiB, GiB, TiB = 2 ** 10, 2 ** 20, 2 ** 30, 2 ** 40
S3_MAX_PART_SIZE = 5 * GiB  # AWS: a part (UploadPart / UploadPartCopy) is 5 MiB .. 5 GiB


def new_id(rng: random.Random | None = None) -> str:
    """A random version-4 UUID, as Django's ``default=uuid.uuid4`` makes task ids."""
    if rng is None:
        return str(uuid.uuid4())
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


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


# =========================================================================================
# keys.py
# =========================================================================================

@pytest.fixture
def ids():
    rng = random.Random(1234)
    return {name: new_id(rng) for name in ("wf", "task", "other", "inner")}


@pytest.mark.parametrize("path", AWKWARD_PATHS)
def test_legacy_artifact_moves_to_task_key_keeping_the_path(ids, path):
    wf, task = ids["wf"], ids["task"]
    key = f"{wf}/{task}/{path}"
    found = keys.classify(key, {task})
    assert found.kind is Kind.LEGACY_ARTIFACT
    assert found.is_legacy
    assert found.task_id == task
    assert found.new_key == f"{task}/{path}"  # only the workflow folder goes away
    # The new key is in the new layout for good: a re-run never moves it again.
    again = keys.classify(found.new_key, {task})
    assert again.kind is Kind.NEW_ARTIFACT and not again.is_legacy and again.new_key is None


@pytest.mark.parametrize("run", [0, 1, 42, 1000])
def test_legacy_log_moves_to_task_log(ids, run):
    wf, task = ids["wf"], ids["task"]
    # With a database; or without one in a logs-only bucket, where the shape is unambiguous.
    for known, artifacts in (({task}, True), ({task}, False), (None, False)):
        found = keys.classify(f"{wf}/run_{run}/{task}.log", known, artifacts=artifacts)
        assert found.kind is Kind.LEGACY_LOG and found.is_legacy
        assert found.task_id == task
        assert found.new_key == f"{task}.log"
        assert keys.classify(found.new_key, known, artifacts=artifacts).kind is Kind.NEW_LOG


def test_new_layout_artifact_under_uuid_folder_is_never_legacy(ids):
    """``<task>/<uuid>/model.bin`` has the legacy shape; the known task id settles it."""
    task, inner = ids["task"], ids["inner"]
    key = f"{task}/{inner}/model.bin"
    found = keys.classify(key, {task})
    assert found.kind is Kind.NEW_ARTIFACT
    assert found.task_id == task
    assert not found.is_legacy and found.new_key is None
    # Even when the inner folder is also a task id, the first segment being a task wins.
    assert keys.classify(key, {task, inner}).kind is Kind.NEW_ARTIFACT


def test_new_layout_artifact_without_uuid_folder_needs_no_database(ids):
    task = ids["task"]
    for known in (None, set(), {task}):
        found = keys.classify(f"{task}/some/path.txt", known)
        assert found.kind is Kind.NEW_ARTIFACT and found.task_id == task and found.new_key is None


def test_new_log(ids):
    task = ids["task"]
    for known in (None, set(), {task}):
        found = keys.classify(f"{task}.log", known)
        assert found.kind is Kind.NEW_LOG and found.task_id == task and not found.is_legacy


def test_orphan_legacy_when_task_unknown(ids):
    wf, task = ids["wf"], ids["task"]
    known = {ids["other"]}
    artifact = keys.classify(f"{wf}/{task}/model.bin", known)
    log = keys.classify(f"{wf}/run_1/{task}.log", known)
    for found in (artifact, log):
        assert found.kind is Kind.ORPHAN_LEGACY
        assert found.task_id == task
        assert not found.is_legacy and found.new_key is None  # nothing to move it to
    # An empty set is a database that knows no task: still orphans, not undecided.
    assert keys.classify(f"{wf}/{task}/model.bin", set()).kind is Kind.ORPHAN_LEGACY


def test_undecided_without_database(ids):
    a, b = ids["wf"], ids["task"]
    found = keys.classify(f"{a}/{b}/model.bin", None)
    assert found.kind is Kind.UNDECIDED
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
        assert found.kind is Kind.UNRECOGNIZED, (key, found)
        assert found.new_key is None and not found.is_legacy


@pytest.mark.parametrize("path", ["", "dir/", "notes/", "a//", "a/b/"])
def test_folder_markers_under_a_task_move_like_any_key(ids, path):
    wf, task = ids["wf"], ids["task"]
    key = f"{wf}/{task}/{path}"
    found = keys.classify(key, {task})
    assert found.kind is Kind.LEGACY_ARTIFACT and found.new_key == f"{task}/{path}"
    assert keys.classify(key, {ids["other"]}).kind is Kind.ORPHAN_LEGACY
    assert keys.classify(key, None).kind is Kind.UNDECIDED


def test_artifacts_only_bucket_does_not_know_logs(ids):
    wf, task = ids["wf"], ids["task"]
    assert keys.classify(f"{task}.log", {task}, logs=False).kind is Kind.UNRECOGNIZED
    legacy_log = keys.classify(f"{wf}/run_1/{task}.log", {task}, logs=False)
    assert legacy_log.kind not in (Kind.LEGACY_LOG, Kind.NEW_LOG)
    assert not legacy_log.is_legacy and legacy_log.new_key is None
    # Artifacts are still handled there.
    assert keys.classify(f"{wf}/{task}/x", {task}, logs=False).kind is Kind.LEGACY_ARTIFACT
    assert keys.classify(f"{task}/x", {task}, logs=False).kind is Kind.NEW_ARTIFACT


def test_logs_only_bucket_does_not_know_artifacts(ids):
    wf, task = ids["wf"], ids["task"]
    for known in ({task}, None):
        for key in (f"{wf}/{task}/model.bin", f"{task}/model.bin", f"{task}/{ids['inner']}/m.bin"):
            found = keys.classify(key, known, artifacts=False)
            assert found.kind is Kind.UNRECOGNIZED, (key, known, found)
            assert found.new_key is None
        assert keys.classify(f"{wf}/run_2/{task}.log", known, artifacts=False).kind is Kind.LEGACY_LOG
        assert keys.classify(f"{task}.log", known, artifacts=False).kind is Kind.NEW_LOG


def test_upper_case_ids_are_normalised_to_lower(ids):
    wf, task = ids["wf"], ids["task"]
    known = {task}  # the database answers lower-case ids
    cases = {
        f"{wf.upper()}/{task.upper()}/model.bin": Kind.LEGACY_ARTIFACT,
        f"{wf.upper()}/run_3/{task.upper()}.log": Kind.LEGACY_LOG,
        f"{task.upper()}/model.bin": Kind.NEW_ARTIFACT,
        f"{task.upper()}/{ids['inner']}/model.bin": Kind.NEW_ARTIFACT,
        f"{task.upper()}.log": Kind.NEW_LOG,
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
    if found.kind is Kind.LEGACY_ARTIFACT:
        return found.new_key == found.key.split("/", 1)[1]
    if found.kind is Kind.LEGACY_LOG:
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
    assert keys.classify(f"{task}.log\n", {task}).kind is not Kind.NEW_LOG


def test_no_database_does_not_guess_log_shape_in_a_shared_bucket(ids):
    first, second = ids["task"], ids["inner"]
    key = f"{first}/run_1/{second}.log"
    # With a database the key is settled: under a known task it stays.
    assert keys.classify(key, {first}).kind is Kind.NEW_ARTIFACT
    # Without one it may be either layout: it must not be moved.
    found = keys.classify(key, None, logs=True, artifacts=True)
    assert not found.is_legacy, found


def test_logs_only_bucket_without_database_moves_legacy_logs(ids):
    """In a logs-only bucket the legacy log shape is unambiguous, even without a database."""
    found = keys.classify(f"{ids['wf']}/run_1/{ids['task']}.log", None, logs=True, artifacts=False)
    assert found.kind is Kind.LEGACY_LOG


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
            Kind.LEGACY_ARTIFACT, task, keys.artifact_key(task, path))
        assert keys.artifact_key(task, path).startswith(keys.artifact_prefix(task))
        assert keys.classify(keys.artifact_key(task, path), {task}).kind is Kind.NEW_ARTIFACT
        # uuid.UUID objects are accepted too, and spelled like str(uuid).
        assert keys.artifact_key(uuid.UUID(task), path) == keys.artifact_key(task, path)
    for run in (1, 12):
        wf, task = new_id(rng), new_id(rng)
        found = keys.classify(keys.legacy_log_key(uuid.UUID(wf), run, uuid.UUID(task)), {task})
        assert (found.kind, found.task_id, found.new_key) == (Kind.LEGACY_LOG, task, keys.log_key(task))
        assert keys.top_level_task(keys.log_key(task)) == task
        assert keys.top_level_task(keys.artifact_prefix(task)) == task


# =========================================================================================
# shard.py
# =========================================================================================

@pytest.mark.parametrize("text, expected", [
    (None, (0, 1)), ("", (0, 1)), ("0/1", (0, 1)), ("0/4", (0, 4)), ("3/4", (3, 4)),
    (" 2 / 7 ", (2, 7)), ("65535/65536", (65535, 65536)),
])
def test_shard_parse_valid(text, expected):
    shard = Shard.parse(text)
    assert (shard.index, shard.count) == expected
    assert Shard.parse(str(shard)) == shard


@pytest.mark.parametrize("text", ["4/4", "5/4", "1/0", "0/0", "-1/4", "1/-4", "a/b", "1", "1/2/3",
                                  "1.0/2", "0/65537", "/4", "0/", "x"])
def test_shard_parse_invalid(text):
    with pytest.raises(ConfigError):
        Shard.parse(text)


def _key_sample(rng: random.Random, n: int, prefixes: int) -> list[str]:
    hexdigits = "0123456789abcdef"
    sample = ["", "/", "README", "tmp/x", "0", "f", "ffff", "fffff", "g", "z", "~", "\x7f",
              "ü/x", "日本", "😀", " ", "-", "0000", "0000/", "zzzz/x", "FFFF", "A000"]
    # Every possible 4-hex bound, and its neighbours, for some random bounds.
    for _ in range(prefixes):
        prefix = "".join(rng.choice(hexdigits) for _ in range(4))
        sample += [prefix, prefix[:3], prefix + "/", prefix + "-x", prefix + "0", prefix.upper()]
    for _ in range(n):
        pick = rng.random()
        task = new_id(rng)
        if pick < 0.5:
            sample.append(f"{task}/{new_id(rng)}/x")
        elif pick < 0.6:
            sample.append(task.upper() + "/x")
        elif pick < 0.7:
            sample.append(f"{task}.log")
        elif pick < 0.8:
            sample.append("".join(rng.choice("ghijklmnopqrstuvwxyz-_/.") for _ in range(rng.randint(1, 6))))
        elif pick < 0.9:
            sample.append("".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(rng.randint(1, 5))))
        else:
            sample.append(task[: rng.randint(0, 6)])
    return sample


@pytest.mark.parametrize("count, sample_size, prefixes", [
    (1, 3000, 200), (2, 3000, 200), (3, 3000, 200), (7, 3000, 200), (16, 3000, 200),
    (1000, 150, 10),  # 1,000 membership tests per key: a smaller sample, same properties
])
def test_shards_partition_every_key(count, sample_size, prefixes):
    rng = random.Random(count)
    shards = [Shard(i, count) for i in range(count)]
    sample = _key_sample(rng, sample_size, prefixes)
    # The bounds themselves and their neighbours, for a few shards.
    for shard in rng.sample(shards[1:], min(10, count - 1)):
        sample += [shard.start, shard.start[:-1], shard.start + "/x", shard.start.upper()]
    for key in sample:
        holders = [s.index for s in shards if key in s]
        assert len(holders) == 1, (key, holders)
    # Bounds: the first shard from the start, the last to the end, strictly increasing
    # boundaries shared between neighbours.
    assert shards[0].start is None and shards[-1].end is None
    for left, right in zip(shards, shards[1:]):
        assert left.end == right.start and left.end is not None
    bounds = [s.start for s in shards[1:]]
    assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds)


def test_sixteen_shards_split_on_the_first_hex_digit():
    """2^16 / 16: shard i holds exactly the lower-case UUIDs starting with hex digit i."""
    rng = random.Random(16)
    for _ in range(2000):
        task = new_id(rng)
        index = int(task[0], 16)
        assert task in Shard(index, 16)
        assert f"{task}/x" in Shard(index, 16)


def test_shards_of_random_uuids_are_balanced():
    rng = random.Random(3)
    shards = [Shard(i, 3) for i in range(3)]
    counts = [0, 0, 0]
    for _ in range(6000):
        task = new_id(rng)
        counts[next(s.index for s in shards if task in s)] += 1
    assert all(1700 < c < 2300 for c in counts), counts


# =========================================================================================
# bloom.py
# =========================================================================================

def test_bloom_has_no_false_negatives():
    rng = random.Random(7)
    members = [new_id(rng) for _ in range(50_000)]
    bloom = UUIDBloomFilter(bits_log2=16, hashes=4)  # small and overfull on purpose
    for member in members:
        bloom.add(member)
    assert bloom.added == len(members)
    assert all(member in bloom for member in members)
    # Upper-case spellings are the same UUID.
    assert all(member.upper() in bloom for member in members[:1000])


def test_bloom_empty_filter_contains_nothing():
    rng = random.Random(8)
    bloom = UUIDBloomFilter(bits_log2=12, hashes=4)
    assert not any(new_id(rng) in bloom for _ in range(1000))


def _false_positive_rate(bits_log2: int, hashes: int, members: int, probes: int, seed: int):
    rng = random.Random(seed)
    bloom = UUIDBloomFilter(bits_log2=bits_log2, hashes=hashes)
    added = set()
    for _ in range(members):
        member = new_id(rng)
        added.add(member)
        bloom.add(member)
    outsiders = (new_id(rng) for _ in range(probes))
    positives = sum(1 for o in outsiders if o not in added and o in bloom)
    theory = (1 - math.exp(-hashes * members / 2 ** bits_log2)) ** hashes
    return positives / probes, theory


def test_bloom_false_positive_rate_is_sane():
    # 2^16 bits, 4 hashes, 2,000 members: theory says about 0.02 % false positives.
    rate, theory = _false_positive_rate(16, 4, 2000, 50_000, seed=11)
    assert rate < 0.005, (rate, theory)  # a filter that says "maybe" too often fails this


def test_bloom_false_positive_rate_matches_theory_for_uuid4():
    # 2^20 bits, 4 hashes: the 4th slice is bits 60..79, holding all 6 fixed bits.
    rate, theory = _false_positive_rate(20, 4, 51_000, 50_000, seed=12)
    assert rate < 2 * theory, (rate, theory)  # ~49 expected, 2x is far outside the noise


def test_bloom_rejects_more_hash_bits_than_a_uuid_has():
    with pytest.raises(ValueError):
        UUIDBloomFilter(bits_log2=33, hashes=4)


# =========================================================================================
# buffer.py
# =========================================================================================

class Recorder:
    """A flush function that records its batches and answers per item with ``answer``."""

    def __init__(self, answer=None):
        self.batches: list[list] = []
        self.answer = answer
        self.lock = threading.Lock()

    def __call__(self, items):
        with self.lock:
            self.batches.append(list(items))
        if self.answer is None:
            return None
        return [self.answer(item) for item in items]


@pytest.fixture
def buffers():
    """Buffers created by a test; closed (errors ignored) at teardown so no thread leaks."""
    made = []

    def make(*args, **kwargs):
        buf = BatchBuffer(*args, **kwargs)
        made.append(buf)
        return buf

    yield make
    for buf in made:
        try:
            buf.close()
        except FlushError:
            pass


def test_buffer_flushes_at_max_size(buffers):
    flush = Recorder()
    buf = buffers("size", flush, max_size=3, interval=60)
    futures = [buf.submit(i) for i in range(3)]
    done, pending = wait_futures(futures, timeout=5)  # long before the 60 s interval
    assert not pending
    assert flush.batches == [[0, 1, 2]]


def test_buffer_splits_into_batches_of_max_size_in_order(buffers):
    flush = Recorder()
    buf = buffers("split", flush, max_size=10, interval=60)
    for i in range(25):
        buf.fire_forget(i)
    buf.close()  # the last, partial batch goes out on close
    assert [len(b) for b in flush.batches] == [10, 10, 5]
    assert [i for b in flush.batches for i in b] == list(range(25))


def test_buffer_flushes_after_interval(buffers):
    flush = Recorder(answer=lambda item: item.upper())
    interval = 0.2
    buf = buffers("interval", flush, max_size=1000, interval=interval)
    start = time.monotonic()
    assert buf.fire_and_wait("x", timeout=5) == "X"
    elapsed = time.monotonic() - start
    assert interval * 0.9 <= elapsed < 5
    assert flush.batches == [["x"]]


def test_buffer_close_flushes_pending_items_at_once(buffers):
    flush = Recorder()
    buf = buffers("close", flush, max_size=1000, interval=60)
    for i in range(5):
        buf.fire_forget(i)
    start = time.monotonic()
    buf.close()
    assert time.monotonic() - start < 5  # did not wait for the 60 s interval
    assert flush.batches == [[0, 1, 2, 3, 4]]


def test_fire_and_wait_returns_each_items_result(buffers):
    buf = buffers("results", Recorder(answer=lambda item: item * 10), max_size=4, interval=0.05)
    futures = [buf.submit(i) for i in range(10)]
    assert [f.result(timeout=5) for f in futures] == [i * 10 for i in range(10)]
    assert buf.fire_and_wait(7, timeout=5) == 70


def test_flush_returning_none_resolves_every_item_with_none(buffers):
    buf = buffers("none", Recorder(), max_size=2, interval=0.05)
    assert [f.result(timeout=5) for f in [buf.submit(1), buf.submit(2), buf.submit(3)]] == [None] * 3


def test_exception_instance_fails_only_its_item(buffers):
    def answer(item):
        return ValueError(f"bad {item}") if item % 3 == 0 else f"ok {item}"

    buf = buffers("per-item", Recorder(answer=answer), max_size=6, interval=60)
    futures = {i: buf.submit(i) for i in range(6)}
    for i, future in futures.items():
        if i % 3 == 0:
            with pytest.raises(ValueError, match=f"bad {i}"):
                future.result(timeout=5)
        else:
            assert future.result(timeout=5) == f"ok {i}"
    buf.close()  # no fire_forget item failed: nothing to raise


def test_flush_that_raises_fails_every_caller_of_its_batch_and_only_that_batch(buffers):
    seen = []

    def flush(items):
        seen.append(list(items))
        if "bad" in items:
            raise ConnectionError("whole request failed")
        return [f"ok {item}" for item in items]

    buf = buffers("raises", flush, max_size=3, interval=60)
    first = [buf.submit(x) for x in ("a", "bad", "c")]
    for future in first:
        with pytest.raises(ConnectionError, match="whole request failed"):
            future.result(timeout=5)
    # The worker survives a failed batch.
    second = [buf.submit(x) for x in ("d", "e", "f")]
    assert [f.result(timeout=5) for f in second] == ["ok d", "ok e", "ok f"]
    assert seen == [["a", "bad", "c"], ["d", "e", "f"]]


def test_fire_and_wait_raises_its_items_error(buffers):
    buf = buffers("wait-error", Recorder(answer=lambda item: KeyError(item)), max_size=1, interval=60)
    with pytest.raises(KeyError):
        buf.fire_and_wait("k", timeout=5)


def test_fire_forget_errors_are_raised_at_close(buffers):
    def answer(item):
        return RuntimeError(f"lost {item}") if item in (2, 5) else None

    buf = buffers("forget", Recorder(answer=answer), max_size=2, interval=0.01)
    for i in range(7):
        buf.fire_forget(i)
    time.sleep(0.2)  # the failing batches are long flushed before close: still not lost
    with pytest.raises(FlushError) as info:
        buf.close()
    err = info.value
    assert isinstance(err, PonosError)
    assert err.buffer_name == "forget"
    assert sorted(str(e) for e in err.errors) == ["lost 2", "lost 5"]
    assert "forget" in str(err)


def test_fire_forget_error_of_a_raising_flush_is_raised_at_close(buffers):
    def flush(items):
        raise OSError("disk full")

    buf = buffers("forget-raise", flush, max_size=10, interval=60)
    buf.fire_forget("a")
    buf.fire_forget("b")
    with pytest.raises(FlushError) as info:
        buf.close()
    assert len(info.value.errors) == 2 and all(isinstance(e, OSError) for e in info.value.errors)


def test_close_does_not_reraise_errors_already_handed_to_waiters(buffers):
    buf = buffers("waited", Recorder(answer=lambda item: ValueError(item)), max_size=1, interval=60)
    with pytest.raises(ValueError):
        buf.fire_and_wait("x", timeout=5)
    buf.close()  # the caller got its error; close has nothing to add


def test_flush_with_wrong_number_of_results_fails_the_batch(buffers):
    buf = buffers("short", lambda items: ["only one"], max_size=3, interval=60)
    futures = [buf.submit(i) for i in range(3)]
    # None of them is reported as a success: each fails with the batch's error, which says why.
    for future in futures:
        with pytest.raises(RuntimeError, match=r"^flush returned 1 results for 3 items$"):
            future.result(timeout=5)


def test_submit_returns_futures(buffers):
    buf = buffers("submit", Recorder(answer=lambda item: -item), max_size=100, interval=0.05)
    futures = [buf.submit(i) for i in range(50)]
    done, pending = wait_futures(futures, timeout=5)
    assert not pending
    assert [f.result() for f in futures] == [-i for i in range(50)]


def test_fire_and_wait_times_out_while_the_flush_is_stuck(buffers):
    release = threading.Event()
    buf = buffers("stuck", lambda items: release.wait(10) and None, max_size=1, interval=60)
    try:
        with pytest.raises(TimeoutError):
            buf.fire_and_wait("x", timeout=0.1)
    finally:
        release.set()


def test_queue_is_bounded_so_a_slow_flush_blocks_producers(buffers):
    release = threading.Event()
    flushed = []

    def slow_flush(items):
        release.wait(10)
        flushed.extend(items)

    max_size, max_pending, total = 2, 3, 40
    buf = buffers("slow", slow_flush, max_size=max_size, interval=0.01, max_pending=max_pending)
    put = []

    def producer():
        for i in range(total):
            buf.fire_forget(i)
            put.append(i)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        # Held at most: one batch inside the flush + a full queue. The producer waits.
        assert thread.is_alive(), "producer ran through: the queue is not bounded"
        assert 1 <= len(put) <= max_size + max_pending, len(put)
        stalled_at = len(put)
        time.sleep(0.2)
        assert len(put) == stalled_at  # still blocked, not slowly leaking
    finally:
        release.set()
    thread.join(5)
    assert not thread.is_alive()
    buf.close()
    assert flushed == list(range(total))


def test_closed_buffer_rejects_puts(buffers):
    flush = Recorder()
    buf = buffers("closed", flush, max_size=10, interval=60)
    buf.fire_forget(1)
    buf.close()
    for put in (buf.fire_forget, buf.fire_and_wait, buf.submit):
        with pytest.raises(RuntimeError):
            put(2)
    assert flush.batches == [[1]]
    buf.close()  # closing twice is harmless


def test_buffer_rejects_empty_batches():
    with pytest.raises(ValueError):
        BatchBuffer("zero", lambda items: None, max_size=0)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_cancelled_future_does_not_kill_the_buffer(buffers):
    buf = buffers("cancel", Recorder(answer=lambda item: item), max_size=100, interval=0.2)
    cancelled = buf.submit("a")
    assert cancelled.cancel()
    assert buf.fire_and_wait("b", timeout=1) == "b"
    assert buf.fire_and_wait("c", timeout=1) == "c"
    with pytest.raises(CancelledError):
        cancelled.result(timeout=0)


def test_context_drains_every_buffer_on_close():
    ctx = Context(job="unit", use_db=False)
    ok, bad = Recorder(), Recorder(answer=lambda item: RuntimeError(item))
    first = ctx.buffer("bad", bad, max_size=100, interval=60)
    second = ctx.buffer("ok", ok, max_size=100, interval=60)
    assert ctx.buffer("ok", Recorder()) is second  # created once, tracked by name
    first.fire_forget("x")
    second.fire_forget("y")
    with pytest.raises(FlushError) as info:
        ctx.close()
    assert info.value.buffer_name == "bad"
    assert ok.batches == [["y"]]  # drained although the first buffer failed
    with pytest.raises(RuntimeError):
        second.fire_forget("z")


# =========================================================================================
# hooks.py
# =========================================================================================

class FakeTransaction:
    def __init__(self, log, fail_commit=None):
        self.log, self.fail_commit = log, fail_commit

    def __enter__(self):
        self.log.append("begin")
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            if self.fail_commit:
                self.log.append("commit failed")
                raise self.fail_commit
            self.log.append("commit")
        else:
            self.log.append("rollback")
        return False  # like psycopg: never swallows the error


class FakeConnection:
    """What Transaction needs of a psycopg connection: transaction() and execute()."""

    def __init__(self, fail_commit=None):
        self.log: list[str] = []
        self.fail_commit = fail_commit

    def transaction(self):
        return FakeTransaction(self.log, self.fail_commit)

    def execute(self, query, params=None, **kwargs):
        self.log.append(f"execute {query}")


def test_hooks_run_in_order_around_the_commit():
    conn = FakeConnection()
    with Transaction(conn) as tx:
        tx.execute("DELETE")
        tx.on_pre_commit(lambda: conn.log.append("pre 1"))
        tx.on_post_commit(lambda: conn.log.append("post 1"))
        tx.on_pre_commit(lambda: conn.log.append("pre 2"))
        tx.on_post_commit(lambda: conn.log.append("post 2"))
        assert conn.log == ["begin", "execute DELETE"]  # nothing runs before the block ends
    assert conn.log == ["begin", "execute DELETE", "pre 1", "pre 2", "commit", "post 1", "post 2"]


def test_pre_commit_failure_rolls_back_and_propagates():
    conn = FakeConnection()
    post = []

    def failing():
        raise ValueError("pre-commit check failed")

    with pytest.raises(ValueError, match="pre-commit check failed"):
        with Transaction(conn) as tx:
            tx.on_pre_commit(failing)
            tx.on_post_commit(lambda: post.append("ran"))
    assert "commit" not in conn.log and conn.log[-1] == "rollback"
    assert post == []


def test_hooks_do_not_run_when_the_body_raises():
    conn = FakeConnection()
    ran = []
    with pytest.raises(KeyError):
        with Transaction(conn) as tx:
            tx.on_pre_commit(lambda: ran.append("pre"))
            tx.on_post_commit(lambda: ran.append("post"))
            raise KeyError("body failed")
    assert ran == []
    assert conn.log == ["begin", "rollback"]


def test_post_commit_hooks_do_not_run_when_the_commit_fails():
    conn = FakeConnection(fail_commit=OSError("connection lost during COMMIT"))
    ran = []
    with pytest.raises(OSError, match="COMMIT"):
        with Transaction(conn) as tx:
            tx.on_post_commit(lambda: ran.append("post"))
    assert ran == []


def test_every_post_commit_hook_runs_then_post_commit_error():
    conn = FakeConnection()
    ran = []

    def fail(name):
        def hook():
            ran.append(name)
            raise RuntimeError(name)
        return hook

    with pytest.raises(PostCommitError) as info:
        with Transaction(conn) as tx:
            tx.on_post_commit(fail("first"))
            tx.on_post_commit(lambda: ran.append("second"))
            tx.on_post_commit(fail("third"))
    assert ran == ["first", "second", "third"]
    assert [str(e) for e in info.value.errors] == ["first", "third"]
    assert isinstance(info.value, PonosError)
    assert "commit" in conn.log and "rollback" not in conn.log  # the commit stands


# =========================================================================================
# checkpoint.py
# =========================================================================================

IDENTITY = {"job": "s3-rename", "buckets": ["artifacts", "logs"], "shard": "1/4", "use_db": True}


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "progress.json"
    state = {"artifacts": {"after": "0f/été/ü +%#?.bin", "complete": False},
             "logs": {"after": None, "complete": True}}
    Checkpoint(str(path), IDENTITY).save(state)
    loaded = Checkpoint(str(path), dict(IDENTITY))
    assert loaded.load() == state
    assert loaded.state == state
    # Saving again replaces the state.
    loaded.save({"artifacts": {"after": "z", "complete": True}})
    assert Checkpoint(str(path), IDENTITY).load() == {"artifacts": {"after": "z", "complete": True}}


def test_checkpoint_missing_file_is_a_fresh_start(tmp_path):
    assert Checkpoint(str(tmp_path / "absent.json"), IDENTITY).load() == {}


def test_checkpoint_of_another_run_is_refused(tmp_path):
    path = tmp_path / "progress.json"
    Checkpoint(str(path), IDENTITY).save({"artifacts": {"after": "k"}})
    for change in ({"shard": "2/4"}, {"buckets": ["other"]}, {"job": "cleanup"}, {"use_db": False}):
        with pytest.raises(ConfigError):
            Checkpoint(str(path), {**IDENTITY, **change}).load()


@pytest.mark.parametrize("content", [b"", b"{", b'{"identity": ', b"not json", b"\xff\xfe\x00garbage"])
def test_corrupt_checkpoint_is_a_config_error(tmp_path, content):
    path = tmp_path / "progress.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError):
        Checkpoint(str(path), IDENTITY).load()


@pytest.mark.parametrize("content", ["[]", "null", "1", '"text"'])
def test_checkpoint_that_is_not_a_json_object_is_a_config_error(tmp_path, content):
    path = tmp_path / "progress.json"
    path.write_text(content)
    with pytest.raises(ConfigError):
        Checkpoint(str(path), IDENTITY).load()


def test_checkpoint_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "progress.json"
    checkpoint = Checkpoint(str(path), IDENTITY)
    for i in range(20):
        checkpoint.save({"after": f"key-{i}"})
    assert sorted(os.listdir(tmp_path)) == ["progress.json"]
    # A save that fails keeps the previous state intact and leaves nothing behind.
    with pytest.raises(TypeError):
        checkpoint.save({"after": object()})
    assert sorted(os.listdir(tmp_path)) == ["progress.json"]
    assert Checkpoint(str(path), IDENTITY).load() == {"after": "key-19"}


def test_checkpoint_without_path_is_a_no_op(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = Checkpoint(None, IDENTITY)
    assert checkpoint.load() == {}
    checkpoint.save({"after": "k"})
    assert checkpoint.state == {"after": "k"}  # kept in memory
    assert os.listdir(tmp_path) == []
    assert Checkpoint(None, IDENTITY).load() == {}


# =========================================================================================
# connections.py
# =========================================================================================

SECRET = "hunter2-S3cr3t"


@pytest.fixture
def clean_pg_env(monkeypatch):
    for name in ("DATABASE_URL", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD",
                 "PGSERVICE", "PGSERVICEFILE", "PGPASSFILE", "PGSSLMODE", "PGOPTIONS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("text", [
    f"postgresql://alice:{SECRET}@db.example:5432/ponos",
    f"postgres://alice:{SECRET}@db.example/ponos?sslmode=require",
    f"postgresql://:{SECRET}@db.example/ponos",
    f"error: could not connect to postgresql://alice:{SECRET}@db.example/ponos: refused",
    f"host=db.example password={SECRET} dbname=ponos",
    f"host=db.example password = {SECRET} dbname=ponos",
    f"host=db.example PASSWORD={SECRET}",
    f"host=db.example password='{SECRET}' dbname=ponos",
    f"host=db.example password='{SECRET} with spaces' dbname=ponos",
    f"host=db.example password='it\\'s {SECRET}' dbname=ponos",
    f"postgresql://alice@db.example/ponos?password={SECRET}&sslmode=require",
])
def test_redact_masks_dsn_passwords(text):
    redacted = redact(text)
    assert SECRET not in redacted
    assert "with spaces" not in redacted and "it\\'s" not in redacted
    assert "***" in redacted
    assert "db.example" in redacted  # the rest stays readable


def test_redact_leaves_passwordless_text_alone():
    for text in ("postgresql://alice@db.example:5432/ponos", "host=db port=5432 dbname=ponos",
                 "postgresql://db.example:5432/ponos", "s3://bucket/key: AccessDenied"):
        assert redact(text) == text


def test_redact_masks_extra_secrets_and_ignores_empty_ones():
    assert redact(f"token {SECRET} and again {SECRET}", SECRET) == "token *** and again ***"
    assert redact("nothing to hide", None, "") == "nothing to hide"
    text = f"postgresql://a:{SECRET}@h/d key=AKIAEXAMPLE"
    redacted = redact(text, "AKIAEXAMPLE")
    assert SECRET not in redacted and "AKIAEXAMPLE" not in redacted


def test_redact_masks_sslpassword():
    assert SECRET not in redact(f"host=db sslpassword={SECRET} sslkey=/k.pem")


def test_describe_dsn_never_shows_the_password(clean_pg_env):
    assert describe_dsn(f"postgresql://alice:{SECRET}@db.example:6543/ponos") == "alice@db.example:6543/ponos"
    described = describe_dsn(f"host=db.example port=6543 user=alice password='{SECRET}' dbname=ponos")
    assert described == "alice@db.example:6543/ponos"
    assert SECRET not in describe_dsn(f"postgresql://alice:{SECRET}@db.example/ponos")
    assert "bad" not in describe_dsn("host='bad password=x")  # unparsable: says so, echoes nothing


def test_resolve_dsn_precedence(clean_pg_env):
    monkeypatch = clean_pg_env
    assert resolve_dsn(None) == ""  # libpq reads PG* itself
    monkeypatch.setenv("DATABASE_URL", "postgresql://from-env/db")
    assert resolve_dsn(None) == "postgresql://from-env/db"
    assert resolve_dsn("") == "postgresql://from-env/db"
    assert resolve_dsn("postgresql://explicit/db") == "postgresql://explicit/db"
    monkeypatch.delenv("DATABASE_URL")
    assert resolve_dsn("host=explicit") == "host=explicit"


@pytest.mark.parametrize("dsn", [
    f"postgresql://alice:{SECRET}@127.0.0.1:1/ponos",
    f"host=127.0.0.1 port=1 user=alice password='{SECRET}' dbname=ponos",
])
def test_connect_pg_unreachable_is_one_redacted_line(clean_pg_env, dsn):
    with pytest.raises(ServiceUnreachable) as info:
        connect_pg(dsn)
    message = str(info.value)
    assert "\n" not in message
    assert SECRET not in message
    assert "127.0.0.1" in message  # says which server
    assert info.value.exit_code == 75  # nobody answers: maybe a failover, run again later


def test_connect_pg_unreachable_via_database_url_and_pgpassword(clean_pg_env):
    clean_pg_env.setenv("DATABASE_URL", "postgresql://alice@127.0.0.1:1/ponos")
    clean_pg_env.setenv("PGPASSWORD", SECRET)
    with pytest.raises(ServiceUnreachable) as info:
        connect_pg(None)
    assert SECRET not in str(info.value) and "\n" not in str(info.value)


def test_connect_pg_invalid_dsn_is_a_config_error_without_the_password(clean_pg_env):
    with pytest.raises(ConfigError) as info:
        connect_pg(f"postgresql://alice:{SECRET}@[db/ponos")  # libpq echoes the URI back
    assert not isinstance(info.value, ServiceUnreachable)
    assert SECRET not in str(info.value)


def test_connect_pg_invalid_dsn_message_is_one_line(clean_pg_env):
    with pytest.raises(ConfigError) as info:
        connect_pg("host=127.0.0.1 password='unterminated")
    assert "\n" not in str(info.value)


# =========================================================================================
# report.py
# =========================================================================================

def test_report_counts_and_items():
    report = Report("unit", dry_run=True)
    report.count("moved")
    report.count("moved", 4)
    report.add("failed", {"key": "a"})
    report.add("failed", {"key": "b"})
    report.add("note", "not counted", also_count=False)
    data = report.to_dict(extra="yes")
    assert data["job"] == "unit" and data["dry_run"] is True and data["extra"] == "yes"
    assert data["counts"] == {"moved": 5, "failed": 2}
    assert data["items"] == {"failed": [{"key": "a"}, {"key": "b"}], "note": ["not counted"]}
    assert data["items_truncated"] == []


def test_report_limit_truncates_the_list_but_not_the_count():
    report = Report("unit")
    for i in range(25):
        report.add("unrecognized", f"key-{i}", limit=10)
    report.add("conflicts", "c", limit=10)
    data = report.to_dict()
    assert data["items"]["unrecognized"] == [f"key-{i}" for i in range(10)]
    assert data["counts"]["unrecognized"] == 25
    assert data["items_truncated"] == ["unrecognized"]  # conflicts stayed under its limit


def test_report_counts_are_exact_across_threads():
    report = Report("unit")

    def work():
        for _ in range(2000):
            report.count("n")
            report.add("items", 1, limit=5)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert report.counts["n"] == 16_000 and report.counts["items"] == 16_000
    assert len(report.items["items"]) == 5


def test_report_phase_durations():
    report = Report("unit")
    with report.phase("scan", bucket="b") as record:
        time.sleep(0.05)
        record["keys"] = 3
    with pytest.raises(ZeroDivisionError):
        with report.phase("broken"):
            1 / 0
    phases = report.to_dict()["phases"]
    assert [p["name"] for p in phases] == ["scan", "broken"]  # recorded even when it fails
    assert phases[0]["bucket"] == "b" and phases[0]["keys"] == 3
    assert 0.04 <= phases[0]["seconds"] < 5
    assert 0 <= phases[1]["seconds"] < phases[0]["seconds"]


def test_report_writes_json_to_a_file(tmp_path):
    report = Report("unit", endpoint="aws")
    report.count("moved", 2)
    report.add("failed", {"key": "été/ü +%#?", "reason": ValueError("x")})  # not JSON: str()
    report.error("one thing failed")
    path = tmp_path / "report.json"
    report.write(str(path), exit_code=1)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["job"] == "unit" and data["endpoint"] == "aws" and data["exit_code"] == 1
    assert data["counts"] == {"failed": 1, "moved": 2}
    assert data["items"]["failed"][0]["key"] == "été/ü +%#?"
    assert data["errors"] == ["one thing failed"]
    assert isinstance(data["seconds"], (int, float)) and data["seconds"] >= 0
    time.strptime(data["started_at"], "%Y-%m-%dT%H:%M:%SZ")


def test_report_writes_json_to_stdout(capsys):
    report = Report("unit")
    report.count("scanned", 3)
    report.write("-")
    data = json.loads(capsys.readouterr().out)
    assert data["counts"] == {"scanned": 3}


def test_report_without_destination_writes_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Report("unit").write(None)
    Report("unit").write("")
    assert capsys.readouterr().out == "" and os.listdir(tmp_path) == []


# =========================================================================================
# s3/copy.py
# =========================================================================================

@pytest.mark.parametrize("size", [1, 1000, MIN_PART_SIZE - 1, MIN_PART_SIZE, MIN_PART_SIZE + 1,
                                  5 * GiB + 1, 50 * GiB + 7, 5 * TiB, 6 * TiB, 6 * TiB + 3])
@pytest.mark.parametrize("part_size", [1, MIN_PART_SIZE, 8 * MiB + 3, 256 * MiB])
def test_part_ranges_cover_the_object_exactly(size, part_size):
    ranges = part_ranges(size, part_size)
    assert ranges[0][0] == 0 and ranges[-1][1] == size - 1
    for (first, last), (next_first, _) in zip(ranges, ranges[1:]):
        assert next_first == last + 1  # contiguous, no overlap
    assert all(last >= first for first, last in ranges)
    assert len(ranges) <= MAX_PARTS
    lengths = [last - first + 1 for first, last in ranges]
    assert sum(lengths) == size
    assert all(n >= MIN_PART_SIZE for n in lengths[:-1])  # only the last part may be small
    # The requested part size is kept whenever S3's limits allow it.
    if part_size >= MIN_PART_SIZE and math.ceil(size / part_size) <= MAX_PARTS:
        assert all(n == part_size for n in lengths[:-1])
        assert len(ranges) == math.ceil(size / part_size)


def test_part_ranges_grow_parts_for_huge_objects():
    ranges = part_ranges(6 * TiB, 5 * MiB)
    assert len(ranges) <= MAX_PARTS
    assert ranges[-1][1] == 6 * TiB - 1
    # as few parts grown as little as possible: the parts are just big enough
    assert len(ranges) > MAX_PARTS - 10


def test_part_ranges_stay_within_s3_max_part_size():
    ranges = part_ranges(20 * GiB, 8 * GiB)
    assert all(last - first + 1 <= S3_MAX_PART_SIZE for first, last in ranges)


@pytest.mark.parametrize("key", ["", "/", "/leading", "trailing/", "a//b", "//", "./a", "a/./b",
                                 "a/..", "../a", "a/../b", ".", "..", "a/.", "ctrl\x01char",
                                 "tab\tkey", "new\nline", "nul\x00", "back\\slash"])
def test_obstore_can_copy_rejects_keys_obstore_would_change(key):
    assert obstore_can_copy(key) is False


OBSTORE_SAFE_KEYS = [
    "a", "a/b", "wf/task/with space.txt", "données/ü/日本語.json", "plus+percent%20hash#q?x=1&y",
    "a/.hidden", "a/..b", "a/...", "...", "a/b.", "emoji/😀", "~/x", "*", "a/ b ", " ",
    "x%2Fy", "zero\u200bwidth", "line\u2028sep", "c1\x85ctrl",
]


@pytest.mark.parametrize("key", OBSTORE_SAFE_KEYS)
def test_obstore_can_copy_accepts_awkward_valid_keys(key):
    assert obstore_can_copy(key) is True


def _obstore_round_trips(key: str) -> bool:
    """obstore's own answer: store the key in memory and see which path comes back."""
    import obstore
    from obstore.store import MemoryStore

    store = MemoryStore()
    try:
        obstore.put(store, key, b"x")
    except (ValueError, OSError):
        return False
    return [meta["path"] for meta in obstore.list(store).collect()] == [key]


@pytest.mark.parametrize("key", OBSTORE_SAFE_KEYS + ["/leading", "trailing/", "a//b", "a/./b", "a\x01b"])
def test_obstore_can_copy_is_never_wrong_about_obstore(key):
    """The fast path may be refused for keys obstore could handle, never the reverse."""
    if obstore_can_copy(key):
        assert _obstore_round_trips(key)


def test_obstore_can_copy_rejects_del():
    key = "wf/task/del\x7fchar"
    assert not _obstore_round_trips(key)  # obstore's own verdict
    assert obstore_can_copy(key) is False


# =========================================================================================
# s3/delete.py
# =========================================================================================

@pytest.fixture
def stubbed_s3():
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing", endpoint_url="https://s3.us-east-1.amazonaws.com")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def _delete_request(bucket, chunk):
    return {"Bucket": bucket, "Delete": {"Objects": [{"Key": k} for k in chunk], "Quiet": False}}


def _deleted(keys_):
    return [{"Key": k} for k in keys_]


def test_delete_keys_reports_per_key_errors_of_a_200(stubbed_s3):
    client, stubber = stubbed_s3
    batch = ["wf/t/a.txt", "wf/t/b c.txt", "wf/t/ü+%#?.bin", "t.log"]
    stubber.add_response("delete_objects", {
        "Deleted": _deleted([batch[0], batch[2]]),
        "Errors": [{"Key": "wf/t/b c.txt", "Code": "AccessDenied", "Message": "Access Denied"},
                   {"Key": "t.log", "Code": "InternalError", "Message": "try again"}],
    }, _delete_request("bkt", batch))
    # A per-key InternalError is worth another try, alone.
    stubber.add_client_error("delete_object", service_error_code="AccessDenied", http_status_code=403,
                             expected_params={"Bucket": "bkt", "Key": "t.log"})
    results = delete_keys(client, "bkt", batch)
    assert len(results) == len(batch)
    assert results[0] is None and results[2] is None
    for index, code in ((1, "AccessDenied"), (3, "AccessDenied")):
        err = results[index]
        assert isinstance(err, ObjectDeleteError)
        assert (err.bucket, err.key, err.code) == ("bkt", batch[index], code)
        assert batch[index] in str(err)


def test_a_key_counts_as_deleted_only_with_an_explicit_deleted_entry(stubbed_s3):
    client, stubber = stubbed_s3
    batch = ["a", "b", "c"]
    # The answer names "a" only, and "b" under another spelling: both others go again, alone.
    stubber.add_response("delete_objects", {"Deleted": [{"Key": "a"}, {"Key": "B"}]}, _delete_request("bkt", batch))
    stubber.add_response("delete_object", {}, {"Bucket": "bkt", "Key": "b"})
    stubber.add_response("delete_object", {}, {"Bucket": "bkt", "Key": "c"})
    assert delete_keys(client, "bkt", batch) == [None, None, None]


def test_keys_xml_cannot_carry_never_go_in_a_batch(stubbed_s3):
    client, stubber = stubbed_s3
    batch = ["ok-1", "bell\x07key", "ok-2", "cr\rkey", "nonchar\uffff"]
    stubber.add_response("delete_objects", {"Deleted": _deleted(["ok-1", "ok-2"])},
                         _delete_request("bkt", ["ok-1", "ok-2"]))
    for key in ("bell\x07key", "cr\rkey", "nonchar\uffff"):
        stubber.add_response("delete_object", {}, {"Bucket": "bkt", "Key": key})
    assert delete_keys(client, "bkt", batch) == [None] * 5


def test_a_batch_refused_whole_is_split_down_to_the_bad_key(stubbed_s3):
    client, stubber = stubbed_s3
    batch = ["k0", "k1", "k2", "k3"]
    stubber.add_client_error("delete_objects", service_error_code="MalformedXML", http_status_code=400,
                             expected_params=_delete_request("bkt", batch))
    stubber.add_response("delete_objects", {"Deleted": _deleted(["k0", "k1"])}, _delete_request("bkt", ["k0", "k1"]))
    stubber.add_client_error("delete_objects", service_error_code="MalformedXML", http_status_code=400,
                             expected_params=_delete_request("bkt", ["k2", "k3"]))
    stubber.add_response("delete_object", {}, {"Bucket": "bkt", "Key": "k2"})
    stubber.add_client_error("delete_object", service_error_code="InvalidArgument", http_status_code=400,
                             expected_params={"Bucket": "bkt", "Key": "k3"})
    results = delete_keys(client, "bkt", batch)
    assert results[:3] == [None, None, None]
    assert isinstance(results[3], ObjectDeleteError) and results[3].code == "InvalidArgument"


def test_versions_and_etags_are_named_when_given(stubbed_s3):
    client, stubber = stubbed_s3
    refs = [ObjectRef("a", version_id="v1", etag="e1"), ObjectRef("b", etag='"e2"')]
    stubber.add_response("delete_objects", {"Deleted": [{"Key": "a", "VersionId": "v1"}],
                                            "Errors": [{"Key": "b", "Code": "PreconditionFailed", "Message": "x"}]},
                         {"Bucket": "bkt", "Delete": {"Quiet": False, "Objects": [
                             {"Key": "a", "VersionId": "v1", "ETag": '"e1"'}, {"Key": "b", "ETag": '"e2"'}]}})
    results = delete_objects(client, "bkt", refs, conditional=True)
    assert results[0] is None
    assert results[1].code == "PreconditionFailed" and results[1].kind is S3Kind.PRECONDITION


def test_delete_keys_splits_into_requests_of_at_most_1000(stubbed_s3):
    client, stubber = stubbed_s3
    batch = [f"task/{i:05d}.bin" for i in range(2 * MAX_KEYS_PER_REQUEST + 500)]
    assert MAX_KEYS_PER_REQUEST == 1000  # S3's DeleteObjects limit
    chunks = [batch[i:i + 1000] for i in range(0, len(batch), 1000)]
    failing = {batch[5], batch[1500], batch[-1]}
    for chunk in chunks:
        errors = [{"Key": k, "Code": "AccessDenied", "Message": "x"} for k in chunk if k in failing]
        stubber.add_response("delete_objects", {"Deleted": _deleted(k for k in chunk if k not in failing),
                                                **({"Errors": errors} if errors else {})},
                             _delete_request("bkt", chunk))
    results = delete_keys(client, "bkt", batch)
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    assert len(results) == len(batch)
    assert {batch[i] for i, r in enumerate(results) if r is not None} == failing


def test_delete_keys_raises_when_the_whole_request_is_denied(stubbed_s3):
    client, stubber = stubbed_s3
    stubber.add_client_error("delete_objects", service_error_code="AccessDenied", http_status_code=403,
                             expected_params=_delete_request("bkt", ["a", "b"]))
    with pytest.raises(S3PermissionError) as info:
        delete_keys(client, "bkt", ["a", "b"])
    assert "s3:DeleteObject" in str(info.value) and info.value.exit_code == 2


def test_delete_keys_raises_when_the_whole_request_keeps_failing(stubbed_s3):
    client, stubber = stubbed_s3
    stubber.add_client_error("delete_objects", service_error_code="SlowDown", http_status_code=503,
                             expected_params=_delete_request("bkt", ["a", "b"]))
    with pytest.raises(ClientError):
        delete_keys(client, "bkt", ["a", "b"])


def test_delete_keys_as_a_buffer_flush_fails_only_the_refused_keys(stubbed_s3):
    client, stubber = stubbed_s3
    stubber.add_response("delete_objects", {
        "Deleted": _deleted(["a", "c"]),
        "Errors": [{"Key": "b", "Code": "AccessDenied", "Message": "no"}]}, _delete_request("bkt", ["a", "b", "c"]))
    buf = BatchBuffer("delete:bkt", lambda batch: delete_keys(client, "bkt", batch), max_size=3, interval=60)
    futures = {k: buf.submit(k) for k in ("a", "b", "c")}
    assert futures["a"].result(timeout=5) is None and futures["c"].result(timeout=5) is None
    with pytest.raises(ObjectDeleteError) as info:
        futures["b"].result(timeout=5)
    assert info.value.key == "b"
    buf.close()


# =========================================================================================
# s3/listing.py (moto: an in-process fake S3)
# =========================================================================================

BOUNDARY_KEYS = [
    "0", "0000", "0000/x", "3fff", "3fff/x", "3fffffff-0000-4000-8000-000000000000/x",
    "400", "400-x", "400/x", "4000", "4000/x", "40000", "4000a", "4001",
    "7fff", "7fff/x", "8000", "8000a", "8000/x", "aaaa", "aaab", "bfff", "c000", "c000/x",
    "ffff", "ffff/x", "fffff", "g", "README", "tmp/x", "ABCD/x", "Z", "ü/x", "日本/x", "😀",
]


@pytest.fixture(scope="module")
def listing_bucket():
    """One read-only bucket in moto for every listing test (building it is the slow part)."""
    from moto import mock_aws

    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        with mock_aws():
            client = boto3.client("s3", region_name="us-east-1")
            rng = random.Random(21)
            keys_ = set(BOUNDARY_KEYS)
            keys_.update(f"{new_id(rng)}/{new_id(rng)}/f" for _ in range(40))
            keys_.update(f"{new_id(rng)}.log" for _ in range(10))
            client.create_bucket(Bucket="listing-bucket")
            for key in keys_:
                client.put_object(Bucket="listing-bucket", Key=key, Body=key.encode())
            # S3 lists in UTF-8 byte order (the same as Python's code-point order).
            yield client, "listing-bucket", sorted(keys_, key=lambda k: k.encode())


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 16])
def test_shard_listings_cover_every_key_once_in_order(listing_bucket, count):
    client, bucket, everything = listing_bucket
    listed = []
    for index in range(count):
        shard = Shard(index, count)
        for page in iter_pages(client, bucket, key_range=shard.key_range, page_size=7):
            assert 0 < len(page) <= 7
            assert all(obj.key in shard for obj in page)
            listed += [obj.key for obj in page]
    assert listed == everything


def test_iter_pages_start_at_is_inclusive_and_end_before_exclusive(listing_bucket):
    client, bucket, everything = listing_bucket
    got = [o.key for o in iter_objects(client, bucket, key_range=KeyRange("4000", "8000"), page_size=3)]
    assert got == [k for k in everything if "4000" <= k < "8000"]
    assert got[0] == "4000" and "400/x" not in got and "400-x" not in got and "8000" not in got


def test_iter_pages_start_after_is_exclusive(listing_bucket):
    client, bucket, everything = listing_bucket
    got = [o.key for o in iter_objects(client, bucket, start_after="4000", page_size=5)]
    assert got == [k for k in everything if k > "4000"]


@pytest.mark.parametrize("start_after, start_at", [
    ("4000/x", "4000"),     # a resumed checkpoint inside the shard: start_after wins
    ("3fff", "4000"),       # a checkpoint from before the shard: start_at wins
    ("4000", "4000"),       # equal: exclusive is the later one
])
def test_iter_pages_the_later_start_wins(listing_bucket, start_after, start_at):
    client, bucket, everything = listing_bucket
    got = [o.key for o in iter_objects(client, bucket, start_after=start_after, key_range=KeyRange(start_at, "c000"),
                                       page_size=4)]
    assert got == [k for k in everything if k > start_after and k >= start_at and k < "c000"]


def test_iter_pages_sizes_and_etags(listing_bucket):
    client, bucket, _ = listing_bucket
    page = next(iter_pages(client, bucket, key_range=KeyRange("4000", "4001")))
    by_key = {o.key: o for o in page}
    assert set(by_key) == {"4000", "4000/x", "40000", "4000a"}
    assert by_key["4000/x"].size == len(b"4000/x") and by_key["4000/x"].etag


@pytest.mark.parametrize("value", [
    "2026-11-23T13:20:30.000Z",                       # ListObjectsV2
    "Mon, 23 Nov 2026 13:20:30 GMT",                  # HEAD / GET Last-Modified
    datetime(2026, 11, 23, 13, 20, 30, tzinfo=timezone.utc),  # a client that parsed it already
])
def test_timestamp_reads_every_form_s3_sends(value):
    assert timestamp(value) == datetime(2026, 11, 23, 13, 20, 30, tzinfo=timezone.utc)


def test_our_clients_leave_listing_timestamps_unparsed_and_iter_pages_keeps_them(listing_bucket):
    _, bucket, everything = listing_bucket
    client = Context(job="t", use_db=False).s3
    raw = client.list_objects_v2(Bucket=bucket, MaxKeys=1)["Contents"][0]["LastModified"]
    assert isinstance(raw, str)
    objects = list(iter_objects(client, bucket, page_size=9))  # several continuation tokens
    assert [o.key for o in objects] == everything
    assert all(abs((timestamp(o.last_modified) - datetime.now(timezone.utc)).total_seconds()) < 3600
               for o in objects)


def test_iter_top_level(listing_bucket):
    client, bucket, everything = listing_bucket
    expected = sorted({k.split("/", 1)[0] + "/" if "/" in k else k for k in everything},
                      key=lambda k: k.encode())
    assert list(iter_top_level(client, bucket)) == expected


# =========================================================================================
# cli.py ByteSize
# =========================================================================================

@pytest.mark.parametrize("text, expected", [
    ("5GiB", 5 * GiB), ("512MiB", 512 * MiB), ("100MB", 100 * 10 ** 6), ("1048576", 1048576),
    ("1KiB", KiB), ("1kb", 1000), ("2TiB", 2 * TiB), ("7b", 7), ("1.5KiB", 1536),
    (" 5 GiB ", 5 * GiB), ("5gib", 5 * GiB), (12345, 12345),
])
def test_byte_size_converts(text, expected):
    assert ByteSize().convert(text, None, None) == expected


@pytest.mark.parametrize("text", ["", "abc", "GiB", "5XB", "5G", "5 GiBs", "-1", "0", "0.1", "1/2", "nan"])
def test_byte_size_rejects_bad_values(text):
    with pytest.raises(click.BadParameter):
        ByteSize().convert(text, None, None)


@pytest.mark.parametrize("text", ["inf", "1e400"])
def test_byte_size_rejects_infinite_values(text):
    with pytest.raises(click.BadParameter):
        ByteSize().convert(text, None, None)


def test_byte_size_in_a_command():
    @click.command()
    @click.option("--size", type=ByteSize(), default="5GiB")
    def show(size):
        click.echo(size)

    runner = CliRunner()
    assert runner.invoke(show, []).output.strip() == str(5 * GiB)
    assert runner.invoke(show, ["--size", "256MiB"]).output.strip() == str(256 * MiB)
    bad = runner.invoke(show, ["--size", "lots"])
    assert bad.exit_code == 2
    assert "lots" in bad.output and "is not a size" in bad.output


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


# =========================================================================================
# keys.bucket_passes: which listings cover the buckets (rename, verify, orphan sweep)

def test_bucket_passes_one_listing_when_both_layouts_share_a_bucket():
    assert keys.bucket_passes("b", "b") == [keys.BucketPass("b", artifacts=True, logs=True)]
    assert keys.bucket_passes("a", "l") == [keys.BucketPass("a", artifacts=True, logs=False),
                                            keys.BucketPass("l", artifacts=False, logs=True)]
    assert keys.bucket_passes("a", None) == [keys.BucketPass("a", artifacts=True, logs=False)]
    assert keys.bucket_passes(None, "l") == [keys.BucketPass("l", artifacts=False, logs=True)]
    with pytest.raises(ConfigError, match="--artifacts-bucket, --logs-bucket or both"):
        keys.bucket_passes(None, "")


def test_is_new_is_exactly_the_new_layout_kinds():
    for kind in Kind:
        assert keys.Classified("k", kind).is_new == (kind in (Kind.NEW_ARTIFACT, Kind.NEW_LOG))
