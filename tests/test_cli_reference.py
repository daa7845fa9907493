"""docs/cli.md stays in sync with the commands' --help."""

from __future__ import annotations

from pathlib import Path

from rvec_hub.cli.main import cli
from rvec_hub.cli.reference import render_reference


def test_cli_reference_matches_help_text():
    doc = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    assert doc.read_text() == render_reference(cli), "docs/cli.md is stale: run `make docs`"


def test_every_command_help_has_an_example_block():
    for name, command in cli.commands.items():
        commands = command.commands.values() if hasattr(command, "commands") else [command]
        for cmd in commands:
            assert "Example" in (cmd.help or ""), f"rvec {name} {cmd.name} --help has no example"
