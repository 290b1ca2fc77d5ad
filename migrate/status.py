"""Where a migration that takes days stands: read only, in seconds.

The facts come from three places, each asked once:
  - the catalog: the fold's own step list (``migrate.fold.runbook``) says which steps of the
    expand are done, the schema says whether the contract ran;
  - the run ledger (``ponoskit.ledger``): the last pass of each job and phase, per bucket,
    when it began and ended, how it ended, its counts and checkpoint;
  - the buckets: a sample of legacy prefixes (``migrate.legacy_estimate``), or every key
    with ``exact``.

The phases, in the zero-downtime runbook's order (``--expect`` gates on them):

  legacy              nothing folded (``expanding`` while the expand is under way;
                      ``rolled-back`` once a rollback took everything away again)
  expanded            the expand is whole: sync triggers live, both releases can run
  copied              every bucket's ``s3-rename --phase expand`` passed (exit 0)
  caught-up           and a later catch-up passed, no legacy task unfinished or written since
  contracted-buckets  every bucket's ``s3-rename --phase contract`` passed
  contracted          the fold's contract ran: the legacy shape is gone
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

from ponoskit import keys, ledger, schema
from ponoskit.errors import ConfigError
from ponoskit.tasks import UNFINISHED_STATES

from . import legacy_estimate
from .rename_options import ALL, CONTRACT, EXPAND, canonical_phase
from .fold import catalog, django_migrations, runbook
from .fold.data_steps import Backfill, Verify
from .fold.job import KEPT_WORKFLOW_TABLE, FoldOptions
from .fold.orphans import OUTBOX as FOLD_DELETED_TABLE
from .fold.preflight import Findings
from .legacy_estimate import Estimate

LEGACY, EXPANDING, EXPANDED, CONTRACTED, ROLLED_BACK = "legacy", "expanding", "expanded", "contracted", "rolled-back"
COPIED, CAUGHT_UP, CONTRACTED_BUCKETS = "copied", "caught-up", "contracted-buckets"
# --expect's order; a database still expanding or rolled back counts as legacy.
PHASES = (LEGACY, EXPANDED, COPIED, CAUGHT_UP, CONTRACTED_BUCKETS, CONTRACTED)
RANK = {**{phase: rank for rank, phase in enumerate(PHASES)}, EXPANDING: 0, ROLLED_BACK: 0}
PROBLEM_COUNTS = ("conflicts", "failed", "undecided", "archived", "legacy_appearing")
CLEANUP_OUTBOX = "ponos_cleanup_outbox"


@dataclass
class StatusOptions:
    artifacts_bucket: str
    logs_bucket: str
    sample: int = 200
    exact: bool = False
    seed: Optional[float] = None  # a repeatable sample (tests)


@dataclass
class DatabaseFacts:
    state: str  # legacy, expanding, expanded, contracted, rolled-back
    steps_done: list[str] = field(default_factory=list)
    next_step: Optional[str] = None
    invalid_indexes: list[str] = field(default_factory=list)
    django_migration: str = "unknown"
    mapping_table: str = "not kept"
    orphans_refused: Optional[int] = None  # workflows no process points at (the fold refuses them)
    orphans_recorded: Optional[int] = None  # tasks the fold deleted and recorded for the cleanup (None: no table)
    replica_lag_seconds: Optional[float] = None  # None: the role cannot read it
    legacy_unfinished: int = 0  # tasks of the legacy release still running: its pods still write


@dataclass
class Pass:
    """The last rename pass of one phase over one bucket, as the ledger has it."""
    phase: str
    started: str
    ended: str
    status: str
    exit_code: int
    counts: dict[str, int]
    left: int  # conflicts, failures and the like: what keeps the pass from being done
    buckets: list[str] = field(default_factory=list)  # the run's buckets: its counts are theirs together
    shards: int = 1  # --shard I/N: the N shards' last runs together (each has its own checkpoint)
    checkpoint: Optional[str] = None
    checked_at: Optional[str] = None  # its final check: what changed after it is the catch-up's
    catch_up: bool = False

    @property
    def done(self) -> bool:
        return self.exit_code == 0


@dataclass
class BucketFacts:
    bucket: str
    roles: list[str]
    passes: dict[str, Pass] = field(default_factory=dict)
    latest: Optional[Pass] = None  # the last pass of any phase
    changed_since_check: Optional[int] = None  # legacy tasks unfinished or written since the last copy's check
    legacy: Optional[Estimate] = None

    def since_rollback(self) -> list[Pass]:
        """The passes after the last rollback (all of them without one)."""
        back = self.passes.get("rollback")
        return [found for found in self.passes.values() if back is None or found.ended > back.ended]

    @property
    def copied(self) -> bool:
        return any(found.done for found in self.since_rollback() if found.phase in (EXPAND, CONTRACT, ALL))

    @property
    def catch_up_due(self) -> bool:
        return bool(self.changed_since_check)

    @property
    def caught_up(self) -> bool:
        moved = any(found.done for found in self.since_rollback() if found.phase in (CONTRACT, ALL))
        copy = self.passes.get(EXPAND)
        return self.copied and (moved or (copy.done and copy.catch_up and not self.catch_up_due))

    @property
    def contracted(self) -> bool:
        latest = self.latest
        return latest is not None and latest.phase in (CONTRACT, ALL) and latest.done

    @property
    def rolled_back(self) -> bool:
        return self.latest is not None and self.latest.phase == "rollback" and self.latest.done


@dataclass
class CleanupFacts:
    runs: list[dict[str, Any]] = field(default_factory=list)
    outbox_backlog: Optional[int] = None  # None: the cleanup never ran (no outbox)
    set_aside: Optional[int] = None


@dataclass
class MigrationStatus:
    phase: str
    database: DatabaseFacts
    buckets: list[BucketFacts]
    cleanup: CleanupFacts
    ledger: str  # how many runs it holds, or that it is absent
    intent: str = "forward"  # rollback once a rollback ran last
    verified: bool = False  # a verify passed after the last rename pass
    next: Any = None  # migrate.next_step.NextStep, filled by the caller

    def reached(self, phase: str) -> bool:
        """At or past ``phase`` (one of PHASES) in the forward runbook."""
        return RANK[self.phase] >= RANK[phase]


def read_status(context, options: StatusOptions) -> MigrationStatus:
    """Every fact, read only. ConfigError for what is not a Ponos database or bucket."""
    conn = context.db
    # Read only by construction: a statement that would write fails instead (the fold's own
    # step checks are asked here, and they must stay questions).
    conn.execute("SET default_transaction_read_only = on")
    passes = keys.bucket_passes(options.artifacts_bucket, options.logs_bucket)
    state = schema.schema_state(conn)
    if state == schema.UNKNOWN:
        raise ConfigError("the database holds neither the legacy nor the folded Ponos tables "
                          "(ponos_task, process_process, ponos_workflow): is --dsn the Arkindex database?")
    for bucket_pass in passes:
        context.bucket(bucket_pass.bucket)  # exists, reachable, allowed: else exit 2 (or 75) now
    runs = recent_runs(conn)
    database = database_facts(conn, state, runs)
    buckets = [bucket_facts(conn, p, runs, database) for p in passes]
    estimates = legacy_estimates(context, passes, options)
    for facts in buckets:
        facts.legacy = estimates.get(facts.bucket)
    status = MigrationStatus(overall_phase(database, buckets), database, buckets, cleanup_facts(conn, runs),
                             ledger_summary(conn, runs))
    status.intent = intent(runs)
    status.verified = verified_since(runs, buckets)
    return status


# How far back each job is read: a fortnight of an hourly cleanup must not push the copy out.
RUNS_READ = {"db-fold-workflow": 50, "s3-rename": 200, "verify": 20, "cleanup": 3, "orphans": 3}


def recent_runs(conn) -> list[ledger.Run]:
    """The latest runs of each job, newest first."""
    runs = [run for job, limit in RUNS_READ.items() for run in ledger.last_runs(conn, job, limit=limit)]
    return sorted(runs, key=lambda run: run.ended, reverse=True)


def legacy_estimates(context, passes, options: StatusOptions) -> dict[str, Estimate]:
    if options.exact:
        return {p.bucket: legacy_estimate.exact_count(context, p) for p in passes}
    return legacy_estimate.estimate_all(context, passes, options.sample, options.seed)


# --- the database ----------------------------------------------------------------------

@dataclass
class _ReadOnlyJob:
    """What a fold step's ``pending`` asks (the connection, the options, the findings): the
    same questions the fold asks before it acts, with nothing that could act."""
    conn: Any
    options: FoldOptions
    findings: Findings


def database_facts(conn, state: str, runs: list[ledger.Run]) -> DatabaseFacts:
    facts = DatabaseFacts(state=_database_phase(state, runs))
    if state == schema.PARTIAL:
        facts.steps_done, facts.next_step = expand_steps(conn)
        facts.state = EXPANDED if facts.next_step is None else EXPANDING
    elif state == schema.FOLDED:
        facts.steps_done = [step.name for step in runbook.expand() if step.name not in ("delete_orphans", "verify")]
    facts.invalid_indexes = invalid_indexes(conn)
    facts.django_migration = django_row(conn, runs)
    facts.mapping_table = mapping_table(conn)
    if state != schema.FOLDED:
        facts.orphans_refused = orphan_workflows(conn)
        facts.legacy_unfinished = legacy_unfinished(conn)
    facts.orphans_recorded = _count_if_table(conn, FOLD_DELETED_TABLE)
    facts.replica_lag_seconds = replica_lag(conn)
    return facts


def _database_phase(state: str, runs: list[ledger.Run]) -> str:
    if state == schema.FOLDED:
        return CONTRACTED
    folds = [run for run in runs if run.job == "db-fold-workflow"]
    if state == schema.LEGACY and folds and folds[0].phase == "rollback" and folds[0].exit_code == 0:
        return ROLLED_BACK
    return LEGACY if state == schema.LEGACY else EXPANDING


def expand_steps(conn) -> tuple[list[str], Optional[str]]:
    """The expand's steps done, in order, and the first one still to do (None: all done).

    A backfill is only asked (it reads the table) while no later step is done: the fold runs
    its steps in order, so a later one done means the backfill finished; the sync triggers
    keep it so since."""
    keep = catalog.column(conn, "ponos_workflow", "process_id") is not None
    job = _ReadOnlyJob(conn, FoldOptions(keep_workflow_table=keep), Findings(schema.PARTIAL))
    steps = [step for step in runbook.expand() if step.applies(job) and not isinstance(step, Verify)]
    done = [False] * len(steps)
    for index in reversed(range(len(steps))):
        later_done = any(done[index + 1:])
        if isinstance(steps[index], Backfill) and later_done:
            done[index] = True
        else:
            done[index] = not steps[index].pending(job)
    pending = [step.name for step, finished in zip(steps, done) if not finished]
    return [step.name for step, finished in zip(steps, done) if finished], (pending[0] if pending else None)


def invalid_indexes(conn) -> list[str]:
    """Indexes a killed CREATE INDEX CONCURRENTLY left INVALID on the Ponos tables."""
    return [row[0] for row in conn.execute(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid IN (to_regclass('ponos_task'), to_regclass('process_process')) "
        "AND NOT (i.indisvalid AND i.indisready) ORDER BY 1").fetchall()]


def django_row(conn, runs: list[ledger.Run]) -> str:
    """Whether the contract's Django migration is recorded (the one it was given, if any)."""
    contracts = [run for run in runs if run.job == "db-fold-workflow" and run.phase in ("contract", "all")]
    given = next((run.params.get("record_django_migration") for run in contracts
                  if run.params.get("record_django_migration")), None)
    if given:
        app, name = given
        return f"{app}.{name} {'recorded' if django_migrations.recorded(conn, (app, name)) else 'not recorded'}"
    if not schema.table_exists(conn, "django_migrations"):
        return "no django_migrations table"
    row = conn.execute("SELECT name FROM django_migrations WHERE app = 'ponos' ORDER BY applied DESC, id DESC "
                       "LIMIT 1").fetchone()
    return f"latest ponos migration recorded: {row[0]}" if row else "no ponos migration recorded"


def mapping_table(conn) -> str:
    if schema.table_exists(conn, KEPT_WORKFLOW_TABLE):
        return f"kept ({KEPT_WORKFLOW_TABLE})"
    if catalog.column(conn, "ponos_workflow", "process_id") is not None:
        return f"kept (ponos_workflow.process_id; renamed {KEPT_WORKFLOW_TABLE} by the contract)"
    return "not kept"


def orphan_workflows(conn) -> int:
    """Workflows no process points at: the fold refuses them without --orphan-workflows delete."""
    if not schema.table_exists(conn, "ponos_workflow"):
        return 0
    return conn.execute("SELECT count(*) FROM ponos_workflow w WHERE NOT EXISTS "
                        "(SELECT 1 FROM process_process p WHERE p.workflow_id = w.id)").fetchone()[0]


def legacy_task_filter(conn) -> str:
    """Tasks the legacy release wrote: in the expanded schema a new-release task's workflow
    is the one its trigger made, with the process's own id; a legacy workflow has its own.
    (Half rolled back, process_id may be gone already: then every task is the legacy's.)"""
    expanded = schema.column_exists(conn, "ponos_task", "process_id")
    return "workflow_id IS NOT NULL" + (" AND workflow_id IS DISTINCT FROM process_id" if expanded else "")


def legacy_unfinished(conn) -> int:
    return conn.execute(f"SELECT count(*) FROM ponos_task WHERE {legacy_task_filter(conn)} "
                        "AND state = ANY(%s)", (list(UNFINISHED_STATES),)).fetchone()[0]


def replica_lag(conn) -> Optional[float]:
    """Seconds the most lagging streaming replica replays behind; None where the role cannot
    read it (pg_monitor), 0.0 without replicas."""
    readable = conn.execute("SELECT pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER') OR "
                            "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)").fetchone()[0]
    if not readable:
        return None
    return conn.execute("SELECT coalesce(max(extract(epoch FROM replay_lag)), 0)::float8 "
                        "FROM pg_stat_replication").fetchone()[0]


def _count_if_table(conn, table: str, where: str = "") -> Optional[int]:
    if not schema.table_exists(conn, table):
        return None
    return conn.execute(f"SELECT count(*) FROM {table} {where}").fetchone()[0]


# --- the buckets -----------------------------------------------------------------------

def bucket_facts(conn, bucket_pass: keys.BucketPass, runs: list[ledger.Run], database: DatabaseFacts) -> BucketFacts:
    roles = [role for role, held in (("artifacts", bucket_pass.artifacts), ("logs", bucket_pass.logs)) if held]
    facts = BucketFacts(bucket_pass.bucket, roles)
    # A run of the release before says copy/delete: the same phases as expand/contract.
    renames = [replace(run, phase=canonical_phase(run.phase or ALL)) for run in runs
               if run.job == "s3-rename" and bucket_pass.bucket in run.buckets]
    for phase in dict.fromkeys(run.phase or "all" for run in renames):  # newest first
        facts.passes[phase] = pass_of_phase([run for run in renames if (run.phase or "all") == phase],
                                            bucket_pass.bucket)
    facts.latest = facts.passes[renames[0].phase or "all"] if renames else None
    copy = facts.passes.get(EXPAND)
    if copy is not None and copy.checked_at and database.state in (EXPANDED, EXPANDING):
        facts.changed_since_check = changed_since(conn, copy.checked_at)
    return facts


def _shard_of(run: ledger.Run) -> tuple[int, int]:
    index, _, count = str(run.info.get("shard") or "0/1").partition("/")
    return int(index), int(count or 1)


def pass_of_phase(runs: list[ledger.Run], bucket: str) -> Pass:
    """A phase's last pass (runs newest first): with --shard I/N, the last run of each of the
    N shards together; a shard never recorded leaves the pass unfinished."""
    count = _shard_of(runs[0])[1]
    per_shard: dict[int, ledger.Run] = {}
    for run in runs:
        index, of = _shard_of(run)
        if of == count:
            per_shard.setdefault(index, run)
    passes = [pass_of(run, bucket) for run in per_shard.values()]
    if count == 1:
        return passes[0]
    missing = count - len(per_shard)
    worst = max(passes, key=lambda found: found.exit_code)
    counts: dict[str, int] = {}
    for found in passes:
        for name, n in found.counts.items():
            counts[name] = counts.get(name, 0) + n
    checks = [found.checked_at for found in passes]
    return Pass(phase=passes[0].phase, started=min(found.started for found in passes),
                ended=max(found.ended for found in passes),
                status=f"{missing} of {count} shards not recorded" if missing else worst.status,
                exit_code=1 if missing and not worst.exit_code else worst.exit_code, counts=counts,
                left=sum(found.left for found in passes), buckets=passes[0].buckets, shards=count,
                checked_at=None if missing or None in checks else min(checks),
                catch_up=all(found.catch_up for found in passes))


def pass_of(run: ledger.Run, bucket: str) -> Pass:
    check = next((c for c in run.info.get("checks", []) if c.get("bucket") == bucket), {})
    return Pass(phase=run.phase or "all", started=run.started.isoformat(timespec="seconds"),
                ended=run.ended.isoformat(timespec="seconds"), status=run.status, exit_code=run.exit_code,
                counts={name: n for name, n in run.counts.items() if n}, left=sum(run.counts.get(name, 0)
                                                                                for name in PROBLEM_COUNTS),
                buckets=run.buckets, checkpoint=run.params.get("checkpoint"), checked_at=check.get("checked_at"),
                catch_up=bool(run.info.get("catch_up")))


def changed_since(conn, checked_at: str) -> int:
    """Legacy tasks unfinished, or created or changed since the copy's check: what a catch-up
    would look up (migrate.rename_check), the new release's tasks aside."""
    return conn.execute(f"SELECT count(*) FROM ponos_task WHERE {legacy_task_filter(conn)} "
                        "AND (state = ANY(%(unfinished)s) OR created >= %(since)s OR updated >= %(since)s)",
                        {"since": checked_at, "unfinished": list(UNFINISHED_STATES)}).fetchone()[0]


def overall_phase(database: DatabaseFacts, buckets: list[BucketFacts]) -> str:
    if database.state != EXPANDED:
        return database.state
    for phase, reached in ((CONTRACTED_BUCKETS, "contracted"), (CAUGHT_UP, "caught_up"), (COPIED, "copied")):
        if buckets and all(getattr(facts, reached) for facts in buckets):
            return phase
    return EXPANDED


def intent(runs: list[ledger.Run]) -> str:
    """rollback while the operator is rolling back: the last fold or rename run was a rollback."""
    moves = [run for run in runs if run.job in ("db-fold-workflow", "s3-rename")]
    return "rollback" if moves and moves[0].phase == "rollback" else "forward"


def verified_since(runs: list[ledger.Run], buckets: list[BucketFacts]) -> bool:
    """A verify run passed after the last rename pass over these buckets."""
    last_verify = next((run for run in runs if run.job == "verify"), None)
    if last_verify is None or last_verify.exit_code != 0:
        return False
    bucket_names = {facts.bucket for facts in buckets}
    last_rename = next((run for run in runs if run.job == "s3-rename" and bucket_names & set(run.buckets)), None)
    return last_rename is None or last_verify.ended >= last_rename.ended


# --- the cleanup and the ledger ----------------------------------------------------------

def cleanup_facts(conn, runs: list[ledger.Run]) -> CleanupFacts:
    facts = CleanupFacts(runs=[{"job": run.job, "started": run.started.isoformat(timespec="seconds"),
                                "ended": run.ended.isoformat(timespec="seconds"), "status": run.status,
                                "exit_code": run.exit_code, "counts": {k: v for k, v in run.counts.items() if v}}
                               for run in runs if run.job in ("cleanup", "orphans")][:3])
    if schema.table_exists(conn, CLEANUP_OUTBOX):
        has_set_aside = schema.column_exists(conn, CLEANUP_OUTBOX, "set_aside")
        facts.outbox_backlog = _count_if_table(conn, CLEANUP_OUTBOX, "WHERE set_aside IS NULL" if has_set_aside else "")
        facts.set_aside = _count_if_table(conn, CLEANUP_OUTBOX, "WHERE set_aside IS NOT NULL") if has_set_aside else 0
    return facts


def ledger_summary(conn, runs: list[ledger.Run]) -> str:
    if not ledger.exists(conn):
        return (f"no run ledger ({ledger.TABLE}): no run recorded here yet, or the jobs' role may not create it; "
                "what the buckets went through is unknown")
    return f"{ledger.TABLE}: {len(runs)} run(s) read"
