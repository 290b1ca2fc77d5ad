"""The pieces of the workflow -> process fold; :mod:`migrate.db_fold_workflow` runs them in order.

- :mod:`.preflight`     refuse before any change: schema shape, privileges, orphan workflows/tasks;
- :mod:`.phases`        the phases in order; each is a :class:`.phase.Phase` (plan, done-check, run):
  :mod:`.data_phases`   orphans, new columns, sync triggers, backfills, the kept mapping, verify;
  :mod:`.schema_phases` indexes, constraints, the drop, NOT NULL;
- :mod:`.catalog`       what exists already: every phase asks before it acts, which is what
                        makes a re-run after SIGKILL safe;
- :mod:`.ddl`           statements under a short ``lock_timeout``, retried with backoff;
- :mod:`.triggers`      keep the new columns in step with what the application writes meanwhile;
- :mod:`.backfill`      copy the data in batches by key range, one commit per batch;
- :mod:`.orphans`       the explicit deletion of orphan tasks, recorded durably for the S3 side;
- :mod:`.verify`        compare the new columns with the old ones before anything is dropped.
"""
