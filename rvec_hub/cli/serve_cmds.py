"""`rvec serve` and `rvec export peft`."""

from __future__ import annotations

import shlex

import click

from ..defaults import LORA_RANK
from ._errors import echo_json, exit_with
from ._options import endpoint_option, json_option, quiet_option


@click.command("serve")
@click.option("--base", required=True, help="The model to serve: a directory or Hub id.")
@click.option("--vector", "vectors", multiple=True, required=True, help="REF[:ALPHA]: a directory or REPO_ID@VERSION; repeatable.")
@click.option("--mode", type=click.Choice(["merged", "lora"]), default="merged", show_default=True,
              help="merged: vectors added at load time; lora: the base plus one adapter per vector.")
@click.option("--rank", type=int, default=LORA_RANK, show_default=True, help="LoRA mode: the largest adapter rank.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--dry-run", is_flag=True, help="Check the vectors and print the vLLM command without starting it.")
@endpoint_option
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
def serve_cmd(base, vectors, mode, rank, host, port, dry_run, endpoint, vllm_args):
    """Serve a base model with reasoning vectors behind vLLM's OpenAI-compatible API.

    Every vector is checked against the base before anything starts. Arguments after `--` go to vLLM.

    \b
    Examples:
      rvec serve --base Qwen/Qwen2.5-1.5B-Instruct --vector acme/reasoning@1.0.0
      rvec serve --base ./instruct --vector ./vec:0.5 --port 8001 -- --dtype float32
      rvec serve --base ./instruct --vector ./vec-a --vector ./vec-b --mode lora
    """
    from rvec_serving.launch import plan_merged, run
    from rvec_serving.lora import plan_lora
    from rvec_serving.spec import VectorSpec

    specs = [VectorSpec.parse(v) for v in vectors]
    common = {"host": host, "port": port, "vllm_args": list(vllm_args), "endpoint": endpoint}
    plan = plan_lora(base, specs, rank=rank, **common)[0] if mode == "lora" else plan_merged(base, specs, **common)
    if dry_run:
        for note in plan.notes:
            click.echo(note)
        click.echo(f"would serve {', '.join(plan.models)} at {plan.url}")
        click.echo(shlex.join(plan.argv))
        return
    exit_with(run(plan, echo=click.echo))


@click.group("export")
def export_group() -> None:
    """Export a vector to other formats."""


@export_group.command("peft")
@click.argument("vector")
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Adapter directory to create.")
@click.option("--rank", type=int, default=LORA_RANK, show_default=True, help="Largest rank per module.")
@click.option("--alpha", type=float, default=1.0, show_default=True, help="Scale folded into the adapter.")
@click.option("--base-model", help="Recorded as base_model_name_or_path (default: the vector's suggested base).")
@click.option("--force", is_flag=True, help="Replace the output directory if it exists.")
@endpoint_option
@quiet_option
@json_option
def export_peft_cmd(vector, out, rank, alpha, base_model, force, endpoint, quiet, as_json):
    """Write a vector as a PEFT LoRA adapter (peft and vLLM --enable-lora load it).

    Linear-layer and embedding deltas become rank-R factors by SVD; a tied output head gets the embedding's
    factors too. What LoRA cannot carry (biases, norms) is reported with its share of the vector's norm
    and left out, never written as full weights. `rvec import peft` reads the adapter back.

    \b
    Examples:
      rvec export peft ./vec -o vec-lora --rank 32
      rvec export peft acme/reasoning@1.0.0 -o lora --json
    """
    from ..peft_export import export_peft
    from ..refs import open_vector

    result = export_peft(open_vector(vector, endpoint=endpoint), out, rank=rank, alpha=alpha, base_model=base_model,
                         vector_ref=vector, force=force, quiet=quiet)
    if as_json:
        echo_json({"path": str(result.path), "ranks": result.ranks, "dropped": result.dropped,
                   "dropped_share": result.dropped_share, "truncation_share": result.truncation_share,
                   "carried_share": result.carried_share})
        return
    ranks = sorted(set(result.ranks.values()))
    click.echo(f"wrote {result.path}: {len(result.ranks)} LoRA modules, rank {'/'.join(map(str, ranks))}")
    click.echo(f"carried: {result.carried_share:.1%} of the vector's norm; rank truncation loses {result.truncation_share:.1%} of the linear deltas")
    if result.dropped:
        click.echo(f"not expressible as LoRA, left out: {result.dropped_share:.1%} of the norm in {len(result.dropped)} tensors")
        for name, share in list(result.dropped.items())[:10]:
            click.echo(f"  - {name}: {share:.1%}")
