"""The pieces of the workflow -> process fold; :mod:`migrate.db_fold_workflow` runs them in order.

- :mod:`.catalog`   what exists already (columns, constraints, indexes, triggers): every phase
                    asks before it acts, which is what makes a re-run after SIGKILL safe;
- :mod:`.ddl`       statements under a short ``lock_timeout``, retried with backoff;
- :mod:`.preflight` refuse before any change: schema shape, privileges, orphan workflows/tasks;
- :mod:`.orphans`   the explicit deletion of orphan tasks, recorded durably for the S3 side;
- :mod:`.triggers`  keep new columns in step with what the application writes during the fold;
- :mod:`.backfill`  copy the data in batches by key range, one commit per batch;
- :mod:`.phases`    the phases themselves: plan (for --dry-run), done-check, action;
- :mod:`.verify`    compare the new columns with the old ones before anything is dropped.
"""
