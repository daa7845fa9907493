"""`rvec demo`."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".demo-work"), show_default=True,
              help="Scratch directory (replaced on every run).")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds each vLLM server may take to start.")
def demo_cmd(workdir: Path, timeout: float) -> None:
    """Run the whole story offline on a tiny embedded model family.

    Builds a donor pair and a target, extracts and compresses a vector, pushes it to a local Hub
    server as 1.0.0, pulls it back verified, serves the target with it through vLLM, asks a question
    next to the plain target, and stops everything it started.

    \b
    Example:
      rvec demo --workdir /tmp/rvec-demo
    """
    from ..demo import run_demo

    run_demo(workdir, echo=click.echo, timeout=timeout)
