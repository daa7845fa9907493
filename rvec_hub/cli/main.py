"""`rvec`: wires the command groups together."""

from __future__ import annotations

import sys

import click

from .._version import __version__
from ._errors import run_cli
from .core_cmds import apply_cmd, check_cmd, extract_cmd, info_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rvec")
def cli() -> None:
    """Share, compress and serve reasoning vectors: weight deltas that carry reasoning between models.

    \b
    Examples:
      rvec extract --reference org/m-sft --tuned org/m-grpo -o vec
      rvec apply vec --base org/m-instruct -o merged
      rvec info vec
    """


for command in (extract_cmd, apply_cmd, info_cmd, check_cmd):
    cli.add_command(command)


def _add_optional() -> None:
    # Each group lives in its own module; a group whose module is absent is simply not offered.
    import importlib

    for module, attr in (
        ("compress_cmd", "compress_cmd"),
        ("hub_cmds", "push_cmd"),
        ("hub_cmds", "pull_cmd"),
        ("hub_cmds", "versions_cmd"),
        ("hub_cmds", "search_cmd"),
        ("hub_server_cmd", "hub_group"),
        ("serve_cmds", "serve_cmd"),
        ("serve_cmds", "export_group"),
        ("demo_cmd", "demo_cmd"),
        ("eval_cmd", "eval_cmd"),
    ):
        try:
            mod = importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{module}":
                raise
            continue
        cli.add_command(getattr(mod, attr))


_add_optional()


def main() -> None:
    """Console-script entry point."""
    sys.exit(run_cli(cli))
