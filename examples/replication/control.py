"""Direction or size? The target plus a random vector with the reasoning vector's norm, tensor by tensor.

    .venv-replication/bin/python examples/replication/control.py

Takes a finished `run.py` work directory. For every tensor the vector changes, it draws a Gaussian direction
(fixed seed) scaled to that tensor's ‖v‖, writes SFT + r as a model, and extracts r with `rvec extract` like
the real vector. Then `rvec eval` measures the target ± r at the α of the main run, next to ± v. Results go to
`results/control-on-DEVICE.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from run import FULL, log, measure  # noqa: E402


def random_twin(sft: Path, vector: Path, out: Path, seed: int = 0) -> None:
    """`out` = the SFT donor plus, per tensor, a random direction with the norm of the vector's delta."""
    from safetensors.torch import load_file, save_file

    from rvec_hub import Vector

    vec = Vector.open(vector)
    weights = load_file(str(sft / "model.safetensors"))
    generator = torch.Generator().manual_seed(seed)
    for entry in vec.manifest.tensors:
        if entry.encoding == "zero":
            continue
        norm = torch.linalg.vector_norm(vec.decode(entry.name))
        direction = torch.randn(weights[entry.name].shape, generator=generator)
        weights[entry.name] = weights[entry.name] + direction * (norm / torch.linalg.vector_norm(direction))
    shutil.copytree(sft, out, ignore=shutil.ignore_patterns("model.safetensors"))
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(".bench-work/replication"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work.resolve()
    twin, control = work / "sft-plus-random", work / "vector-random"
    for path in (twin, control):
        if path.exists():
            shutil.rmtree(path)
    random_twin(work / "sft", work / "vector", twin)
    from rvec_hub import extract

    extract(work / "sft", twin, control, dtype=torch.float32, name="random-direction", quiet=True)
    log(f"random direction with the vector's per-tensor norms in {control}")
    report = measure(work / "instruct", [f"{work / 'vector'}:-1", f"{control}:-1", str(work / "vector"), str(control)],
                     FULL["alphas"], FULL["eval_n"], args.device)
    path = HERE / "results" / f"control-on-{args.device}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    log(f"results in {path}")


if __name__ == "__main__":
    main()
