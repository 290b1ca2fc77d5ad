"""migrate/claims.py: the rename's own overwrite guard, alone (no server)."""

from __future__ import annotations

import random
import threading

from migrate import claims as claims_module
from migrate.claims import Claims, FingerprintTable, layout_group, origin_of

TASK = "3f0c1c8e-8a4e-4f7e-9d6a-0d1f2e3a4b5c"
W1, W2 = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"


def test_layout_group_and_origin():
    assert layout_group(f"{TASK}/a/b.json") == f"{TASK}/"
    assert layout_group(f"{TASK}.log") == f"{TASK}.log"
    assert layout_group(f"{TASK}/") == f"{TASK}/"
    assert origin_of(f"{W1}/{TASK}/a/b.json", f"{TASK}/a/b.json") == f"{W1}/"
    assert origin_of(f"{W1}/run_3/{TASK}.log", f"{TASK}.log") == f"{W1}/run_3/"
    assert origin_of(f"{W1}/{TASK.upper()}/x", f"{TASK}/x") == f"{W1}/"


def test_fingerprint_table_first_write_wins_across_frozen_segments(monkeypatch):
    monkeypatch.setattr(claims_module, "SEGMENT", 64)
    table = FingerprintTable()
    rng = random.Random(3)
    truth = {}
    for _ in range(1000):
        key, value = rng.getrandbits(63) - (1 << 62), rng.getrandbits(63)
        truth.setdefault(key, value)
        assert table.setdefault(key, value) == truth[key]
    assert len(table._frozen) >= 10  # the arrays were really used
    for key, value in truth.items():
        assert table.get(key) == value
        assert table.setdefault(key, value + 1) == value  # never overwritten
    assert table.get(12345) is None and len(table) == len(truth)


def test_one_prefix_owns_a_task_and_another_is_contested_from_then_on():
    claims = Claims()
    first = claims.claim(f"{W1}/{TASK}/a", f"{TASK}/a")
    second = claims.claim(f"{W1}/{TASK}/b", f"{TASK}/b")
    assert not first.contested and not second.contested
    third = claims.claim(f"{W2}/{TASK}/a", f"{TASK}/a")
    assert third.contested and third.earlier is first.settled  # waits for the first copy there
    later = claims.claim(f"{W1}/{TASK}/c", f"{TASK}/c")
    assert later.contested  # the owner's later keys look first too, once the task is contested
    # Logs and artifacts of one task have different owners.
    assert not claims.claim(f"{W2}/run_1/{TASK}.log", f"{TASK}.log").contested
    assert claims.claim(f"{W1}/run_2/{TASK}.log", f"{TASK}.log").contested


def test_a_settled_claim_frees_its_key_and_a_taken_key_is_taken_once():
    claims = Claims()
    first = claims.claim(f"{W1}/{TASK}/a", f"{TASK}/a")
    claims.settled(first)
    assert first.settled.is_set()
    again = claims.claim(f"{W2}/{TASK}/a", f"{TASK}/a")
    assert again.earlier is None  # nothing in flight: it looks at the bucket instead
    assert claims.take(again)
    assert claims.take(again)  # the same move asking again (a retried copy)
    rival = claims.claim(f"{W2}x/{TASK}/a", f"{TASK}/a")
    assert not claims.take(rival)


def test_waiting_for_an_earlier_copy_blocks_until_it_settles():
    claims = Claims()
    first = claims.claim(f"{W1}/{TASK}/a", f"{TASK}/a")
    second = claims.claim(f"{W2}/{TASK}/a", f"{TASK}/a")
    waited = threading.Event()

    def wait():
        second.wait_for_earlier()
        waited.set()
    thread = threading.Thread(target=wait)
    thread.start()
    assert not waited.wait(0.2)
    claims.settled(first)
    assert waited.wait(5)
    thread.join()
