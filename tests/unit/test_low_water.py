"""migrate/low_water.py: the rename's low-water mark over settled pages. No server."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

from migrate.low_water import LowWaterMark
from ponoskit.s3.errors import S3TransientError


def done(value=True) -> Future:
    future = Future()
    future.set_result(value)
    return future


def test_the_mark_advances_over_settled_pages_in_order_only():
    state, saves = {"after": None}, []
    mark = LowWaterMark(state, lambda: saves.append(dict(state)))
    slow = Future()
    mark.add("a9", [done(), done()])
    mark.add("b9", [slow])
    mark.add("c9", [done()])
    mark.settle(10, lambda ok: ok)
    assert state["after"] == "a9"  # c9 is done, but b9 is not: the mark waits
    slow.set_result(True)
    mark.settle(10, lambda ok: ok)
    assert state["after"] == "c9" and [s["after"] for s in saves] == ["a9", "b9", "c9"]


def test_past_a_problem_the_mark_stays_so_a_rerun_sees_it_again():
    state = {"after": None}
    mark = LowWaterMark(state)
    mark.add("a9", [done()])
    mark.add("b9", [done(False)])  # a conflict
    mark.add("c9", [done()])
    assert mark.finish(lambda ok: ok) is False
    assert state == {"after": "a9", "complete": False}


def test_an_undecided_page_keeps_the_mark_and_a_folder_marker_page_does_not_move_it():
    state = {"after": None}
    mark = LowWaterMark(state)
    mark.add("a9", [done()])
    mark.add(None, [])  # a page of folder markers only
    mark.add("c9", [done()], decided=False)
    mark.finish(lambda ok: ok)
    assert state["after"] == "a9"


def test_a_full_window_waits_for_the_oldest_page_whole():
    state = {"after": None}
    mark = LowWaterMark(state)
    pending = [Future() for _ in range(3)]
    mark.add("a9", pending)
    threading.Timer(0.2, lambda: [f.set_result(True) for f in pending]).start()
    started = time.monotonic()
    mark.settle(0, lambda ok: ok)
    assert time.monotonic() - started >= 0.15 and state["after"] == "a9" and mark.in_flight == 0


def test_a_move_that_raised_stops_the_run_and_keeps_the_mark():
    state = {"after": "x"}
    mark = LowWaterMark(state)
    failed = Future()
    failed.set_exception(S3TransientError("S3 kept failing"))
    mark.add("a9", [failed])
    with pytest.raises(S3TransientError):
        mark.settle(10, lambda ok: ok)
    assert state["after"] == "x"
