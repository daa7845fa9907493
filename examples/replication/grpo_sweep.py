"""GRPO from one SFT donor at several learning rates and temperatures: does any setting make the donor better?

    .venv-replication/bin/python examples/replication/grpo_sweep.py 3e-5,1.0 3e-5,0.7 1e-5,1.0

Each SETTING is LR,TEMPERATURE; every run starts from `WORK/sft` (a finished `run.py` work directory) with the
`cpu` preset's GRPO stage shortened to `--steps` (and `--batch` completions per step), then measures the donor's
greedy accuracy on the held-out `arith` problems. Results go to `results/grpo-settings-on-DEVICE.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from data import held_out_questions, rl_prompts  # noqa: E402
from grpo import grpo  # noqa: E402
from run import FULL, measure  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("settings", nargs="+", metavar="LR,TEMPERATURE")
    parser.add_argument("--work", type=Path, default=Path(".bench-work/replication"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=FULL["grpo"].batch, help="Completions per step.")
    parser.add_argument("--results", type=Path, help="Default: results/grpo-settings-on-DEVICE.json here.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work.resolve()
    exclude = held_out_questions()
    prompts = rl_prompts(FULL["rl_n"], seed=14, exclude=exclude)
    runs = []
    for setting in args.settings:
        lr, temperature = (float(x) for x in setting.split(","))
        schedule = replace(FULL["grpo"], steps=args.steps, batch=args.batch, lr=lr, temperature=temperature)
        out = work / f"grpo-sweep-{lr:g}-{temperature:g}-{args.batch}"
        info = grpo(work / "sft", out, prompts, schedule, work=work, device=args.device, log=lambda line: None)
        report = measure(out, [], [], FULL["eval_n"], args.device)
        arith = next(r for r in report["results"] if r["tasks"] == "arith")
        runs.append({"lr": lr, "temperature": temperature, "steps": args.steps, "batch": args.batch, "rewards": info["rewards"],
                     "arith": arith["accuracy"], "ci95": arith["ci95"]})
        print(f"lr {lr:g} temperature {temperature:g}: reward {info['rewards'][:3]} ... {info['rewards'][-3:]}, "
              f"arith {100 * arith['accuracy']:.1f} %", flush=True)
    path = args.results or HERE / "results" / f"grpo-settings-on-{args.device}.json"
    path.write_text(json.dumps({"donor": str(work / "sft"), "runs": runs}, indent=2) + "\n")
    print(f"results in {path}")


if __name__ == "__main__":
    main()
