"""Every --target says what it defaults to and why (verify: the run's own; bundle and compress
default to different targets)."""

from __future__ import annotations

from typer.testing import CliRunner

from kdc.cli import app

runner = CliRunner()


def _help(command: str) -> str:
    res = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    return " ".join(res.output.replace("│", " ").split())


def test_target_options_say_their_defaults():
    assert "default: the target it was compressed for" in _help("verify")
    assert "compress defaults to host" in _help("bundle")
    assert "kdc bundle defaults to jetson" in _help("compress")
