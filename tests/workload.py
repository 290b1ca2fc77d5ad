"""Two Arkindex releases at work on one PostgreSQL and one S3: the legacy one (workflows) and
the new one (processes own their tasks), for the zero-downtime runbook's test and benchmark.

Each :class:`Worker` plays pods of one release: it starts processes the way its release does
(SQL on the columns its models know), writes artifacts and logs at its release's keys, and
reads random tasks, their rows and their objects, the way its release computes them. Every
outcome is counted in a :class:`Ledger`, per release and per step of the runbook, by what was
read:

  pre_existing    rows / objects that existed before the step began
  own             what the same release wrote
  other           what the other release wrote during the window (both releases running)

Failed writes and failed reads of rows are failures wherever they happen; a failed read of an
object the *other* release wrote during the window is not (that is what the catch-up and the
rollback fix), it is counted as ``other_objects_missing``.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Optional

import psycopg

from ponoskit import keys

LEGACY, NEW = "legacy", "new"


@dataclass
class TaskRecord:
    id: str
    process_id: str
    release: str
    step: int  # the step index it was written in
    run: int
    workflow_id: Optional[str] = None  # known to the legacy release only
    artifacts: list[str] = field(default_factory=list)
    log: bool = False
    objects_written: bool = False


class Ledger:
    def __init__(self):
        self._lock = threading.Lock()
        self.tasks: list[TaskRecord] = []
        self.counts: Counter = Counter()  # (step name, release, metric) -> n
        self.step_index = 0
        self.step_name = "start"
        self.window_start: Optional[int] = None  # the step both releases began to run
        self.samples: list[str] = []

    def begin(self, name: str) -> None:
        with self._lock:
            self.step_index += 1
            self.step_name = name

    def count(self, release: str, metric: str, n: int = 1, sample: str = "") -> None:
        with self._lock:
            self.counts[(self.step_name, release, metric)] += n
            if sample and len(self.samples) < 50 and ("fail" in metric or "missing" in metric):
                self.samples.append(f"{self.step_name} {release} {metric}: {sample}")

    def add(self, record: TaskRecord) -> None:
        with self._lock:
            self.tasks.append(record)

    def pick(self, rng: random.Random, release: str) -> Optional[tuple[TaskRecord, str]]:
        """A random task to read, and which category the read falls in."""
        with self._lock:
            candidates = [t for t in self.tasks if t.objects_written]
            step, window = self.step_index, self.window_start
        if not candidates:
            return None
        task = rng.choice(candidates)
        if task.release != release and window is not None and task.step >= window:
            return task, "other"
        if task.step < step:
            return task, "pre_existing"
        return task, "own" if task.release == release else "pre_existing"

    def table(self, steps: list[str]) -> list[str]:
        metrics = sorted({m for _, _, m in self.counts})
        lines = ["| step | release | " + " | ".join(metrics) + " |", "|---|---|" + "---:|" * len(metrics)]
        for step in steps:
            for release in (LEGACY, NEW):
                row = [self.counts[(step, release, m)] for m in metrics]
                if any(row):
                    lines.append(f"| {step} | {release} | " + " | ".join(str(v) for v in row) + " |")
        return lines

    def total(self, metric: str, *, steps=None, release=None) -> int:
        with self._lock:  # the workers count meanwhile
            counted = list(self.counts.items())
        return sum(n for (s, r, m), n in counted
                   if m == metric and (steps is None or s in steps) and (release is None or r == release))

    def each_read_the_other(self) -> bool:
        """Both releases have read a row the other one wrote during the window."""
        return bool(self.total("other_rows_read", release=NEW) and self.total("other_rows_read", release=LEGACY))


def register_seeded(ledger: Ledger, dsn: str, s3, logs_bucket: str) -> None:
    """The seeded tasks and their objects, as the legacy release wrote them before anything."""
    from ponoskit.s3.listing import iter_objects
    logs = {obj.key for obj in iter_objects(s3, logs_bucket)}
    with psycopg.connect(dsn) as conn:
        artifacts: dict[str, list[str]] = {}
        for task, path in conn.execute("SELECT task_id::text, path FROM ponos_artifact"):
            artifacts.setdefault(task, []).append(path)
        for task, workflow, run in conn.execute("SELECT id::text, workflow_id::text, run FROM ponos_task"):
            if keys.legacy_log_key(workflow, run, task) in logs:  # the seed gives most tasks a log
                ledger.add(TaskRecord(task, "", LEGACY, 0, run, workflow, artifacts.get(task, []), True, True))


# The README's runbook, forward and back, as one list each. ``book`` runs the steps (the test
# in-process, the benchmark a command each): start(release, seed), stop(release),
# step(name, command, window=, until=), and fold(*args) / rename(*args) to build a command.

def forward_runbook(book, checkpoint: str, seeds: tuple[int, int] = (1, 2)) -> None:
    book.start(LEGACY, seeds[0])
    book.step("legacy only")
    book.step("expand the database", book.fold("--phase", "expand"))
    book.step("copy the buckets", book.rename("--phase", "expand", "--checkpoint", checkpoint), window=True)
    book.start(NEW, seeds[1])
    book.step("both releases", until=book.ledger.each_read_the_other)
    book.stop(LEGACY)
    book.step("legacy stops")
    book.step("the last catch-up", book.rename("--phase", "expand", "--checkpoint", checkpoint))
    book.step("contract the buckets", book.rename("--phase", "contract"))
    book.step("contract the database", book.fold("--phase", "contract"))


def rollback_runbook(book, checkpoint: Optional[str] = None, seeds: tuple[int, int] = (1, 2)) -> None:
    book.start(LEGACY, seeds[0])
    book.step("legacy only")
    book.step("expand the database", book.fold("--phase", "expand"))
    book.step("copy the buckets", book.rename("--phase", "expand", *(("--checkpoint", checkpoint) if checkpoint else ())),
              window=True)
    book.start(NEW, seeds[1])
    book.step("both releases", until=book.ledger.each_read_the_other)
    book.stop(NEW)
    book.step("new release stops")
    book.step("roll the buckets back", book.rename("--rollback"))
    book.step("roll the database back", book.fold("--rollback"))

    def legacy_reads_the_new_releases_objects() -> bool:
        """The legacy release, rolled back to, has read an object the new release wrote."""
        return bool(book.ledger.total("other_objects_read", release=LEGACY,
                                      steps=["roll the database back", "legacy only again"]))

    # Reads pick tasks at random: on a loaded machine a few seconds may pick none of the new
    # release's few tasks, so the step lasts until one is read (or fails, saying so).
    book.step("legacy only again", until=legacy_reads_the_new_releases_objects)


class Worker(threading.Thread):
    def __init__(self, release: str, dsn: str, s3, buckets: dict[str, str], ledger: Ledger, *, seed: int,
                 farm_id: str, pause: float = 0.01):
        super().__init__(name=f"{release}-release", daemon=True)
        self.release, self.dsn, self.s3, self.buckets = release, dsn, s3, buckets
        self.ledger, self.farm_id, self.pause = ledger, farm_id, pause
        self.rng = random.Random(seed)
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                try:
                    self.start_process(conn)
                except psycopg.Error as exc:
                    self.ledger.count(self.release, "failed_writes", sample=f"{type(exc).__name__}: {exc}")
                    if conn.broken:
                        return
                for _ in range(3):
                    self.read_one(conn)
                time.sleep(self.pause)

    # --- writing, each release its way -------------------------------------------------
    def start_process(self, conn) -> None:
        now = datetime.now(timezone.utc)
        process, workflow = str(uuid.uuid4()), str(uuid.uuid4())
        tasks = [TaskRecord(str(uuid.uuid4()), process, self.release, self.ledger.step_index,
                            run=self.rng.choice([0, 0, 1]), workflow_id=workflow if self.release == LEGACY else None)
                 for _ in range(self.rng.randint(1, 3))]
        with conn.transaction():
            if self.release == LEGACY:
                conn.execute("INSERT INTO process_process (id, mode, creator_id, created, updated) "
                             "VALUES (%s, 'workers', 1, %s, %s)", (process, now, now))
                conn.execute("INSERT INTO ponos_workflow (id, farm_id, created, updated) VALUES (%s, %s, %s, %s)",
                             (workflow, self.farm_id, now, now))
                for n, task in enumerate(tasks):
                    self._insert_task(conn, task, n, "workflow_id", workflow, now)
                # Django's save(): every column the legacy model knows, workflow_id among them.
                conn.execute("UPDATE process_process SET name = %s, mode = 'workers', creator_id = 1, "
                             "workflow_id = %s, activity_state = 'ready', updated = %s WHERE id = %s",
                             (f"legacy {process[:8]}", workflow, now, process))
            else:
                conn.execute("INSERT INTO process_process (id, mode, creator_id, created, updated, farm_id, started) "
                             "VALUES (%s, 'workers', 1, %s, %s, %s, %s)", (process, now, now, self.farm_id, now))
                for n, task in enumerate(tasks):
                    self._insert_task(conn, task, n, "process_id", process, now)
            for task in tasks:
                for path in self.rng.sample(["out/page 1.json", "Ünï/data.txt", "a+b/c%20d.txt", "model.bin"],
                                            k=self.rng.randint(0, 2)):
                    conn.execute("INSERT INTO ponos_artifact (id, task_id, path, size, created, updated) "
                                 "VALUES (%s, %s, %s, %s, %s, %s)", (uuid.uuid4(), task.id, path, len(path), now, now))
                    task.artifacts.append(path)
        for task in tasks:
            self.ledger.add(task)
        for task in tasks:
            self._write_objects(task)
        with conn.transaction():
            for task in tasks:
                conn.execute("UPDATE ponos_task SET state = 'completed', updated = now() WHERE id = %s", (task.id,))
            if self.release == LEGACY:
                conn.execute("UPDATE ponos_workflow SET finished = now(), updated = now() WHERE id = %s", (workflow,))
            else:
                conn.execute("UPDATE process_process SET finished = now(), updated = now() WHERE id = %s", (process,))

    def _insert_task(self, conn, task: TaskRecord, n: int, column: str, owner: str, now: datetime) -> None:
        conn.execute(f"INSERT INTO ponos_task (id, run, depth, slug, image, {column}, created, updated, expiry, token) "
                     "VALUES (%s, %s, 0, %s, 'img', %s, %s, %s, %s, %s)",
                     (task.id, task.run, f"task-{n}", owner, now, now, now + timedelta(days=30), uuid.uuid4().hex))

    def _keys_of(self, task: TaskRecord, workflow: Optional[str], run: int) -> list[tuple[str, str]]:
        if self.release == LEGACY:
            found = [(self.buckets["artifacts"], keys.legacy_artifact_key(workflow, task.id, p)) for p in task.artifacts]
            return found + [(self.buckets["logs"], keys.legacy_log_key(workflow, run, task.id))]
        found = [(self.buckets["artifacts"], keys.artifact_key(task.id, p)) for p in task.artifacts]
        return found + [(self.buckets["logs"], keys.log_key(task.id))]

    def _write_objects(self, task: TaskRecord) -> None:
        for bucket, key in self._keys_of(task, task.workflow_id, task.run):
            try:
                self.s3.put_object(Bucket=bucket, Key=key, Body=f"{task.id} {key.rsplit('/', 1)[-1]}".encode())
            except Exception as exc:  # noqa: BLE001 - counted, never raised
                self.ledger.count(self.release, "failed_writes", sample=f"PUT {key}: {exc}")
        task.log = True
        task.objects_written = True

    # --- reading, each release its way -----------------------------------------------
    def read_one(self, conn) -> None:
        picked = self.ledger.pick(self.rng, self.release)
        if picked is None:
            return
        task, category = picked
        try:
            if self.release == LEGACY:
                row = conn.execute("SELECT workflow_id::text, run FROM ponos_task WHERE id = %s", (task.id,)).fetchone()
            else:
                row = conn.execute("SELECT process_id::text, run FROM ponos_task WHERE id = %s", (task.id,)).fetchone()
        except psycopg.Error as exc:
            self.ledger.count(self.release, f"{category}_rows_failed", sample=f"{task.id}: {exc}")
            return
        if row is None or row[0] is None:
            self.ledger.count(self.release, f"{category}_rows_failed", sample=f"{task.id}: no row or no owner")
            return
        self.ledger.count(self.release, f"{category}_rows_read")
        for bucket, key in self._keys_of(task, row[0], row[1]):
            try:
                self.s3.head_object(Bucket=bucket, Key=key)
                self.ledger.count(self.release, f"{category}_objects_read")
            except Exception as exc:  # noqa: BLE001
                metric = "other_objects_missing" if category == "other" else f"{category}_objects_failed"
                self.ledger.count(self.release, metric, sample=f"{key}: {type(exc).__name__}")
