"""`rvec extract`: v = tuned − reference, streamed one tensor and one chunk at a time."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import torch

from ._version import __version__
from .arith import row_chunks, streaming_threads
from .card import license_id, require_hub_id
from .check import dtype_name
from .errors import CheckpointError
from .io.atomic import atomic_directory
from .io.checkpoint import Checkpoint, open_checkpoint
from .io.read_ahead import read_ahead
from .io.safetensors_io import ShardWriter
from .manifest import BaseSpec, Donors, Manifest, ModelRef, TensorEntry, config_signature, fingerprint
from .package import PAYLOAD_METADATA, finalize_vector
from .progress import progress

DEFAULT_SHARD_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class ExtractResult:
    """What `extract` wrote and what storing the delta cost in precision."""

    path: Path
    manifest: Manifest
    changed_tensors: int
    zero_tensors: int
    max_rounding_error: float
    rel_rounding_error: float


def donor_problems(reference: Checkpoint, tuned: Checkpoint) -> list[str]:
    """Every reason two donors cannot be subtracted (architecture, config, names, shapes)."""
    problems = []
    ref_sig, tun_sig = config_signature(reference.config), config_signature(tuned.config)
    for key in ref_sig:
        if ref_sig[key] != tun_sig[key]:
            hint = " (resized embeddings cannot be subtracted)" if key == "vocab_size" else ""
            problems.append(f"config {key}: reference {ref_sig[key]}, tuned {tun_sig[key]}{hint}")
    for name in reference.tensors.keys() - tuned.tensors.keys():
        problems.append(f"tensor {name}: in the reference only")
    for name in tuned.tensors.keys() - reference.tensors.keys():
        problems.append(f"tensor {name}: in the tuned model only")
    for name in reference.tensors.keys() & tuned.tensors.keys():
        a, b = reference.tensors[name].shape, tuned.tensors[name].shape
        if a != b:
            problems.append(f"tensor {name}: reference shape {list(a)}, tuned shape {list(b)}")
    return sorted(problems)


def _model_ref(ckpt: Checkpoint) -> ModelRef:
    path = Path(ckpt.source)
    return ModelRef(id=ckpt.source if ckpt.revision else path.name, revision=ckpt.revision)


def extract(
    reference: str | Path,
    tuned: str | Path,
    out: str | Path,
    *,
    dtype: torch.dtype | None = None,
    name: str | None = None,
    description: str = "",
    license: str = "apache-2.0",
    base_model: str | None = None,
    datasets: list[str] | tuple[str, ...] = (),
    default_alpha: float = 1.0,
    force: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    endpoint: str | None = None,
    token: str | None = None,
    quiet: bool = False,
) -> ExtractResult:
    """Extract the reasoning vector tuned − reference into a new vector directory.

    Args:
        reference: the SFT donor (directory or Hub id).
        tuned: the GRPO donor, trained from the same initialisation.
        out: the vector directory to create.
        dtype: storage dtype of the delta (default: the donors' dtype).
        name: vector name (default: the output directory's name).
        license: Hub license id, or a common name for one ("Apache 2.0" → apache-2.0).
        base_model: Hub id of the instruction-tuned model users should apply it to.
        datasets: Hub ids of the data the tuned donor was trained on, for the card.
        force: replace `out` if it exists.

    Returns:
        The result, with the largest rounding error the storage dtype caused.

    Example:
        >>> extract("org/model-sft", "org/model-grpo", "reasoning-vec", base_model="org/model-instruct")
    """
    license = license_id(license)
    base_model = require_hub_id(base_model)
    for dataset in datasets:
        require_hub_id(dataset, "--dataset")
    ref = open_checkpoint(reference, endpoint=endpoint, token=token)
    tun = open_checkpoint(tuned, endpoint=endpoint, token=token)
    problems = donor_problems(ref, tun)
    if problems:
        raise CheckpointError(
            f"donors {ref.source} and {tun.source} cannot be subtracted: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            problems=problems,
        )
    storage = dtype or ref.dtype
    floats = [n for n, i in ref.tensors.items() if i.dtype.is_floating_point]
    entries: list[TensorEntry] = []
    max_err, err_sq, norm_sq = 0.0, 0.0, 0.0
    out = Path(out)
    with atomic_directory(out, force=force, inputs=[ref.path, tun.path]) as tmp, streaming_threads():
        writer = ShardWriter(tmp, "vector", max_shard_bytes, PAYLOAD_METADATA, [(n, ref.tensors[n].shape, storage) for n in floats])
        # The next chunk of both donors is read on a thread while the current one is subtracted and written.
        pairs = ((tun.read_rows(n, a, b), ref.read_rows(n, a, b)) for n in floats for a, b in row_chunks(ref.tensors[n].shape))
        with progress(sum(ref.tensors[n].nbytes for n in floats), "extract", quiet=quiet) as bar, closing(read_ahead(pairs)) as chunks:
            for tname in floats:
                entry, stats = _extract_tensor(tname, ref, storage, writer, chunks)
                entries.append(entry)
                max_err = max(max_err, stats[0])
                err_sq += stats[1]
                norm_sq += stats[2]
                bar.update(ref.tensors[tname].nbytes)
        shards = writer.finish()
        for tname, info in ref.tensors.items():
            if not info.dtype.is_floating_point and not torch.equal(ref.read_rows(tname), tun.read_rows(tname)):
                raise CheckpointError(f"non-float tensor {tname} differs between the donors; rvec only subtracts float weights")
        sig = config_signature(ref.config)
        touched = {e.name: e.shape for e in entries if e.encoding != "zero"}
        manifest_fields = dict(
            format_version=1,
            name=name or out.name,
            description=description,
            license=license,
            rvec_version=__version__,
            base=BaseSpec(architecture=(sig["architectures"] or ["unknown"])[0], config=sig, fingerprint=fingerprint(sig, touched), model_id=base_model),
            donors=Donors(reference=_model_ref(ref), tuned=_model_ref(tun)),
            default_alpha=default_alpha,
            tensors=entries,
            extract={
                "storage_dtype": dtype_name(storage),
                "donor_dtype": dtype_name(ref.dtype),
                "max_rounding_error": max_err,
                "rel_rounding_error": math.sqrt(err_sq / norm_sq) if norm_sq else 0.0,
                **({"datasets": list(datasets)} if datasets else {}),
            },
        )
        manifest = finalize_vector(tmp, manifest_fields, [p for p, _ in shards])
    ref.close()
    tun.close()
    changed = sum(e.encoding != "zero" for e in entries)
    return ExtractResult(out, manifest, changed, len(entries) - changed, max_err, manifest.extract["rel_rounding_error"])


def _extract_tensor(
    name: str, ref: Checkpoint, storage: torch.dtype, writer: ShardWriter, chunks: Iterator[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[TensorEntry, tuple[float, float, float]]:
    """Subtract one tensor, taking its (tuned, reference) row chunks from `chunks` in order."""
    info = ref.tensors[name]
    shape = info.shape
    zero_rows, begun = 0, False
    max_err = err_sq = norm_sq = 0.0
    nonzero = 0
    for start, stop in row_chunks(shape):
        # In-place mixed-dtype subtraction widens the reference rows exactly, without a float32 copy.
        tuned_rows, reference_rows = next(chunks)
        delta = tuned_rows.float().sub_(reference_rows)
        delta_norm = torch.linalg.vector_norm(delta).item()
        # A finite norm proves every element finite in one pass; only an overflowing one needs a closer look.
        if not math.isfinite(delta_norm) and not torch.isfinite(delta).all():
            raise CheckpointError(f"the delta of {name} holds NaN or Inf; a donor checkpoint is corrupt")
        if not begun:
            if not delta.any():
                zero_rows = stop
                continue
            writer.begin(name, shape, storage)
            for z_start, z_stop in row_chunks((zero_rows, *shape[1:])):
                if z_stop > z_start:
                    writer.write(torch.zeros((z_stop - z_start, *shape[1:]), dtype=storage))
            begun = True
        stored = delta.to(storage)
        if storage != torch.float32 and delta.numel():
            diff = torch.sub(stored, delta)
            low, high = torch.aminmax(diff)
            if not (math.isfinite(low.item()) and math.isfinite(high.item())):
                raise CheckpointError(
                    f"the delta of {name} overflows {dtype_name(storage)}, its storage dtype; pass --dtype fp32 to store it exactly"
                )
            max_err = max(max_err, -low.item(), high.item())
            err_sq += torch.linalg.vector_norm(diff).item() ** 2
        norm_sq += delta_norm**2
        nonzero += int(torch.count_nonzero(delta))
        writer.write(stored.reshape(shape) if not shape else stored)
    if not begun:
        return TensorEntry(name=name, shape=shape, dtype=dtype_name(storage), encoding="zero"), (0.0, 0.0, 0.0)
    numel = math.prod(shape) if shape else 1
    stats = {"norm": math.sqrt(norm_sq), "density": nonzero / numel, "rel_error": math.sqrt(err_sq / norm_sq) if norm_sq else 0.0}
    entry = TensorEntry(name=name, shape=shape, dtype=dtype_name(storage), encoding="dense", keys={"delta": name}, stats=stats)
    return entry, (max_err, err_sq, norm_sq)
