"""Development only: the test, demo and benchmark fixtures, never imported by a job.

- :mod:`.local`       start pgserver, SeaweedFS or a moto server for the demo, the tests, the benchmarks;
- :mod:`.seed`        realistic legacy data (the production tables of ``legacy_schema.sql``) and its objects;
- :mod:`.naive_fold`  the fold as a one-transaction framework migration: a benchmark peer and a test shortcut.
"""
