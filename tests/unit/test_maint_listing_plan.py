"""maint/listing_plan.py: which listings serve a batch's targets."""

from __future__ import annotations

import uuid

from maint.listing_plan import plan_listings


def test_listing_plan_covers_every_target_once_and_keeps_edges_narrow():
    keys_ = sorted(str(uuid.uuid4()) + suffix for _ in range(300) for suffix in (".log", "/"))
    plan = list(plan_listings(keys_, dense=True))
    served = [k for _, group in plan for k in group]
    assert sorted(served) == keys_
    assert all(k.startswith(prefix) for prefix, group in plan for k in group)
    assert plan[0][1] == [keys_[0]] and plan[-1][1] == [keys_[-1]]  # edges listed alone
    assert len(plan) < len(keys_) / 4
    assert list(plan_listings(keys_[:5], dense=False)) == [(k, [k]) for k in keys_[:5]]
