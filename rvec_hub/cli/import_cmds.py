"""`rvec import peft`: adapters from other tools read as vectors."""

from __future__ import annotations

import click

from ._errors import echo_json
from ._options import endpoint_option, json_option, quiet_option


@click.group("import")
def import_group() -> None:
    """Read adapters made by other tools as rvec vectors."""


@import_group.command("peft")
@click.argument("adapter", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Vector directory to create.")
@click.option("--base", help="The adapter's base model, a directory or Hub id (default: its base_model_name_or_path).")
@click.option("--name", help="Vector name (default: the output directory's name).")
@click.option("--license", "license_", help="Hub license id (default: the adapter card's).")
@click.option("--force", is_flag=True, help="Replace the output directory if it exists.")
@endpoint_option
@quiet_option
@json_option
def import_peft_cmd(adapter, out, base, name, license_, force, endpoint, quiet, as_json):
    """Read a PEFT LoRA adapter (or mergekit-extract-lora output) as a vector.

    LoRA factors become low-rank entries with PEFT's scale (lora_alpha / r, rslora included) folded in;
    modules the adapter saves whole become dense deltas against the base. The vector then takes exact α,
    negation, `rvec check`, compression and Hub versions like any other. Only safetensors are read.

    \b
    Examples:
      rvec import peft ./my-lora -o my-vec --base Qwen/Qwen2.5-1.5B-Instruct
      rvec import peft ./extracted-lora -o vec --base ./base-model --json
      rvec apply my-vec:-1 --base ./base-model -o without-the-lora
    """
    from ..peft_import import import_peft

    result = import_peft(adapter, out, base=base, name=name, license=license_, endpoint=endpoint, force=force, quiet=quiet)
    if as_json:
        echo_json({"path": str(result.path), "lowrank": result.lowrank, "dense": result.dense,
                   "tied_head": result.tied_head, "base_model": result.base_model})
        return
    click.echo(f"wrote {result.path}: {result.lowrank} low-rank and {result.dense} dense tensors"
               + (" (the tied output head follows the embedding)" if result.tied_head else ""))
