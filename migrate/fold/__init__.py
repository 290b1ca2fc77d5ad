"""The pieces of the workflow -> process fold; :mod:`migrate.db_fold_workflow` runs them in order.

- :mod:`.preflight`     refuse before any change: schema shape, privileges, orphan workflows/tasks;
- :mod:`.runbook`       the steps in order, and the expand, contract and rollback lists over them;
  each is a :class:`.step.Step` (plan, is-it-done, do it, and undo it):
  :mod:`.data_steps`    orphans, new columns, sync triggers, backfills, the kept mapping, verify;
  :mod:`.schema_steps`  indexes, constraints, the drop, NOT NULL;
- :mod:`.throttle`      between backfill batches: replicas' lag, an operator's pause;
- :mod:`.django_migrations`  the new release's migration, recorded in the contract;
- :mod:`.catalog`       what exists already: every phase asks before it acts, which is what
                        makes a re-run after SIGKILL safe;
- :mod:`.ddl`           statements under a short ``lock_timeout``, retried with backoff;
- :mod:`.triggers`      keep both shapes in step while both releases write;
- :mod:`.backfill`      copy the data in batches by key range, one commit per batch;
- :mod:`.orphans`       the explicit deletion of orphan tasks, recorded durably for the S3 side;
- :mod:`.consistency`   compare the new columns with the old ones before anything is dropped.
"""
