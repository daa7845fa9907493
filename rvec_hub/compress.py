"""`rvec compress`: re-encode a vector tensor by tensor (packed, low-rank, quantized, dense), within a target.

Two streaming passes over the input, one tensor per core in memory at a time. The survey pass measures what each
encoding would cost (the exact `packed` size, by encoding the tensor, and the singular spectrum when an
energy or byte budget needs it); the plan fixes every tensor's encoding and payload shapes; the write pass encodes and streams the
payload through `ShardWriter`, reusing the survey's `packed` encodings up to KEEP_ENCODED_BYTES instead of encoding again. Any input encoding works: tensors are decoded to float32 first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .arith import ordered_map, resolve_device, streaming_threads
from .budget import RankCandidate, allocate_ranks, minimum_bytes, parse_size
from .check import dtype_from_name, dtype_name
from .defaults import COMPRESS_METHODS
from .encodings import ENCODINGS, Encoded, lowrank, packed, quantized
from .errors import FormatError, UsageError
from .io.atomic import atomic_directory
from .io.safetensors_io import DTYPES, ShardWriter
from .manifest import Manifest, TensorEntry
from .package import EXTRA_FILES_DIR, PAYLOAD_METADATA, finalize_vector
from .progress import progress
from .vector import Vector

DEFAULT_SHARD_BYTES = 2 * 1024**3
KEEP_ENCODED_BYTES = 256 * 1024**2  # packed encodings the survey keeps for the write pass, at most
SURVEY_WORKERS = 4  # tensors the survey encodes at once, at most (and at most one per core)
SURVEY_BYTES = 2 * 1024**3  # their float32 deltas, at most, unless one tensor alone is larger
_TORCH_DTYPES = {dtype_name(d): d for d in DTYPES.values()}
# Bytes of safetensors header per stored key, and per file, kept out of a byte budget.
_HEADER_PER_KEY, _HEADER_BASE = 128, 512


@dataclass(frozen=True)
class Target:
    """What the user asked of the compression.

    Attributes:
        method: `auto` (smallest encoding that meets the target; lossless unless a rank, energy or
            budget is given), `sparse` (the lossless `packed` encoding for every changed tensor),
            `lowrank`, `quantized` (lossy: every matrix's non-zeros coded in `bits` bits) or `dense`.
        rank: one rank for every matrix.
        energy: the share of each matrix's squared singular values to keep, in (0, 1].
        budget: total payload bytes.
        factor_dtype: storage dtype of low-rank factors.
        bits: bits per kept value of the `quantized` encoding, 1 to 8.
        keep: share of each matrix's non-zero entries the `quantized` encoding keeps, the largest, in (0, 1].
    """

    method: str = "auto"
    rank: int | None = None
    energy: float | None = None
    budget: int | None = None
    factor_dtype: torch.dtype = torch.bfloat16
    bits: int | None = None
    keep: float | None = None

    @property
    def lossy(self) -> bool:
        """True when a low-rank or quantized target was given."""
        return self.rank is not None or self.energy is not None or self.budget is not None or self.bits is not None

    def problems(self) -> list[str]:
        """Every contradiction or out-of-range value."""
        out = []
        if self.method not in COMPRESS_METHODS:
            out.append(f"method {self.method!r} is unknown; use one of {', '.join(COMPRESS_METHODS)}")
        given = [k for k in ("rank", "energy", "budget") if getattr(self, k) is not None]
        if len(given) > 1:
            out.append(f"--{' and --'.join(given)} were both given; choose one way to set the rank")
        if self.rank is not None and self.rank < 1:
            out.append(f"rank {self.rank} must be at least 1")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            out.append(f"energy {self.energy} is outside (0, 1]; 0.9 keeps 90 % of each matrix's squared singular values")
        if self.budget is not None and self.budget <= 0:
            out.append(f"budget {self.budget} must be a positive size like 200MB")
        if self.method == "lowrank" and not given:
            out.append("--method lowrank needs --rank, --energy or --budget")
        if self.method in ("sparse", "dense") and given:
            out.append(f"--method {self.method} is lossless; --{given[0]} applies to lowrank or auto")
        if self.method == "quantized":
            if given:
                out.append(f"--method quantized takes --bits and --keep, not --{given[0]}")
            if self.bits is None:
                out.append("--method quantized needs --bits (1 to 8), e.g. --bits 2")
        elif self.bits is not None or self.keep is not None:
            out.append(f"--{'bits' if self.bits is not None else 'keep'} applies to --method quantized")
        if self.bits is not None and not 1 <= self.bits <= quantized.MAX_BITS:
            out.append(f"bits {self.bits} must be from 1 to {quantized.MAX_BITS}")
        if self.keep is not None and not 0.0 < self.keep <= 1.0:
            out.append(f"keep {self.keep} is outside (0, 1]; 0.5 keeps the larger half of each matrix's non-zero entries")
        return out

    @property
    def quantized_options(self) -> dict[str, Any]:
        """Options of the `quantized` encoder for this target."""
        return {"bits": self.bits, "keep": 1.0 if self.keep is None else self.keep}


@dataclass(frozen=True)
class Survey:
    """What one tensor would cost in each encoding."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    nnz: int | None = None  # None: not measured, the tensor can only stay dense
    packed: dict[str, tuple[tuple[int, ...], torch.dtype]] | None = None  # stored shapes of the `packed` encoding, by role
    energies: torch.Tensor | None = None
    quantized: dict[str, tuple[tuple[int, ...], torch.dtype]] | None = None  # stored shapes of `quantized`, when asked for
    norm: float | None = None  # ‖Δ‖, where the survey decoded the tensor
    encoded: Encoded | None = None  # the `packed` encoding itself, kept while they fit in KEEP_ENCODED_BYTES

    @property
    def dense_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize if self.shape else self.dtype.itemsize

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) >= 2


@dataclass(frozen=True)
class Plan:
    """The encoding chosen for one tensor and the payload it will store."""

    name: str
    encoding: str
    options: dict[str, Any] = field(default_factory=dict)
    stored: dict[str, tuple[tuple[int, ...], torch.dtype]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(math.prod(s) * d.itemsize for s, d in self.stored.values())


@dataclass(frozen=True)
class CompressResult:
    """What `compress` wrote."""

    path: Path
    manifest: Manifest
    payload_bytes: int
    dense_bytes: int

    @property
    def ratio(self) -> float:
        """Payload bytes over the dense bf16/fp32 size of the same tensors."""
        return self.payload_bytes / self.dense_bytes if self.dense_bytes else 1.0


def compress(
    vector: Vector,
    out: str | Path,
    *,
    method: str = "auto",
    rank: int | None = None,
    energy: float | None = None,
    budget: int | str | None = None,
    factor_dtype: torch.dtype | str = torch.bfloat16,
    bits: int | None = None,
    keep: float | None = None,
    device: str | None = None,
    probe_base: str | Path | None = None,
    name: str | None = None,
    force: bool = False,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    quiet: bool = False,
) -> CompressResult:
    """Write a compressed copy of a vector, recording per tensor the encoding, rank or density and error.

    Args:
        vector: the opened input vector, in any encoding.
        out: the vector directory to create.
        method: `auto`, `sparse`, `lowrank`, `quantized` or `dense` (see `Target`).
        rank: low-rank factors of this rank for every matrix (smaller matrices keep a lossless encoding).
        energy: per matrix, the smallest rank that keeps this share of the squared singular values.
        budget: total payload bytes (`200MB`), spent greedily where it captures the most energy.
        factor_dtype: dtype of the low-rank factors.
        bits: with method `quantized`, bits per kept value (1 to 8).
        keep: with method `quantized`, the share of each matrix's non-zero entries kept (default 1.0).
        device: where SVDs run, `cpu` or `cuda` (default: cuda when available).
        probe_base: a base model (directory or Hub id) to measure next-token KL against the input vector.
        name: vector name (default: the input's).
        force: replace `out` if it exists.

    Returns:
        The result, with payload bytes and the ratio to dense.

    Example:
        >>> compress(Vector.open("vec"), "vec-r64", rank=64)
        >>> compress(Vector.open("vec"), "vec-lossless")  # packed where it pays, bit-exact
        >>> compress(Vector.open("vec"), "vec-q2", method="quantized", bits=2)
    """
    if isinstance(factor_dtype, str):
        factor_dtype = dtype_from_name(factor_dtype)
    target = Target(method, rank, energy, parse_size(budget) if budget is not None else None, factor_dtype, bits, keep)
    problems = target.problems()
    if problems:
        raise UsageError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""), problems=problems)
    device = str(resolve_device(device))
    surveys = _survey(vector, target, device, quiet)
    plans = make_plans(surveys, target)
    out = Path(out)
    with atomic_directory(out, force=force, inputs=[vector.path, probe_base if probe_base is not None and Path(probe_base).exists() else None]) as tmp:
        expected = [(key, shape, dtype) for p in plans.values() for key, (shape, dtype) in p.stored.items()]
        writer = ShardWriter(tmp, "vector", max_shard_bytes, PAYLOAD_METADATA, expected)
        entries = []
        with progress(sum(s.dense_bytes for s in surveys.values()), "compress", quiet=quiet) as bar:
            for entry in vector.manifest.tensors:
                entries.append(_write_tensor(vector, entry, plans.get(entry.name), surveys.get(entry.name), writer, target, device))
                bar.update(surveys[entry.name].dense_bytes if entry.name in surveys else 0)
        shards = writer.finish()
        fields = vector.manifest.model_dump(exclude={"files", "tensors", "compression", "probe"})
        fields.update(name=name or vector.manifest.name, rvec_version=__version__, tensors=entries)
        fields["compression"] = _summary(entries, target, vector, sum(p.nbytes for p in plans.values()))
        _plot(tmp, entries)
        manifest = finalize_vector(tmp, fields, [p for p, _ in shards])
        if probe_base is not None:
            from .io.checkpoint import open_checkpoint
            from .probe import probe

            compressed = Vector.open(tmp, verify=False)
            fields["probe"] = probe(open_checkpoint(probe_base), vector, compressed, device=device).to_dict()
            compressed.close()
            manifest = finalize_vector(tmp, fields, [p for p, _ in shards])
    payload = sum(f.size for f in manifest.files if f.path.endswith(".safetensors"))
    return CompressResult(out, manifest, payload, manifest.compression["dense_bytes"])


def _survey(vector: Vector, target: Target, device: str, quiet: bool) -> dict[str, Survey]:
    """Measure what each encoding would cost, decoding a tensor only when a number needs it."""
    want_spectrum = target.energy is not None or target.budget is not None
    changed = [e for e in vector.manifest.tensors if e.encoding != "zero"]

    def measure(entry: TensorEntry) -> Survey:
        shape, dtype = tuple(entry.shape), _TORCH_DTYPES[entry.dtype]
        matrix = len(shape) >= 2
        # A fixed-rank low-rank run needs packed sizes only where factors would not pay.
        factored = target.method == "lowrank" and target.rank is not None and matrix and _factors_pay(shape, dtype, target)
        encode = target.method != "dense" and not factored
        if not encode and not (want_spectrum and matrix):
            return Survey(entry.name, shape, dtype)
        delta = vector.decode(entry.name)
        norm = _check_finite(entry.name, delta)
        encoded = packed.CODEC.encode(delta, dtype=dtype) if encode else None
        nnz, stored = _packed_size(encoded) if encoded is not None else (None, None)
        energies = lowrank.spectrum(delta, device=device) if want_spectrum and matrix else None
        coded = _quantized_size(delta, target) if target.method == "quantized" and matrix else None
        return Survey(entry.name, shape, dtype, nnz, stored, energies, quantized=coded, norm=norm, encoded=encoded)

    # Packed encoding is numpy and zstd, which release the GIL: one tensor per core, as many as fit in
    # SURVEY_BYTES of float32 deltas. Spectra and quantized codes use torch's own threads, so a run that
    # needs them measures one tensor at a time.
    largest = max((math.prod(e.shape) * 4 for e in changed), default=1)
    workers = min(os.cpu_count() or 1, SURVEY_WORKERS, max(1, SURVEY_BYTES // max(1, largest)))
    if want_spectrum or target.method == "quantized" or device != "cpu":
        workers = 1
    out, kept = {}, 0
    one_thread_each = streaming_threads() if workers > 1 else contextlib.nullcontext()  # nested settings would race
    with progress(len(changed), "survey", quiet=quiet, unit="tensor") as bar, one_thread_each:
        for survey in ordered_map(measure, changed, workers):
            # Kept, the write pass need not encode the tensor again; beyond the cap memory would grow with the model.
            encoded = survey.encoded
            keep = encoded is not None and kept + encoded.nbytes <= KEEP_ENCODED_BYTES
            kept += encoded.nbytes if keep else 0
            out[survey.name] = survey if keep or encoded is None else dataclasses.replace(survey, encoded=None)
            bar.update(1)
    return out


def _packed_size(encoded: Encoded) -> tuple[int, dict[str, tuple[tuple[int, ...], torch.dtype]]]:
    """Non-zeros and stored shapes of a tensor's `packed` encoding."""
    nnz = int(encoded.stored["index"][:, 1].sum())
    return nnz, {role: (tuple(t.shape), t.dtype) for role, t in encoded.stored.items()}


def _quantized_size(delta: torch.Tensor, target: Target) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Stored shapes of the `quantized` encoding, found by encoding (the write pass encodes again, identically)."""
    encoded = quantized.CODEC.encode(delta, **target.quantized_options)
    return {role: (tuple(t.shape), t.dtype) for role, t in encoded.stored.items()}


def _factors_pay(shape: tuple[int, ...], dtype: torch.dtype, target: Target) -> bool:
    out, inp = lowrank.as_matrix(shape)
    dense = math.prod(shape) * dtype.itemsize
    return target.rank <= min(out, inp) and lowrank.factor_bytes(shape, target.rank, target.factor_dtype) < dense


def make_plans(surveys: dict[str, Survey], target: Target) -> dict[str, Plan]:
    """The encoding of every changed tensor under `target`, with exact payload shapes.

    Raises:
        UsageError: a rank larger than every matrix, or a budget too small for rank 1.
    """
    ranks = _target_ranks(surveys, target)
    plans = {}
    for s in surveys.values():
        lossless = _lossless_plan(s, target.method)
        if target.method == "quantized":
            coded = Plan(s.name, "quantized", target.quantized_options, {f"{s.name}.{role}": v for role, v in s.quantized.items()}) if s.quantized else None
            plans[s.name] = coded if coded is not None and coded.nbytes < lossless.nbytes else lossless
            continue
        r = ranks.get(s.name)  # None: no low-rank target; 0: the budget affords the lossless encoding
        low = _lowrank_plan(s, r, target.factor_dtype) if r else None
        if low is None:
            plans[s.name] = lossless
        elif target.method == "lowrank":
            plans[s.name] = low
        else:  # auto: the smaller of the two
            plans[s.name] = low if low.nbytes < lossless.nbytes else lossless
    return plans


def _lossless_plan(s: Survey, method: str) -> Plan:
    dense = Plan(s.name, "dense", {}, {s.name: (s.shape, s.dtype)})
    if method == "dense" or s.packed is None:
        return dense
    plan = Plan(s.name, "packed", {}, {f"{s.name}.{role}": stored for role, stored in s.packed.items()})
    if method != "sparse" and plan.nbytes >= s.dense_bytes:
        return dense
    return plan


def _lowrank_plan(s: Survey, rank: int, dtype: torch.dtype) -> Plan | None:
    out, inp = lowrank.as_matrix(s.shape)
    if not out or rank > min(out, inp) or lowrank.factor_bytes(s.shape, rank, dtype) >= s.dense_bytes:
        return None
    return Plan(s.name, "lowrank", {"rank": rank}, {f"{s.name}.A": ((rank, inp), dtype), f"{s.name}.B": ((out, rank), dtype)})


def _max_useful_rank(shape: tuple[int, ...], dtype: torch.dtype, dense_bytes: int) -> int:
    out, inp = lowrank.as_matrix(shape)
    per = (out + inp) * dtype.itemsize
    return max(0, min(min(out, inp), (dense_bytes - 1) // per))


def _target_ranks(surveys: dict[str, Survey], target: Target) -> dict[str, int]:
    matrices = [s for s in surveys.values() if s.is_matrix]
    if target.rank is not None:
        largest = max((min(lowrank.as_matrix(s.shape)) for s in matrices), default=0)
        if target.rank > largest:
            raise UsageError(f"rank {target.rank} is larger than every matrix in the vector (the largest allows {largest}); choose --rank ≤ {largest}")
        return {s.name: target.rank for s in matrices}
    if target.energy is not None:
        ranks = {}
        for s in matrices:
            cumulative = torch.cumsum(s.energies, 0)
            total = float(cumulative[-1])
            ranks[s.name] = int(torch.searchsorted(cumulative, target.energy * total * (1 - 1e-12)).item()) + 1 if total else 1
            ranks[s.name] = min(ranks[s.name], s.energies.numel())
        return ranks
    if target.budget is not None:
        return _budget_ranks(surveys, matrices, target)
    return {}


def _budget_ranks(surveys: dict[str, Survey], matrices: list[Survey], target: Target) -> dict[str, int]:
    dtype = target.factor_dtype
    candidates = {}
    for s in matrices:
        top = _max_useful_rank(s.shape, dtype, _lossless_plan(s, "auto").nbytes)
        if top >= 1:
            out, inp = lowrank.as_matrix(s.shape)
            candidates[s.name] = RankCandidate((out + inp) * dtype.itemsize, s.energies, top)
    # Tensors that stay lossless (vectors, matrices too small to factor) are paid for first.
    fixed = sum(_lossless_plan(s, "auto").nbytes for s in surveys.values() if s.name not in candidates)
    reserve = _HEADER_BASE + sum(_HEADER_PER_KEY + len(n) for n in surveys) * 3
    available = target.budget - fixed - reserve
    try:
        ranks = allocate_ranks(candidates, available)
    except UsageError:
        need = minimum_bytes(candidates) + fixed + reserve
        raise UsageError(
            f"budget {target.budget:,} bytes is too small for even rank 1 on every matrix ({len(candidates)} matrices); "
            f"this vector needs at least {need:,} bytes"
        ) from None
    if target.method != "auto":
        return ranks
    return _upgrade_to_lossless(ranks, candidates, {s.name: s for s in matrices}, available)


def _upgrade_to_lossless(ranks: dict[str, int], candidates: dict[str, RankCandidate], surveys: dict[str, Survey], available: int) -> dict[str, int]:
    """Spend what the factors left over on storing whole matrices losslessly (rank 0), best error per byte first."""
    left = available - sum(candidates[n].bytes_per_rank * r for n, r in ranks.items())
    options = []
    for name, r in ranks.items():
        c = candidates[name]
        extra = _lossless_plan(surveys[name], "auto").nbytes - c.bytes_per_rank * r
        residual = float(c.energies[r:].sum())
        options.append((residual / max(extra, 1), extra, name))
    for _, extra, name in sorted(options, reverse=True):
        if extra <= left:
            left -= extra
            ranks[name] = 0
    return ranks


def _write_tensor(
    vector: Vector, entry: TensorEntry, plan: Plan | None, survey: Survey | None, writer: ShardWriter, target: Target, device: str
) -> TensorEntry:
    if plan is None:
        return TensorEntry(name=entry.name, shape=entry.shape, dtype=entry.dtype, encoding="zero")
    if plan.encoding == "packed" and not plan.options and survey.encoded is not None:
        encoded, norm = survey.encoded, survey.norm
    else:
        delta = vector.decode(entry.name)
        norm = _check_finite(entry.name, delta)
        codec = ENCODINGS[plan.encoding]
        encoded = codec.encode(delta, dtype=survey.dtype if plan.encoding != "lowrank" else target.factor_dtype, device=device, **plan.options)
        del delta
    keys = {}
    for role, tensor in encoded.stored.items():
        key = entry.name if plan.encoding == "dense" else f"{entry.name}.{role}"
        shape, dtype = plan.stored[key]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise AssertionError(f"{key}: planned {shape} {dtype}, encoded {tuple(tensor.shape)} {tensor.dtype}")
        writer.add(key, tensor)
        keys[role] = key
    stats = {"norm": norm, **encoded.stats}
    stats.setdefault("energy", 1.0 - stats.get("rel_error", 0.0) ** 2)
    if survey.nnz is not None:
        stats.setdefault("density", survey.nnz / max(1, math.prod(entry.shape) if entry.shape else 1))
    return TensorEntry(name=entry.name, shape=entry.shape, dtype=entry.dtype, encoding=plan.encoding, keys=keys, params=dict(encoded.params), stats=stats)


def _check_finite(name: str, delta: torch.Tensor) -> float:
    """The delta's norm, which the manifest records anyway; a finite one proves every element finite in the same pass."""
    norm = torch.linalg.vector_norm(delta).item()
    if not math.isfinite(norm) and not bool(torch.isfinite(delta).all()):
        raise FormatError(f"the vector's delta for {name} holds NaN or Inf; the vector is corrupt: run `rvec check VEC`, then fetch or extract it again")
    return norm


def _summary(entries: list[TensorEntry], target: Target, source: Vector, payload_bytes: int) -> dict[str, Any]:
    dense_bytes = sum((math.prod(e.shape) if e.shape else 1) * _TORCH_DTYPES[e.dtype].itemsize for e in entries)
    norm_sq = sum(e.stats.get("norm", 0.0) ** 2 for e in entries)
    err_sq = sum((e.stats.get("rel_error", 0.0) * e.stats.get("norm", 0.0)) ** 2 for e in entries)
    matrices = [e for e in entries if e.encoding == "lowrank"]
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.encoding] = counts.get(e.encoding, 0) + 1
    summary: dict[str, Any] = {
        "method": target.method,
        "rank": target.rank,
        "energy_target": target.energy,
        "budget_bytes": target.budget,
        "factor_dtype": dtype_name(target.factor_dtype) if matrices else None,
        "bits": target.bits,
        "keep": target.keep if target.bits is not None else None,
        "payload_bytes": payload_bytes,
        "dense_bytes": dense_bytes,
        "ratio_to_dense": payload_bytes / dense_bytes if dense_bytes else 1.0,
        "rel_error": math.sqrt(err_sq / norm_sq) if norm_sq else 0.0,
        "energy": 1.0 - err_sq / norm_sq if norm_sq else 1.0,
        "lossless": all(e.stats.get("rel_error", 0.0) == 0.0 for e in entries),
        "mean_rank": sum(e.params["rank"] for e in matrices) / len(matrices) if matrices else None,
        "source": f"{source.manifest.name} ({source.payload_bytes:,} bytes)",
        "encodings": counts,
    }
    return {k: v for k, v in summary.items() if v is not None}


def _plot(directory: Path, entries: list[TensorEntry]) -> None:
    """The per-layer plot under assets/, when matplotlib is installed (the `plot` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    from .plots import write_compression_plot

    write_compression_plot(entries, Path(directory) / EXTRA_FILES_DIR / "compression.png")
