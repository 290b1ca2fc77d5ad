"""ponoskit/cli.py: ByteSize and the one duration grammar every command reads. No server."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from ponoskit.cli import ByteSize, parse_duration
from ponoskit.errors import ConfigError
from tests.unit.helpers import GiB, KiB, MiB, TiB


@pytest.mark.parametrize("text, expected", [
    ("5GiB", 5 * GiB), ("512MiB", 512 * MiB), ("100MB", 100 * 10 ** 6), ("1048576", 1048576),
    ("1KiB", KiB), ("1kb", 1000), ("2TiB", 2 * TiB), ("7b", 7), ("1.5KiB", 1536),
    (" 5 GiB ", 5 * GiB), ("5gib", 5 * GiB), (12345, 12345),
])
def test_byte_size_converts(text, expected):
    assert ByteSize().convert(text, None, None) == expected


@pytest.mark.parametrize("text", ["", "abc", "GiB", "5XB", "5G", "5 GiBs", "-1", "0", "0.1", "1/2", "nan"])
def test_byte_size_rejects_bad_values(text):
    with pytest.raises(click.BadParameter):
        ByteSize().convert(text, None, None)


@pytest.mark.parametrize("text", ["inf", "1e400"])
def test_byte_size_rejects_infinite_values(text):
    with pytest.raises(click.BadParameter):
        ByteSize().convert(text, None, None)


def test_byte_size_in_a_command():
    @click.command()
    @click.option("--size", type=ByteSize(), default="5GiB")
    def show(size):
        click.echo(size)

    runner = CliRunner()
    assert runner.invoke(show, []).output.strip() == str(5 * GiB)
    assert runner.invoke(show, ["--size", "256MiB"]).output.strip() == str(256 * MiB)
    bad = runner.invoke(show, ["--size", "lots"])
    assert bad.exit_code == 2
    assert "lots" in bad.output and "is not a size" in bad.output


@pytest.mark.parametrize("text, seconds", [("600", 600), ("500ms", 0.5), ("10m", 600), ("10min", 600),
                                           ("1h30m", 5400), ("7d", 604800), ("1.5", 1.5), ("2s", 2)])
def test_every_command_reads_durations_alike(text, seconds):
    assert parse_duration("--x", text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["ten minutes", "", "1 h", "5y", "-3"])
def test_bad_durations_are_config_errors(text):
    with pytest.raises(ConfigError):
        parse_duration("--x", text)
