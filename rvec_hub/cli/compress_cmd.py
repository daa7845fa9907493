"""`rvec compress`."""

from __future__ import annotations

import click

from ..defaults import COMPRESS_METHODS
from ._errors import echo_json
from ._options import endpoint_option, json_option, quiet_option


@click.command("compress")
@click.argument("vector")
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Vector directory to create.")
@click.option("--method", type=click.Choice(COMPRESS_METHODS), default="auto", show_default=True,
              help="auto: smallest encoding per tensor that meets the target (lossless unless --rank/--energy/--budget); "
                   "sparse: every changed tensor packed (lossless); quantized: lossy, each matrix's non-zeros at their "
                   "positions with values coded in --bits bits.")
@click.option("--rank", type=int, help="Low-rank factors of this rank for every matrix.")
@click.option("--energy", type=float, help="Per matrix, keep this share of the squared singular values (0 < E ≤ 1).")
@click.option("--budget", help="Total payload size, e.g. 200MB: ranks go where they capture the most energy.")
@click.option("--bits", type=int, help="With --method quantized: bits per kept value, 1 to 8 (1: a sign and a scale per row).")
@click.option("--keep", type=float, help="With --method quantized: share of each matrix's non-zero entries kept, the largest (default 1).")
@click.option("--factor-dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True, help="Storage dtype of low-rank factors.")
@click.option("--probe", "probe_base", help="Base model (with tokenizer): measure next-token KL and top-1 agreement against the input.")
@click.option("--device", help="Where SVDs and the probe run: cpu or cuda (default: cuda when available).")
@click.option("--name", help="Vector name (default: the input's).")
@click.option("--force", is_flag=True, help="Replace the output directory if it exists.")
@endpoint_option
@quiet_option
@json_option
def compress_cmd(vector, out, method, rank, energy, budget, bits, keep, factor_dtype, probe_base, device, name, force, endpoint, quiet, as_json):
    """Compress a vector: lossless packed (entropy-coded non-zeros), SVD low-rank, a byte budget, or quantized.

    VECTOR is a directory or REPO_ID[@VERSION] in any encoding.

    \b
    Examples:
      rvec compress vec -o vec-lossless                 # packed where it pays, bit-exact
      rvec compress vec -o vec-r64 --method lowrank --rank 64
      rvec compress vec -o vec-200mb --budget 200MB --probe Qwen/Qwen2.5-1.5B-Instruct
      rvec compress vec -o vec-q2 --method quantized --bits 2 --probe Qwen/Qwen2.5-1.5B-Instruct
    """
    from ..compress import compress
    from ..refs import open_vector

    result = compress(
        open_vector(vector, endpoint=endpoint), out, method=method, rank=rank, energy=energy, budget=budget, bits=bits, keep=keep,
        factor_dtype=factor_dtype, device=device, probe_base=probe_base, name=name, force=force, quiet=quiet,
    )
    summary = result.manifest.compression
    if as_json:
        echo_json({"path": str(result.path), "compression": summary, "probe": result.manifest.probe})
        return
    enc = ", ".join(f"{n} {k}" for k, n in sorted(summary["encodings"].items()))
    click.echo(f"wrote {result.path}: {result.payload_bytes / 1e6:.2f} MB, {result.ratio:.1%} of dense ({enc})")
    kind = "lossless" if summary["lossless"] else f"relative error {summary['rel_error']:.4g}, energy kept {summary['energy']:.4g}"
    click.echo(f"fidelity: {kind}")
    if result.manifest.probe:
        p = result.manifest.probe
        click.echo(f"probe:    KL mean {p['kl_mean']:.3g}, max {p['kl_max']:.3g}; top-1 agreement {p['top1_agreement']:.1%} over {p['tokens']} tokens")
