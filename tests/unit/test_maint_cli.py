"""maint/cli.py: the cleanup's option parsers (durations, --before)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from maint.cli import parse_before
from ponoskit.cli import parse_duration
from ponoskit.errors import ConfigError


@pytest.mark.parametrize("text, seconds", [("600", 600), ("10m", 600), ("1h30m", 5400), ("7d", 604800),
                                           ("0.5s", 0.5)])
def test_durations(text, seconds):
    assert parse_duration("--max-runtime", text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "m", "1h 3", "-5"])
def test_bad_durations(text):
    with pytest.raises(ConfigError, match="not a duration"):
        parse_duration("--grace", text)


def test_before_parsing():
    assert parse_before("2024-05-01T00:00:00Z").isoformat() == "2024-05-01T00:00:00+00:00"
    assert parse_before("2024-05-01").isoformat() == "2024-05-01T00:00:00+00:00"  # no offset: UTC
    assert parse_before("2024-05-01T02:00:00+02:00").utcoffset() == timedelta(hours=2)
    with pytest.raises(ConfigError, match="ISO 8601"):
        parse_before("yesterday")
