"""`rvec serve` and `rvec export peft`."""

from __future__ import annotations

import shlex

import click

from .. import collector
from ..defaults import LORA_RANK
from ._errors import echo_json, exit_with
from ._options import endpoint_option, json_option, quiet_option


@click.command("serve")
@click.option("--base", required=True, help="The model to serve: a directory or Hub id.")
@click.option("--vector", "vectors", multiple=True, required=True, help="REF[:ALPHA]: a directory or REPO_ID@VERSION; repeatable.")
@click.option("--mode", type=click.Choice(["merged", "lora"]), default="merged", show_default=True,
              help="merged: vectors added at load time; lora: the base plus one adapter per vector.")
@click.option("--rank", type=int, default=LORA_RANK, show_default=True, help="LoRA mode: the largest adapter rank.")
@click.option("--lora-min-kept", type=click.FloatRange(0.0, 1.0), default=None, metavar="SHARE",
              help="LoRA mode: refuse a vector whose adapter keeps less than this share of its norm (e.g. 0.9).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--dry-run", is_flag=True, help="Check the vectors and print the vLLM command without starting it.")
@click.option("--admin-token-file", type=click.Path(dir_okay=False),
              help="Merged mode: turn on live swap (`rvec swap`), authenticated by the token in this file "
                   "(RVEC_ADMIN_TOKEN works too; at least 16 characters).")
@endpoint_option
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
def serve_cmd(base, vectors, mode, rank, lora_min_kept, host, port, dry_run, admin_token_file, endpoint, vllm_args):
    """Serve a base model with reasoning vectors behind vLLM's OpenAI-compatible API.

    Every vector is checked against the base before anything starts. Arguments after `--` go to vLLM.

    \b
    Examples:
      rvec serve --base Qwen/Qwen2.5-1.5B-Instruct --vector acme/reasoning@1.0.0
      rvec serve --base ./instruct --vector ./vec:0.5 --port 8001 -- --dtype float32
      rvec serve --base ./instruct --vector ./vec-a --vector ./vec-b --mode lora --lora-min-kept 0.9
      rvec serve --base ./instruct --vector ./vec-a --admin-token-file admin.token
    """
    from rvec_serving.launch import plan_merged, run
    from rvec_serving.lora import plan_lora
    from rvec_serving.spec import VectorSpec

    collector.resume()
    specs = [VectorSpec.parse(v) for v in vectors]
    common = {"host": host, "port": port, "vllm_args": list(vllm_args), "endpoint": endpoint}
    if mode == "lora":
        if admin_token_file:
            raise click.UsageError("--admin-token-file swaps merged vectors; LoRA mode picks a vector per request already")
        plan = plan_lora(base, specs, rank=rank, min_kept=lora_min_kept, **common)[0]
    else:
        if lora_min_kept is not None:
            raise click.UsageError("--lora-min-kept applies to --mode lora; merged mode serves all of every vector")
        plan = plan_merged(base, specs, admin_token_file=admin_token_file, **common)
    if dry_run:
        for note in plan.notes:
            click.echo(note)
        click.echo(f"would serve {', '.join(plan.models)} at {plan.url}")
        click.echo(shlex.join(plan.argv))
        return
    exit_with(run(plan, echo=click.echo))


@click.command("swap")
@click.option("--server", required=True, help="The running `rvec serve`, e.g. http://127.0.0.1:8000.")
@click.option("--vector", "vectors", multiple=True, required=True, help="REF[:ALPHA] to serve from now on; repeatable.")
@click.option("--token-file", type=click.Path(dir_okay=False), help="File holding the admin token (else RVEC_ADMIN_TOKEN).")
@json_option
def swap_cmd(server, vectors, token_file, as_json):
    """Change a running server's vectors or their alphas without restarting it.

    The server checks and verifies the new vectors first and refuses any that do not fit, while the old
    weights keep serving; then requests in flight finish on the old weights and later ones get the new ones.

    \b
    Examples:
      rvec serve --base ./instruct --vector ./vec-a --admin-token-file admin.token &
      rvec swap --server http://127.0.0.1:8000 --vector ./vec-b:0.5 --token-file admin.token
      rvec swap --server http://127.0.0.1:8000 --vector acme/reasoning@1.1.0 --json
    """
    from rvec_serving.swap import admin_token, swap
    from rvec_serving.wire import VectorSpec

    answer = swap(server, [VectorSpec.parse(v) for v in vectors], admin_token(token_file))
    if as_json:
        echo_json(answer)
        return
    served = " + ".join(f"{v['ref']}×{v.get('alpha', 'default')}" for v in answer["vectors"])
    click.echo(f"now serving {served} (swapped in {answer['seconds']['total']:.2f} s)")


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
