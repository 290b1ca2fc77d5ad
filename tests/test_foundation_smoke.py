import psycopg

from tests.helpers import list_keys


def test_seeded_fixture_loads_both_stores(seeded):
    ctx = seeded["ctx"]
    with psycopg.connect(seeded["dsn"]) as conn:
        artifacts = conn.execute("SELECT count(*) FROM ponos_artifact").fetchone()[0]
    keys = list_keys(ctx.s3, seeded["artifacts"])
    assert artifacts > 0
    assert len(keys) == artifacts + seeded["counts"]["unrecognized"]
    assert seeded["counts"]["logs"] == len(list_keys(ctx.s3, seeded["logs"]))
