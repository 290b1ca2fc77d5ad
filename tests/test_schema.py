import psycopg

from ponoskit import schema
from ponos_dev import seed
from ponos_dev.naive_fold import naive_fold


def test_naive_fold_turns_legacy_into_folded(legacy_dsn):
    with psycopg.connect(legacy_dsn, autocommit=True) as conn:
        seed.seed_database(conn, seed.SeedSpec(processes=5, seed=3))
        assert schema.schema_state(conn) == schema.LEGACY
        expected = dict(conn.execute(
            "SELECT t.id, p.id FROM ponos_task t JOIN process_process p ON p.workflow_id = t.workflow_id").fetchall())
        naive_fold(conn)
        assert schema.schema_state(conn) == schema.FOLDED
        assert dict(conn.execute("SELECT id, process_id FROM ponos_task").fetchall()) == expected
        unstarted = conn.execute("SELECT count(*) FROM process_process WHERE started IS NULL").fetchone()[0]
        assert unstarted == 3  # SeedSpec.unstarted_processes
