"""Options shared by several commands."""

from __future__ import annotations

import click

endpoint_option = click.option(
    "--endpoint", envvar="HF_ENDPOINT", help="Hub endpoint, e.g. http://127.0.0.1:8080 (default: HF_ENDPOINT or huggingface.co)."
)
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
