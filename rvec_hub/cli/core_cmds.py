"""`rvec extract`, `apply`, `info`, `check`."""

from __future__ import annotations

import click

from ._errors import echo_json, exit_with
from ._options import endpoint_option, json_option, quiet_option

DTYPE_CHOICE = click.Choice(["fp32", "bf16", "fp16"])


@click.command("extract")
@click.option("--reference", required=True, help="The SFT donor: a model directory or Hub id.")
@click.option("--tuned", required=True, help="The GRPO donor, trained from the same initialisation.")
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Vector directory to create.")
@click.option("--dtype", type=DTYPE_CHOICE, help="Storage dtype of the delta (default: the donors').")
@click.option("--name", help="Vector name (default: the output directory's name).")
@click.option("--description", default="", help="One paragraph for the model card.")
@click.option("--base-model", help="Hub id of the model users should apply the vector to (the card's base_model).")
@click.option("--dataset", "datasets", multiple=True, metavar="ID", help="Hub id of the tuned donor's training data, for the card; repeatable.")
@click.option("--license", "license_", default="apache-2.0", show_default=True, help="Hub license id (common names like \"Apache 2.0\" are mapped).")
@click.option("--force", is_flag=True, help="Replace the output directory if it exists.")
@endpoint_option
@quiet_option
@json_option
def extract_cmd(reference, tuned, out, dtype, name, description, base_model, datasets, license_, force, endpoint, quiet, as_json):
    """Extract a reasoning vector: tuned − reference, computed in float32.

    \b
    Examples:
      rvec extract --reference Qwen/Qwen2.5-1.5B-SFT --tuned Qwen/Qwen2.5-1.5B-GRPO -o vec
      rvec extract --reference ./sft --tuned ./grpo -o vec --dtype fp32 --base-model Qwen/Qwen2.5-1.5B-Instruct \\
        --dataset openai/gsm8k --license "Apache 2.0"
    """
    from ..card import card_warnings
    from ..check import dtype_from_name
    from ..extract import extract

    result = extract(
        reference, tuned, out, dtype=dtype_from_name(dtype), name=name, description=description,
        license=license_, base_model=base_model, datasets=datasets, force=force, endpoint=endpoint, quiet=quiet,
    )
    for warning in card_warnings(result.manifest):
        click.echo(f"warning: {warning}", err=True)
    summary = {
        "path": str(result.path),
        "changed_tensors": result.changed_tensors,
        "zero_tensors": result.zero_tensors,
        "storage_dtype": result.manifest.extract["storage_dtype"],
        "max_rounding_error": result.max_rounding_error,
        "rel_rounding_error": result.rel_rounding_error,
        "payload_bytes": sum(f.size for f in result.manifest.files),
    }
    if as_json:
        echo_json(summary)
        return
    click.echo(f"wrote {result.path}: {result.changed_tensors} changed tensors, {result.zero_tensors} unchanged (no payload)")
    click.echo(
        f"stored in {summary['storage_dtype']}: largest rounding error {result.max_rounding_error:.3g}, "
        f"relative error {result.rel_rounding_error:.3g}"
    )


@click.command("apply")
@click.argument("vector", nargs=-1, required=True)
@click.option("--base", required=True, help="The model to enhance: a directory or Hub id.")
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="Directory for the merged model.")
@click.option("--alpha", type=float, help="Scale for every vector without its own :ALPHA (default: the manifest's).")
@click.option("--out-dtype", type=DTYPE_CHOICE, help="Dtype of the merged weights (default: the base's).")
@click.option("--force", is_flag=True, help="Replace the output directory if it exists.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Where the arithmetic runs (default: cuda when available).")
@endpoint_option
@quiet_option
@json_option
def apply_cmd(vector, base, out, alpha, out_dtype, force, device, endpoint, quiet, as_json):
    """Apply vectors to a base model: θ' = θ_base + α·v, written as safetensors.

    VECTOR is a directory or REPO_ID[@VERSION], optionally with :ALPHA. Nothing is written if a vector
    does not fit the base.

    \b
    Examples:
      rvec apply vec --base Qwen/Qwen2.5-1.5B-Instruct -o merged
      rvec apply acme/reasoning@1.0.0:0.5 --base ./instruct -o merged --out-dtype fp32
      rvec apply vec:-1 --base ./instruct -o subtracted
    """
    from ..apply import apply_vectors
    from ..check import dtype_from_name
    from ..io.checkpoint import open_checkpoint
    from ..alpha import split_alpha
    from ..refs import open_vector

    pairs, refs = [], []
    for spec in vector:
        ref, own_alpha = split_alpha(spec)
        # apply publishes nothing before every vector has verified, so hashing can overlap the merge.
        vec = open_vector(ref, endpoint=endpoint, verify="background")
        pairs.append((vec, own_alpha if own_alpha is not None else alpha if alpha is not None else vec.manifest.default_alpha))
        refs.append(ref)
    result = apply_vectors(
        pairs, open_checkpoint(base, endpoint=endpoint), out, out_dtype=dtype_from_name(out_dtype),
        force=force, vector_refs=refs, device=device, quiet=quiet,
    )
    if as_json:
        echo_json({"path": str(result.path), "out_dtype": result.out_dtype, "retained": dict(zip(refs, result.retained)),
                   "tensors_changed": result.tensors_changed, "shards": result.shards})
        return
    click.echo(f"wrote {result.path} ({result.tensors_changed} tensors changed, {result.out_dtype}, {result.shards} shard(s))")
    for ref, kept in zip(refs, result.retained):
        line = f"{ref}: {kept:.1%} of the vector's norm survives in {result.out_dtype}"
        if kept < 0.99 and result.out_dtype != "float32":
            line += " (pass --out-dtype fp32 to keep all of it)"
        click.echo(line)


@click.command("info")
@click.argument("vector")
@endpoint_option
@json_option
def info_cmd(vector, endpoint, as_json):
    """Show what a vector holds: base, donors, tensors, encodings, sizes.

    \b
    Examples:
      rvec info ./vec
      rvec info acme/reasoning@1.0.0 --json
    """
    from ..info import vector_info
    from ..refs import open_vector

    data = vector_info(open_vector(vector, endpoint=endpoint))
    if as_json:
        echo_json(data)
        return
    base = data["base"]
    cfg = base["config"]
    click.echo(f"{data['name']}  (rvec format {data['format_version']}, written by rvec {data['rvec_version']})")
    if data["description"]:
        click.echo(f"  {data['description']}")
    click.echo(f"base:     {base['architecture']} hidden {cfg.get('hidden_size')}, {cfg.get('num_hidden_layers')} layers, vocab {cfg.get('vocab_size')}")
    click.echo(f"          suggested {base['model_id'] or '-'}; fingerprint {base['fingerprint'][:23]}…")
    donors = data["donors"]
    click.echo(f"donors:   {donors['tuned']['id']} − {donors['reference']['id']}  (alpha {data['default_alpha']})")
    enc = ", ".join(f"{n} {k}" for k, n in sorted(data["encodings"].items()))
    click.echo(f"tensors:  {data['tensors']} ({data['changed_tensors']} changed): {enc}; norm {data['norm']:.4g}")
    ratio = f" ({data['ratio_to_dense']:.1%} of dense)" if data["ratio_to_dense"] is not None else ""
    click.echo(f"payload:  {data['payload_bytes'] / 1e6:.2f} MB{ratio} in {len(data['files'])} file(s)")
    for section in ("compression", "probe"):
        if data[section]:
            flat = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in data[section].items() if not isinstance(v, (dict, list)))
            click.echo(f"{section + ':':<13}{flat}")


@click.command("check")
@click.argument("vector")
@click.option("--base", help="The model to check against: a directory or Hub id (without it, the vector alone is verified).")
@click.option("--alpha", type=float, help="Scale to measure precision at (default: the manifest's).")
@click.option("--out-dtype", type=DTYPE_CHOICE, help="Dtype the merged weights would use (default: the base's).")
@click.option("--no-precision", is_flag=True,
              help="Skip reading weights; compare names, shapes and config only (a Hub base's safetensors headers, not its weights).")
@endpoint_option
@quiet_option
@json_option
def check_cmd(vector, base, alpha, out_dtype, no_precision, endpoint, quiet, as_json):
    """Check a vector against a base, or on its own: every problem, exit 0 when sound, 1 when not.

    With --base: every mismatch, and the share of the vector the output dtype keeps. Without: every
    checksum (each file read and hashed again, whatever digest rvec recorded for it), every stored shape
    and dtype against the manifest, and every value (NaN, Inf, corrupt sparse indexes).

    \b
    Examples:
      rvec check vec
      rvec check vec --base Qwen/Qwen2.5-1.5B-Instruct
      rvec check acme/reasoning@latest --base ./instruct --json
    """
    from ..check import check, dtype_from_name
    from ..io.checkpoint import open_checkpoint, open_checkpoint_headers
    from ..refs import open_vector

    if base is None:
        _verify_alone(vector, alpha, out_dtype, endpoint, quiet, as_json)
        return
    # Without the precision pass only names, shapes and config are compared: a Hub base's headers suffice.
    open_base = open_checkpoint_headers if no_precision else open_checkpoint
    report = check(
        open_vector(vector, endpoint=endpoint), open_base(base, endpoint=endpoint), alpha=alpha,
        out_dtype=dtype_from_name(out_dtype), precision=not no_precision, vector_ref=vector, quiet=quiet,
    )
    if as_json:
        echo_json(report.to_dict())
    elif report.ok:
        click.echo(f"compatible: {vector} fits {base} ({report.touched} tensors touched, fingerprint {'matches' if report.fingerprint_match else 'differs'})")
        if report.retained is not None:
            click.echo(f"{report.retained:.1%} of the vector's norm survives in {report.out_dtype} at alpha {report.alpha}")
    else:
        click.echo(f"incompatible: {report.details.get('headline')}", err=True)
        for problem in report.problems:
            click.echo(f"  - {problem}", err=True)
    if not report.ok:
        exit_with(1)


def _verify_alone(vector, alpha, out_dtype, endpoint, quiet, as_json):
    from pathlib import Path

    from ..check import verify_vector
    from ..errors import UsageError
    from ..refs import open_vector

    if alpha is not None or out_dtype is not None:
        raise UsageError("--alpha and --out-dtype measure precision against a base; add --base MODEL")
    # A Hub reference is pulled (and its checksums verified) first; a directory is read where it is.
    path = vector if Path(vector).exists() else open_vector(vector, endpoint=endpoint, quiet=quiet).path
    report = verify_vector(path, vector_ref=vector, quiet=quiet)
    if as_json:
        echo_json(report.to_dict())
    elif report.ok:
        click.echo(f"sound: {vector} ({report.tensors} tensors, {report.payload_bytes / 1e6:.2f} MB): checksums, structure and values verified")
    else:
        click.echo(f"corrupt: {vector} has {len(report.problems)} problem{'s' if len(report.problems) > 1 else ''}", err=True)
        for problem in report.problems:
            click.echo(f"  - {problem}", err=True)
    if not report.ok:
        exit_with(1)
