"""migrate/s3_rename.py: checkpoint_problem, the validation of a checkpoint's state. No server."""

from __future__ import annotations

import json

import pytest

from migrate.s3_rename import checkpoint_problem
from ponoskit.checkpoint import Checkpoint
from ponoskit.errors import ConfigError


@pytest.mark.parametrize("state, ok", [
    ({}, True),
    ({"b": {"after": None, "complete": False, "started_at": "2026-12-01T10:00:00+00:00"}}, True),
    ({"b": {"after": "k", "complete": True}}, True),
    ({"b": []}, False), ({"b": {"after": 3}}, False), ({"b": {"complete": 1}}, False),
    ({"b": {"started_at": "soon"}}, False),
])
def test_checkpoint_state_shapes(state, ok):
    assert (checkpoint_problem(state) is None) is ok


def test_a_malformed_checkpoint_is_a_config_error_not_a_type_error(tmp_path):
    path = tmp_path / "ck.json"
    path.write_text(json.dumps({"identity": {"job": "x"}, "state": {"b": {"after": 3}}}))
    with pytest.raises(ConfigError) as info:
        Checkpoint(str(path), {"job": "x"}, validate=checkpoint_problem).load()
    assert "malformed" in str(info.value)
