"""migrate/s3_mover.py: the permission streak. No server."""

from __future__ import annotations

import pytest

from migrate.s3_mover import PermissionStreak
from ponoskit.s3.errors import S3PermissionError


def test_identical_refusals_in_a_row_stop_and_a_success_resets_the_streak():
    streak = PermissionStreak(limit=3)
    streak.refused("CopyObject", "AccessDenied")
    streak.refused("CopyObject", "AccessDenied")
    streak.success()
    streak.refused("CopyObject", "AccessDenied")
    streak.refused("DeleteObject", "AccessDenied")  # another operation: a new streak
    streak.refused("DeleteObject", "AccessDenied")
    with pytest.raises(S3PermissionError) as info:
        streak.refused("DeleteObject", "AccessDenied")
    assert "s3:DeleteObject" in str(info.value) and info.value.exit_code == 2
