"""ponoskit/checkpoint.py: a checkpoint written by the release before, with the words it used
(s3-rename --phase copy), belongs to the same run as this release's (--phase expand). No server."""

from __future__ import annotations

import json

import pytest

from migrate.rename_options import OLD_PHASE_WORDS
from ponoskit.checkpoint import Checkpoint
from ponoskit.errors import ConfigError


def _written(tmp_path, phase: str):
    path = tmp_path / "copy.checkpoint"
    path.write_text(json.dumps({"identity": {"job": "s3-rename", "phase": phase, "buckets": ["a", "l"]},
                                "state": {"a": {"after": "k", "complete": True}}}))
    return str(path)


@pytest.mark.parametrize("old, new", sorted(OLD_PHASE_WORDS.items()))
def test_an_old_word_in_the_checkpoint_is_the_same_phase(tmp_path, old, new):
    identity = {"job": "s3-rename", "phase": new, "buckets": ["a", "l"]}
    state = Checkpoint(_written(tmp_path, old), identity, renamed={"phase": OLD_PHASE_WORDS}).load()
    assert state == {"a": {"after": "k", "complete": True}}


def test_another_phase_is_still_another_run(tmp_path):
    identity = {"job": "s3-rename", "phase": "contract", "buckets": ["a", "l"]}
    with pytest.raises(ConfigError, match="belongs to another run"):
        Checkpoint(_written(tmp_path, "copy"), identity, renamed={"phase": OLD_PHASE_WORDS}).load()
