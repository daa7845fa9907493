"""`rvec eval`: reasoning accuracy before and after a vector."""

from __future__ import annotations

import shlex

import click

from .. import collector
from ..answers import CI_METHODS
from ..evaluate import ENGINES, EvalOptions, evaluate, settings_for
from ..tasks import DEFAULT_SEED, DEFAULT_SIZE, load_task_sets
from ._errors import echo_json
from ._options import json_option


@click.command("eval")
@click.option("--base", help="The model to evaluate: a directory or Hub id (not needed with --endpoint).")
@click.option("--vector", "vectors", multiple=True, metavar="REF[:ALPHA]", help="A vector to add, repeatable; α from --alpha or the manifest.")
@click.option("--alpha", "alphas", type=float, multiple=True, help="Scales to try for every vector without its own :ALPHA, repeatable.")
@click.option("--tasks", "task_specs", multiple=True, required=True, metavar="SPEC",
              help="JSONL file, built-in set (arith, tracking, NAME@SEED), bbh, bbh:NAME, bigbench:NAME[/SUBTASK] or hf:DATASET[@CONFIG][:SPLIT]; repeatable.")
@click.option("--cot", is_flag=True, help='Ask with "Let\'s think step by step."')
@click.option("--limit", type=click.IntRange(min=1), help="Questions per task set (default: all; built-in sets have 200; BIG-bench ones a fixed random sample).")
@click.option("--endpoint", help="An OpenAI-compatible server already running, e.g. http://127.0.0.1:8000/v1.")
@click.option("--model", "models", multiple=True, help="With --endpoint: served model names to evaluate (default: the first listed).")
@click.option("--engine", type=click.Choice(ENGINES), default="vllm", show_default=True,
              help="Without --endpoint: `rvec serve` per setting, or transformers in process (small models).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Transformers engine: where the model runs (default: cuda when available).")
@click.option("--chat", is_flag=True, help="Use the chat API and template instead of plain completions.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--ci", type=click.Choice(CI_METHODS), default="wilson", show_default=True, help="95 % interval method.")
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Seed of built-in task sets and of the order BIG-bench questions are taken in.")
@click.option("--serve-args", default="", help='Extra vLLM arguments for `rvec serve`, e.g. "--dtype float32".')
@click.option("--write-card", "card", type=click.Path(exists=True, file_okay=False), help="Record the results in this vector's README (model-index).")
@click.option("--base-id", metavar="ID", help="With --write-card: the evaluated base's Hub id (default: --base if it is one, else the vector's suggested base).")
@click.option("--hub-endpoint", envvar="HF_ENDPOINT", help="Hub endpoint for Hub references (default: HF_ENDPOINT or huggingface.co).")
@json_option
def eval_cmd(base, vectors, alphas, task_specs, cot, limit, endpoint, models, engine, device, chat, max_tokens, ci, seed, serve_args, card, base_id, hub_endpoint, as_json):
    """Measure reasoning accuracy of a base model, then of base + α·vector, with 95 % intervals.

    Final answers follow the GSM8K convention: the number after `####`, else the last number. BIG-bench and
    BBH tasks (fetched once from PyPI's `bigbench` sdist into the cache) are asked and scored as
    lm-evaluation-harness's bbh_cot_zeroshot: "Q: …\nA: Let's think step by step.", then exact match of the
    answer its filters extract.

    \b
    Examples:
      rvec eval --base ./instruct --vector vec --alpha 0.5 --alpha 1 --tasks arith --cot
      rvec eval --base ./instruct --vector vec --tasks bbh --cot --limit 50 --engine transformers
      rvec eval --base ./instruct --tasks bigbench:logical_deduction/three_objects --cot --limit 100
      rvec eval --base ./instruct --vector vec:-1 --tasks arith --tasks tracking --engine transformers
      rvec eval --endpoint http://127.0.0.1:8000/v1 --tasks gsm8k.jsonl --cot --limit 200 --json
      rvec eval --base ./instruct --vector vec --tasks arith --cot --write-card vec
    """
    collector.resume()
    tasks = [t.limit(limit) for spec in task_specs for t in load_task_sets(spec, seed=seed, size=limit or DEFAULT_SIZE)]
    settings = settings_for(list(vectors), list(alphas) or None)
    options = EvalOptions(cot=cot, chat=chat, max_tokens=max_tokens, ci=ci)
    echo = None if as_json else (lambda line: click.echo(line, err=True))
    report = evaluate(
        base, tasks, settings, options, endpoint=endpoint, models=list(models) or None, engine=engine, device=device,
        serve_args=shlex.split(serve_args), hub_endpoint=hub_endpoint, echo=echo,
    )
    if card:
        from ..eval_card import write_card

        write_card(card, report, base_id=base_id)
    if as_json:
        echo_json(report.to_dict())
        return
    click.echo(report.table())
    if card:
        click.echo(f"recorded in {card}/README.md (model-index)")
