"""Before a rename changes anything, and where it starts.

:func:`preflight` checks everything that could make the run fail (the database, the buckets
and what their server does, the checkpoint, the shared claims table); :func:`start_run`
decides whether this run resumes a checkpoint, starts a new pass, or only catches up.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

import psycopg

from ponoskit import keys
from ponoskit.checkpoint import Checkpoint, database_identity
from ponoskit.errors import ConfigError
from ponoskit.schema import column_exists, table_exists

from .claims import CLAIMS_TABLE, SharedClaims, create_table
from .rename_options import EXPAND, OLD_PHASE_WORDS, ROLLBACK, RenameOptions


def preflight(context, passes: list[keys.BucketPass], options: RenameOptions):
    """Check everything that could make the run fail before anything changes."""
    identity = {"job": "s3-rename", "buckets": [p.bucket for p in passes], "shard": str(options.shard),
                "use_db": context.use_db, "endpoint": context.endpoint, "phase": options.phase}
    if context.use_db:
        if not table_exists(context.db, "ponos_task"):
            raise ConfigError("the database has no ponos_task table: is --dsn the Arkindex database?")
        identity["database"] = database_identity(context.db)
    if options.phase == ROLLBACK:
        if not context.use_db:
            raise ConfigError("--rollback needs the database: it finds each task's legacy keys through its workflow")
        if not column_exists(context.db, "ponos_task", "workflow_id"):
            raise ConfigError("--rollback: the fold's contract has run, tasks have no workflow any more, so no "
                              "legacy key can be computed; nothing changed (see the README's Rollback)")
    checkpoint = Checkpoint(options.checkpoint, identity, validate=checkpoint_problem,
                            renamed={"phase": OLD_PHASE_WORDS})  # a copy phase's checkpoint is an expand's
    state = checkpoint.load()
    capabilities = {p.bucket: context.bucket(p.bucket, probe=True) for p in passes}
    context.report.info["capabilities"] = {name: caps.to_dict() for name, caps in capabilities.items()}
    for caps in capabilities.values():
        for note in caps.notes:
            context.log.warning("s3://%s: %s", caps.bucket, note)
    if any(needs_shared_claims(context, options, caps) for caps in capabilities.values()):
        check_shared_claims(context)
    return checkpoint, state, capabilities


def check_shared_claims(context) -> None:
    """Shards on a server that ignores If-None-Match need the database's claims table."""
    what = ("--shard on a server that copies over existing keys (it ignores If-None-Match): the shards "
            "agree on who moves what through the table " + CLAIMS_TABLE)
    if not context.use_db:
        raise ConfigError(f"{what}, so they need the database: drop --no-db or run one process")
    try:
        create_table(context.db)
    except psycopg.Error as exc:
        raise ConfigError(f"{what}, which this role cannot create ({type(exc).__name__}): grant CREATE on the "
                          "schema, or run one process without --shard; nothing changed") from None


def checkpoint_problem(state: dict) -> Optional[str]:
    """None when ``state`` is what this job saves: bucket -> {after, complete, started_at}."""
    for bucket, values in state.items():
        if not isinstance(values, dict):
            return f"the entry of bucket {bucket!r} is not an object"
        if not isinstance(values.get("after"), (str, type(None))):
            return f"'after' of bucket {bucket!r} is not a key"
        if not isinstance(values.get("complete", False), bool):
            return f"'complete' of bucket {bucket!r} is not true or false"
        for name in ("started_at", "checked_at"):
            moment = values.get(name)
            if moment is not None:
                try:
                    datetime.fromisoformat(moment)
                except (TypeError, ValueError):
                    return f"'{name}' of bucket {bucket!r} is not a time"
    return None


def start_run(context, state: dict, passes: list[keys.BucketPass], options: RenameOptions) -> bool:
    """Resume the run the checkpoint holds, or start a new one; True for an expand's catch-up.

    A run that finished leaves nothing to skip (legacy keys may have been written since): the
    next one lists every key again, except after a finished expand, when the next expand
    run only catches up: the database says which tasks changed since its check, and only
    their legacy keys are looked up. An interrupted run resumes each bucket where it stopped;
    a bucket it had finished gets its final check again, over what changed since it began.
    """
    finished = bool(state) and all(state.get(p.bucket, {}).get("complete") for p in passes)
    if finished and options.phase == EXPAND and all(state[p.bucket].get("checked_at") for p in passes):
        context.report.info["catch_up"] = True
        return True
    if finished:
        context.log.info("the last run finished; this run checks every key again")
        state.clear()
    for bucket_pass in passes:
        current = state.get(bucket_pass.bucket)
        if current and current.get("started_at"):
            context.log.info("s3://%s: resuming after %r (pass started %s)", bucket_pass.bucket, current.get("after"),
                             current["started_at"])
            context.report.info.setdefault("resumed", {})[bucket_pass.bucket] = current.get("after")
        else:
            state[bucket_pass.bucket] = {"after": None, "complete": False, "started_at": _now(context)}
    return False


def _now(context) -> str:
    """The pass's start, on the database's clock when there is one (what tasks' times use)."""
    if context.use_db:
        return context.with_db("the database's clock", lambda db: db.execute("SELECT now()").fetchone()[0]).isoformat()
    return datetime.now(timezone.utc).isoformat()




def needs_shared_claims(context, options: RenameOptions, caps) -> bool:
    """Shards of one run on a server that copies over existing keys agree through the database."""
    return not caps.conditional_copy and options.shard.count > 1 and not context.dry_run and options.phase != ROLLBACK


def shared_claims(context, options: RenameOptions, caps) -> Optional[SharedClaims]:
    return SharedClaims(context.connect, caps.bucket) if needs_shared_claims(context, options, caps) else None
