"""ponoskit/checkpoint.py: round trips, another run's checkpoint refused, corrupt files are config
errors. No server.
"""

from __future__ import annotations

import os

import pytest

from ponoskit.checkpoint import Checkpoint
from ponoskit.errors import ConfigError


IDENTITY = {"job": "s3-rename", "buckets": ["artifacts", "logs"], "shard": "1/4", "use_db": True}


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "progress.json"
    state = {"artifacts": {"after": "0f/été/ü +%#?.bin", "complete": False},
             "logs": {"after": None, "complete": True}}
    Checkpoint(str(path), IDENTITY).save(state)
    loaded = Checkpoint(str(path), dict(IDENTITY))
    assert loaded.load() == state
    assert loaded.state == state
    # Saving again replaces the state.
    loaded.save({"artifacts": {"after": "z", "complete": True}})
    assert Checkpoint(str(path), IDENTITY).load() == {"artifacts": {"after": "z", "complete": True}}


def test_checkpoint_missing_file_is_a_fresh_start(tmp_path):
    assert Checkpoint(str(tmp_path / "absent.json"), IDENTITY).load() == {}


def test_checkpoint_of_another_run_is_refused(tmp_path):
    path = tmp_path / "progress.json"
    Checkpoint(str(path), IDENTITY).save({"artifacts": {"after": "k"}})
    for change in ({"shard": "2/4"}, {"buckets": ["other"]}, {"job": "cleanup"}, {"use_db": False}):
        with pytest.raises(ConfigError):
            Checkpoint(str(path), {**IDENTITY, **change}).load()


@pytest.mark.parametrize("content", [b"", b"{", b'{"identity": ', b"not json", b"\xff\xfe\x00garbage"])
def test_corrupt_checkpoint_is_a_config_error(tmp_path, content):
    path = tmp_path / "progress.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError):
        Checkpoint(str(path), IDENTITY).load()


@pytest.mark.parametrize("content", ["[]", "null", "1", '"text"'])
def test_checkpoint_that_is_not_a_json_object_is_a_config_error(tmp_path, content):
    path = tmp_path / "progress.json"
    path.write_text(content)
    with pytest.raises(ConfigError):
        Checkpoint(str(path), IDENTITY).load()


def test_checkpoint_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "progress.json"
    checkpoint = Checkpoint(str(path), IDENTITY)
    for i in range(20):
        checkpoint.save({"after": f"key-{i}"})
    assert sorted(os.listdir(tmp_path)) == ["progress.json"]
    # A save that fails keeps the previous state intact and leaves nothing behind.
    with pytest.raises(TypeError):
        checkpoint.save({"after": object()})
    assert sorted(os.listdir(tmp_path)) == ["progress.json"]
    assert Checkpoint(str(path), IDENTITY).load() == {"after": "key-19"}


def test_checkpoint_without_path_is_a_no_op(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = Checkpoint(None, IDENTITY)
    assert checkpoint.load() == {}
    checkpoint.save({"after": "k"})
    assert checkpoint.state == {"after": "k"}  # kept in memory
    assert os.listdir(tmp_path) == []
    assert Checkpoint(None, IDENTITY).load() == {}


def test_a_checkpoint_names_what_differs_in_its_identity(tmp_path):
    path = tmp_path / "ck.json"
    Checkpoint(str(path), {"job": "s3-rename", "endpoint": "http://rehearsal", "database": {"name": "a"}}).save({})
    with pytest.raises(ConfigError) as info:
        Checkpoint(str(path), {"job": "s3-rename", "endpoint": "aws:eu-west-3", "database": {"name": "a"}}).load()
    assert "endpoint" in str(info.value) and "database" not in str(info.value).split("(", 1)[1].split(";")[0]
