"""`rvec apply`: θ' = θ_base + Σ α·v, streamed into a checkpoint that loads like the base."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from . import fused
from .alpha import check_alpha
from .arith import CHUNK_ELEMENTS, Survival, Workspace, add_rows, resolve_device, row_chunks, streaming_threads
from .card import write_merged_card
from .check import compatibility, dtype_name
from .errors import RvecError
from .io.atomic import atomic_directory
from .io.checkpoint import SIDECAR_FILES, Checkpoint
from .io.read_ahead import read_ahead
from .io.safetensors_io import ShardWriter, tensor_bytes
from .progress import progress
from .tied import delta_source
from .vector import Vector

DEFAULT_SHARD_BYTES = 5 * 1000**3
_SUM_BYTES = 2 * CHUNK_ELEMENTS  # a bf16 chunk (`arith.row_chunks`)


@dataclass(frozen=True)
class ApplyResult:
    """What `apply` wrote, and how much of each vector the output dtype kept."""

    path: Path
    out_dtype: str
    retained: list[float]
    tensors_changed: int
    shards: int


def apply_vectors(
    vectors: list[tuple[Vector, float]],
    base: Checkpoint,
    out: str | Path,
    *,
    out_dtype: torch.dtype | None = None,
    force: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    vector_refs: list[str] | None = None,
    device: str | None = None,
    quiet: bool = False,
) -> ApplyResult:
    """Write base + Σ αᵢ·vᵢ as a sharded safetensors checkpoint with the base's config and tokenizer.

    Every vector is checked against the base first; nothing is written when one does not fit.

    Args:
        vectors: (vector, alpha) pairs; alpha −1 subtracts.
        base: the opened base checkpoint.
        out: the output directory (created atomically).
        out_dtype: dtype of the merged weights (default: the base's).
        force: replace `out` if it exists.
        device: where the arithmetic runs (`cpu`, `cuda`); default: cuda when available.

    Returns:
        The result, with the share of each vector's norm that survives in `out_dtype`.

    Example:
        >>> apply_vectors([(Vector.open("vec"), 1.0)], open_checkpoint("Qwen/Qwen2.5-1.5B-Instruct"), "merged")
    """
    refs = vector_refs or [str(v.path) for v, _ in vectors]
    vectors = [(vector, check_alpha(alpha, f"alpha of {ref}")) for (vector, alpha), ref in zip(vectors, refs)]
    for (vector, _), ref in zip(vectors, refs):
        compatibility(vector, base, vector_ref=ref).raise_if_incompatible()
    out = Path(out)
    device = resolve_device(device)
    survival = [Survival() for _ in vectors]
    plan = []
    for name, info in base.tensors.items():
        dtype = out_dtype if (out_dtype is not None and info.dtype.is_floating_point) else info.dtype
        plan.append((name, info.shape, dtype))
    changed = 0
    workspace = Workspace()
    if _fuses(plan, base, vectors, device):
        # The kernels' import here, on this thread: imported on the reader thread, a Ctrl-C landing in this
        # thread's own import machinery could leave the import lock held and the reader waiting on it forever.
        fused.load_kernels()
    with atomic_directory(out, force=force, inputs=[base.path, *(v.path for v, _ in vectors)]) as tmp, streaming_threads():
        writer = ShardWriter(tmp, "model", max_shard_bytes, {"format": "pt"}, plan)
        chunks = read_ahead(_chunks(plan, base, vectors, device))
        with progress(sum(tensor_bytes(s, d) for _, s, d in plan), "apply", quiet=quiet) as bar, closing(chunks), _corruption_first(vectors):
            for name, shape, dtype, start, stop, rows, terms, one in chunks:
                if start == 0:
                    writer.begin(name, shape, dtype)
                    changed += bool(terms or one)
                fresh = True  # rows read for this chunk alone: the writer may keep them without a copy
                written = None
                if one is not None:  # one vector, fused: the bf16 base rows plus α·Δ written into rows of their own
                    i, vector, src, staged, alpha, mapped, written = one
                    fused.add_in_place(rows, vector, src, start, stop, alpha, survival[i], name=name, staged=staged, base=mapped,
                                       pristine=lambda: base.read_rows(name, start, stop) if shape else base.read_rows(name))
                    del one, mapped, staged  # unmapped now, not when the next chunk replaces them
                elif terms:
                    rows = add_rows(
                        rows.to(device), [(d, a) for _, d, a in terms], dtype, [survival[i] for i, _, _ in terms], workspace=workspace, name=name
                    ).cpu()
                    fresh = device.type != "cpu"  # on the CPU the sum lives in the reused workspace
                elif rows.dtype != dtype:
                    rows = rows.to(dtype)
                writer.write(rows, owned=fresh, written=written)
                bar.update(rows.numel() * rows.element_size())
        shards = writer.finish()
        # A vector opened with background verification must prove intact before the output appears.
        for vector, _ in vectors:
            vector.wait_verified()
        _copy_sidecars(base.path, tmp, out_dtype)
        # A card naming the base, relation `merge` and each vector with its α; the base's license files come along.
        write_merged_card(tmp, base.path, base.source, [(v.manifest, ref, a) for (v, a), ref in zip(vectors, refs)])
    return ApplyResult(out, dtype_name(out_dtype or base.dtype), [s.retained for s in survival], changed, len(shards))


@contextmanager
def _corruption_first(vectors: list[tuple[Vector, float]]) -> Iterator[None]:
    """On a bad value (NaN, a broken sparse index), report a payload that fails its checksum instead, if one does.

    Flipped bytes are the likeliest cause, and their fix (fetch again) differs from a bad vector's.
    """
    try:
        yield
    except RvecError:
        for vector, _ in vectors:
            vector.wait_verified()
        raise


def _fuses(plan: list, base: Checkpoint, vectors: list[tuple[Vector, float]], device: torch.device) -> bool:
    """Whether some tensor takes the fused add (`_chunks`), decided from the plan's dtypes."""
    return any(_fused_one(_active(vectors, name), base.tensors[name].dtype, dtype, device) for name, _, dtype in plan)


def _fused_one(active: list[tuple[int, Vector, float, str]], base_dtype: torch.dtype, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a tensor with these active vectors takes the fused add: one vector, `fused.applies_to`."""
    return len(active) == 1 and fused.applies_to(active[0][1], active[0][3], base_dtype, dtype, device)


def _active(vectors: list[tuple[Vector, float]], name: str) -> list[tuple[int, Vector, float, str]]:
    """(index, vector, alpha, source tensor) of each vector that changes `name`; a tied-donor vector's
    embedding delta also reaches a base's separate output head (rvec_hub.tied)."""
    return [(i, v, a, src) for i, (v, a) in enumerate(vectors) if (src := delta_source(v, name)) and a != 0.0]


def _chunks(plan: list, base: Checkpoint, vectors: list[tuple[Vector, float]], device: torch.device):
    """Per chunk of rows, in plan order: the tensor, its row range, the base rows, per vector
    (index, delta rows, alpha), and None. Where one vector's delta is to be fused (`rvec_hub.fused`)
    instead of decoded here: rows for the sum (`_Sums`), no delta rows and, last, (index, vector,
    source tensor, its payload with what the fused add reads staged (`Vector.staged`), alpha, the base
    rows mapped rather than copied (`Checkpoint.map_rows`), what returns the sum's rows once written)."""
    sums = _Sums()
    for name, shape, dtype in plan:
        active = _active(vectors, name)
        fuses = _fused_one(active, base.tensors[name].dtype, dtype, device)
        for start, stop in row_chunks(shape):
            if fuses:
                i, v, a, src = active[0]
                mapped = base.map_rows(name, start, stop)  # a scalar is read, not mapped
                rows, written = sums.take(mapped)
                yield name, shape, dtype, start, stop, rows, [], (i, v, src, v.staged(src, start, stop), a, mapped, written)
                continue
            rows = base.read_rows(name, start, stop) if shape else base.read_rows(name)
            yield name, shape, dtype, start, stop, rows, [(i, v.decode_rows(src, start, stop).to(device), a) for i, v, a, src in active], None


class _Sums:
    """Rows for the fused sums, each buffer used again once the writer has written it (`ShardWriter.write`).

    Fresh rows would be fresh pages, a fault and a zeroed page every 4 KB: applying a dense 1.5B vector in
    process took 1.6–1.9 s with reused buffers against 2.0–3.7 s with fresh ones (60–64 thousand minor faults
    against 114–204 thousand). The reader thread takes, the writer's thread gives back; the read-ahead and
    the writes in flight bound how many buffers there are.
    """

    def __init__(self) -> None:
        self._free: list[torch.Tensor] = []

    def take(self, like: torch.Tensor) -> tuple[torch.Tensor, Callable[[], None]]:
        """Rows shaped and typed like `like`, contents undefined, and what gives them back."""
        nbytes = like.numel() * like.element_size()
        buffer = self._free.pop() if self._free else None
        if buffer is None or buffer.numel() < nbytes:
            buffer = torch.empty(max(nbytes, _SUM_BYTES), dtype=torch.uint8)
        return buffer[:nbytes].view(like.dtype).view(like.shape), partial(self._free.append, buffer)


def _copy_sidecars(source: Path, target: Path, out_dtype: torch.dtype | None) -> None:
    """Config, tokenizer and generation files, so the output loads with from_pretrained."""
    import json

    for name in SIDECAR_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    if out_dtype is not None and (target / "config.json").is_file():
        config = json.loads((target / "config.json").read_text())
        key = "dtype" if "dtype" in config else "torch_dtype"
        config[key] = dtype_name(out_dtype)
        (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
