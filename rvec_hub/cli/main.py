"""`rvec`: wires the command groups together."""

from __future__ import annotations

import os
import sys

import click

from .._version import __version__
from ..collector import before_exit, hold_off
from ._errors import run_cli
from .compress_cmd import compress_cmd
from .core_cmds import apply_cmd, check_cmd, extract_cmd, info_cmd
from .demo_cmd import demo_cmd
from .eval_cmd import eval_cmd
from .hub_cmds import pull_cmd, push_cmd, search_cmd, versions_cmd
from .hub_server_cmd import hub_group
from .import_cmds import import_group
from .model_cmd import model_group
from .serve_cmds import export_group, serve_cmd, swap_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rvec")
def cli() -> None:
    """Share, compress and serve reasoning vectors: weight deltas that carry reasoning between models.

    \b
    Examples:
      rvec extract --reference org/m-sft --tuned org/m-grpo -o vec
      rvec compress vec -o vec-lossless
      rvec push vec-lossless acme/reasoning --version 1.0.0
      rvec serve --base org/m-instruct --vector acme/reasoning@1.0.0
    """


for command in (
    extract_cmd, compress_cmd, apply_cmd, info_cmd, check_cmd,
    push_cmd, pull_cmd, versions_cmd, search_cmd, hub_group,
    serve_cmd, swap_cmd, export_group, import_group, eval_cmd, demo_cmd, model_group,
):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    hold_off()
    code = run_cli(cli)
    before_exit()
    if code in (130, 143):
        # The interrupted command already removed its partial output. Threads still inside torch or a read
        # must not meet interpreter shutdown, which can abort the process instead of exiting with `code`.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
