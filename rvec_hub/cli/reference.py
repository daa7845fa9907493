"""The CLI reference (docs/cli.md), generated from every command's `--help`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

HEADER = "# rvec command reference\n\nGenerated from `--help`; regenerate with `make docs`.\n"


def _walk(command: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            found += _walk(command.commands[name], [*path, name])
    return found


def render_reference(root: click.Group) -> str:
    """Markdown with the `--help` text of every command and subcommand."""
    parts = [HEADER]
    for path, command in _walk(root, ["rvec"]):
        with click.Context(command, info_name=" ".join(path), terminal_width=100, max_content_width=100, help_option_names=["-h", "--help"]) as ctx:
            text = command.get_help(ctx)
        parts.append(f"\n## `{' '.join(path)}`\n\n```text\n{text}\n```\n")
    return "".join(parts)


def main() -> None:
    """Write the reference to the path given (default docs/cli.md)."""
    from .main import cli

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/cli.md")
    target.write_text(render_reference(cli))


if __name__ == "__main__":
    main()
