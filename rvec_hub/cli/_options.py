"""Options shared by several commands."""

from __future__ import annotations

import click

endpoint_option = click.option(
    "--endpoint", envvar="HF_ENDPOINT", help="Hub endpoint, e.g. http://127.0.0.1:8080 (default: HF_ENDPOINT or huggingface.co)."
)


def _quiet(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    # huggingface_hub draws its own download and upload bars; -q silences those too.
    if value:
        from ..progress import quiet_hub_bars

        quiet_hub_bars()
    return value


quiet_option = click.option("-q", "--quiet", is_flag=True, callback=_quiet, help="No progress bars (huggingface_hub's included).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
