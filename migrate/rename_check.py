"""The rename's final check: nothing in scope is left once the listing has gone by.

The listing sees every key at or after its cursor; a legacy key written behind it while the
run went on would be missed. Only the legacy release writes legacy keys, and only for its
tasks, which the database knows: tasks still unfinished when the pass began, or created or
changed since (``created``/``updated``, set by the application, on its clock: a margin covers
the skew). Their legacy keys are looked up by prefix and moved, round after round, until a
round finds none; if some keep appearing (tasks still running under the legacy release), the
run says so (exit 1) instead of claiming it is done. For an expand that has run before,
the same lookup is the whole run (the catch-up). For a rollback it is the other way round:
the new-layout keys of the tasks changed meanwhile are looked up and copied back.

Once ``ponos_task.workflow_id`` is gone (the fold's contract), no legacy release can run, so
no legacy key can appear: the pass itself was the check. Without a database, a second
listing of the range is.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta
from typing import Callable, Iterator

from ponoskit import keys
from ponoskit.keyrange import KeyRange
from ponoskit.s3.listing import iter_pages
from ponoskit.schema import column_exists
from ponoskit.tasks import UNFINISHED_STATES

from .s3_mover import COPY, RESTORE, MoveOutcome

CLOCK_MARGIN = timedelta(minutes=10)
ROUNDS = 3
TASKS_PER_READ = 1000  # changed tasks read at a time (keyset pages: memory stays flat)
MAX_IN_FLIGHT = 4000  # moves submitted and not yet recorded, as in the main pass

# Outcomes that mean the check found something to do (not a key already in place).
NEW_WORK = (MoveOutcome.MOVED, MoveOutcome.COPIED, MoveOutcome.RESTORED, MoveOutcome.ALREADY_MOVED)

CHANGED_TASKS_SQL = """
SELECT id, id::text AS task, workflow_id::text, run, state FROM ponos_task
 WHERE workflow_id IS NOT NULL AND id > %(after)s
   AND (state = ANY(%(unfinished)s) OR created >= %(since)s OR updated >= %(since)s)
 ORDER BY ponos_task.id LIMIT %(limit)s"""
NO_TASK = "00000000-0000-0000-0000-000000000000"  # below every task id


def final_check(context, bucket_pass: keys.BucketPass, key_range: KeyRange, mover, present, *,
                since: str, record: Callable, mode=None) -> dict:
    restoring, copying = mode is RESTORE, mode is COPY
    if context.dry_run:
        return {"final_check": "skipped (dry run)"}
    if not context.use_db:
        return _relist(context, bucket_pass, key_range, mover, record)
    if not context.with_db("the schema", lambda db: column_exists(db, "ponos_task", "workflow_id")):
        return {"final_check": "not needed: no legacy release can write (ponos_task.workflow_id is gone)"}
    moment = datetime.fromisoformat(since) - CLOCK_MARGIN
    moved_total = 0
    for round_number in range(1, ROUNDS + 1):
        round_start = context.with_db("the final check's clock", lambda db: db.execute("SELECT now()").fetchone()[0])
        found = _check_round(context, bucket_pass, key_range, mover, present, moment, record, restoring)
        moved_total += found
        if not found:
            return {"final_check": "clean", "rounds": round_number, "moved_in_check": moved_total,
                    "checked_at": round_start.isoformat()}
        context.log.info("final check: %d key(s) written during the run, done; looking again", found)
        moment = round_start - CLOCK_MARGIN
        last_start = round_start
    if copying:
        # The legacy release runs during the expand: what it writes after the last round began
        # is for the next catch-up (and the contract moves whatever is still only legacy).
        context.log.info("the legacy release is still writing: run --phase expand again to catch up")
        return {"final_check": "copied what existed when the last round began", "rounds": ROUNDS,
                "moved_in_check": moved_total, "checked_at": last_start.isoformat()}
    context.report.add("legacy_appearing", f"keys kept appearing after {ROUNDS} rounds of the final check: "
                                           "tasks still write them; run again once they finish")
    return {"final_check": "keys keep appearing", "rounds": ROUNDS, "moved_in_check": moved_total}


def _check_round(context, bucket_pass, key_range, mover, present, moment, record, restoring: bool) -> int:
    """Move (or, restoring, copy back) the keys of tasks changed since ``moment``; return how
    many were found. Tasks are read a page at a time and moves stay bounded in flight."""
    reported = _problem_keys(context.report)  # already counted as conflicts, failures...: not twice
    moves = _Moves(record)
    for task_id, workflow_id, run, state in _changed_tasks(context, moment):
        for prefix in _prefixes(bucket_pass, task_id, workflow_id, run, restoring):
            if not key_range.covers_prefix(prefix):
                continue
            for page in iter_pages(context.s3, bucket_pass.bucket, prefix=prefix, key_range=key_range,
                                   retrier=context.retrier):
                states = {task_id: state}
                for obj in page:
                    classified = keys.classify(obj.key, states, logs=bucket_pass.logs, artifacts=bucket_pass.artifacts)
                    if obj.key in reported:
                        continue
                    if restoring and classified.is_new and classified.task_id == task_id:
                        target = keys.legacy_key_of(classified, workflow_id, run)
                        moves.add(mover.submit(obj, target, check_destination=True))
                    elif not restoring and classified.is_legacy:
                        moves.add(mover.submit(obj, classified.new_key, check_destination=present is not None))
    moves.settle()
    return moves.new_work


class _Moves:
    """Moves submitted by a check, recorded in order; past ``limit`` waiting, adding one waits
    for the oldest (memory stays bounded, as in the main pass)."""

    def __init__(self, record: Callable, limit: int = MAX_IN_FLIGHT):
        self._record, self._limit = record, limit
        self._waiting: deque = deque()
        self.new_work = 0  # moves that found something to do (not a key already in place)

    def add(self, future) -> None:
        self._waiting.append(future)
        self.settle(down_to=self._limit)

    def settle(self, down_to: int = 0) -> None:
        while len(self._waiting) > down_to:
            result = self._waiting.popleft().result()
            self._record(result)
            self.new_work += result.outcome in NEW_WORK


def _changed_tasks(context, moment) -> Iterator[tuple]:
    """(task id, workflow id, run, state) of the tasks changed since ``moment``, by id."""
    after = NO_TASK
    while True:
        rows = context.with_db("the final check's changed tasks", lambda db: db.execute(
            CHANGED_TASKS_SQL, {"unfinished": list(UNFINISHED_STATES), "since": moment, "after": after,
                                "limit": TASKS_PER_READ}).fetchall())
        for row in rows:
            yield row[1:]
        if len(rows) < TASKS_PER_READ:
            return
        after = rows[-1][0]


def _prefixes(bucket_pass, task_id: str, workflow_id: str, run: int, restoring: bool) -> list[str]:
    """Where a task's keys are: legacy ones to move, or (restoring) new ones to copy back."""
    prefixes = []
    if bucket_pass.artifacts:
        prefixes.append(keys.artifact_prefix(task_id) if restoring else keys.legacy_artifact_key(workflow_id, task_id, ""))
    if bucket_pass.logs:
        prefixes.append(keys.log_key(task_id) if restoring else keys.legacy_log_key(workflow_id, run, task_id))
    return prefixes


def _problem_keys(report) -> set[str]:
    return {item["key"] for name in ("conflicts", "failed", "archived")
            for item in report.items.get(name, []) if isinstance(item, dict)}


def _relist(context, bucket_pass, key_range, mover, record) -> dict:
    """Without a database: list the range again; legacy keys still there are moved now."""
    found = 0
    moves = _Moves(record)
    reported = _problem_keys(context.report)
    for page in iter_pages(context.s3, bucket_pass.bucket, key_range=key_range, retrier=context.retrier):
        for obj in page:
            classified = keys.classify(obj.key, None, logs=bucket_pass.logs, artifacts=bucket_pass.artifacts)
            if classified.is_legacy and obj.key not in reported:
                moves.add(mover.submit(obj, classified.new_key, check_destination=True))
                found += 1
    moves.settle()
    return {"final_check": "relisted" if found == 0 else f"relisted; {found} legacy key(s) moved", "rounds": 1}
