"""Compatibility of a vector with a base model: every mismatch, and what the output dtype keeps."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .alpha import check_alpha
from .arith import Survival, add_rows, row_chunks
from .errors import CompatibilityError, FormatError, IntegrityError, RvecError
from .io.checkpoint import Checkpoint
from .manifest import config_signature, fingerprint, load_manifest, touched_shapes
from .progress import progress
from .tied import missing_tensor_problem
from .vector import Vector, refuse_unknown_encodings, verify_files

DTYPE_NAMES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def dtype_from_name(name: str | None) -> torch.dtype | None:
    """torch dtype for `fp32`/`bf16`/`fp16` (and their long names); None stays None."""
    if name is None:
        return None
    from .errors import UsageError

    if name not in DTYPE_NAMES:
        raise UsageError(f"unknown dtype {name!r}; use fp32, bf16 or fp16")
    return DTYPE_NAMES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """Short name of a dtype, as manifests and reports write it."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class CompatReport:
    """The outcome of checking one vector against one base."""

    vector: str
    base: str
    problems: list[str]
    fingerprint_match: bool
    touched: int
    retained: float | None = None
    out_dtype: str | None = None
    alpha: float | None = None
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the vector applies to the base."""
        return not self.problems

    def to_dict(self) -> dict:
        """JSON-ready form, with `ok`."""
        return {"ok": self.ok, **asdict(self)}

    def raise_if_incompatible(self) -> None:
        """Raise CompatibilityError carrying every problem when there are any."""
        if self.problems:
            head = self.details.get("headline") or self.problems[0]
            raise CompatibilityError(
                f"{head} ({len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}); "
                f"run `rvec check {self.vector} --base {self.base}` for the full report",
                problems=self.problems,
            )


def _describe(config: dict) -> str:
    arch = (config.get("architectures") or ["unknown architecture"])[0]
    return f"{arch} (hidden {config.get('hidden_size')}, {config.get('num_hidden_layers')} layers, vocab {config.get('vocab_size')})"


def compatibility(vector: Vector, base: Checkpoint, *, vector_ref: str | None = None) -> CompatReport:
    """Compare a vector's recorded base with a checkpoint's config and tensor shapes (no weights read).

    Args:
        vector: the opened vector.
        base: the opened base checkpoint.
        vector_ref: how the user named the vector, for messages.

    Returns:
        A report listing every problem; empty problems means compatible.
    """
    spec = vector.manifest.base
    problems = []
    base_sig = config_signature(base.config)
    arch = (base_sig["architectures"] or [None])[0]
    if arch != spec.architecture:
        problems.append(f"architecture: vector {spec.architecture}, base {arch}")
    for key, want in spec.config.items():
        if key != "architectures" and base_sig.get(key) != want:
            problems.append(f"config {key}: vector {want}, base {base_sig.get(key)}")
    shapes = touched_shapes(vector.manifest)
    base_shapes = {}
    for name, shape in shapes.items():
        info = base.tensors.get(name)
        if info is None:
            problems.append(missing_tensor_problem(name, base.tensors))
            continue
        base_shapes[name] = info.shape
        if tuple(info.shape) != tuple(shape):
            problems.append(f"tensor {name}: vector shape {list(shape)}, base shape {list(info.shape)}")
    match = fingerprint(base_sig, base_shapes) == spec.fingerprint
    if not match and not problems:
        problems.append(f"fingerprint: vector {spec.fingerprint[:19]}…, base {fingerprint(base_sig, base_shapes)[:19]}…")
    vref = vector_ref or str(vector.path)
    headline = None
    if problems:
        vec_desc = _describe({**spec.config, "architectures": [spec.architecture]})
        headline = f"vector {vref} was extracted for {vec_desc} but base {base.source} is {_describe(base.config)}"
    return CompatReport(vref, base.source, problems, match, len(shapes), details={"headline": headline} if headline else {})


def measure_survival(
    vector: Vector, base: Checkpoint, *, alpha: float, out_dtype: torch.dtype, quiet: bool = True
) -> Survival:
    """Stream base and vector once and measure the share of α·Δ that survives a cast to `out_dtype`."""
    survival = Survival()
    names = [n for n, e in vector.entries.items() if e.encoding != "zero"]
    total = sum(base.tensors[n].nbytes for n in names)
    with progress(total, "check", quiet=quiet) as bar:
        for name in names:
            info = base.tensors[name]
            for start, stop in row_chunks(info.shape):
                rows = base.read_rows(name, start, stop) if info.shape else base.read_rows(name)
                add_rows(rows, [(vector.decode_rows(name, start, stop), alpha)], out_dtype, [survival], name=name)
            bar.update(info.nbytes)
    return survival


def check(
    vector: Vector,
    base: Checkpoint,
    *,
    alpha: float | None = None,
    out_dtype: torch.dtype | None = None,
    precision: bool = True,
    vector_ref: str | None = None,
    quiet: bool = True,
) -> CompatReport:
    """The full report `rvec check` prints: every mismatch, then the share of the vector that survives.

    Args:
        vector: the opened vector.
        base: the opened base checkpoint.
        alpha: scale (defaults to the manifest's `default_alpha`).
        out_dtype: dtype the merged weights would be stored in (defaults to the base's).
        precision: also stream the weights and measure what the cast keeps.

    Example:
        >>> report = check(Vector.open("vec"), open_checkpoint("Qwen/Qwen2.5-1.5B-Instruct"))
        >>> report.ok, report.retained
    """
    report = compatibility(vector, base, vector_ref=vector_ref)
    if not report.ok or not precision:
        return report
    alpha = vector.manifest.default_alpha if alpha is None else check_alpha(alpha)
    out_dtype = out_dtype or base.dtype
    survival = measure_survival(vector, base, alpha=alpha, out_dtype=out_dtype, quiet=quiet)
    return CompatReport(
        report.vector, report.base, [], report.fingerprint_match, report.touched,
        retained=survival.retained, out_dtype=dtype_name(out_dtype), alpha=alpha,
    )


@dataclass(frozen=True)
class VectorReport:
    """The outcome of verifying a vector on its own: checksums, structure, and every value."""

    vector: str
    problems: list[str]
    tensors: int
    payload_bytes: int

    @property
    def ok(self) -> bool:
        """True when the vector is intact and every value is finite."""
        return not self.problems

    def to_dict(self) -> dict:
        """JSON-ready form, with `ok`."""
        return {"ok": self.ok, **asdict(self)}


def verify_vector(path: str | Path, *, vector_ref: str | None = None, quiet: bool = True) -> VectorReport:
    """Verify a vector directory without a base: every checksum, every stored shape, every value.

    Problems are collected rather than raised, so one report lists all of them: files whose size or
    sha256 differ, stored tensors that break their manifest entry or encoding, and tensors whose decoded
    values are corrupt (a sparse index out of range, a count that disagrees) or hold NaN or Inf.

    Args:
        path: the vector directory.
        vector_ref: how the user named the vector, for messages.

    Returns:
        The report; empty problems means the vector is sound.

    Raises:
        FormatError: the manifest itself cannot be read (the report would have nothing to go on).

    Example:
        >>> verify_vector("vec").ok
        True
    """
    path = Path(path)
    manifest = load_manifest(path)
    refuse_unknown_encodings(path, manifest)
    ref = vector_ref or str(path)
    problems: list[str] = []
    try:
        verify_files(path, manifest, rehash=True)
    except IntegrityError as exc:
        problems += exc.problems
    vector = Vector(path, manifest)
    try:
        vector._index_payload()
        structure = vector.structure_problems()
        problems += structure
        if not structure:
            problems += _value_problems(vector, quiet)
    except RvecError as exc:
        problems.append(str(exc))
    finally:
        vector.close()
    return VectorReport(ref, problems, len(manifest.tensors), vector.payload_bytes)


def _value_problems(vector: Vector, quiet: bool) -> list[str]:
    """Decode every tensor a chunk of rows at a time: encoding errors and non-finite values, one line per tensor."""
    problems = []
    entries = [e for e in vector.manifest.tensors if e.encoding != "zero"]
    with progress(len(entries), "check", quiet=quiet, unit="tensor") as bar:
        for entry in entries:
            bad = 0
            try:
                for start, stop in row_chunks(tuple(entry.shape)):
                    rows = vector.decode_rows(entry.name, start, stop)
                    if not math.isfinite(torch.linalg.vector_norm(rows).item()):
                        bad += int((~torch.isfinite(rows)).sum())
            except FormatError as exc:
                problems.append(str(exc))
            if bad:
                problems.append(f"tensor {entry.name}: {bad} NaN or Inf value{'s' if bad > 1 else ''}")
            bar.update(1)
    return problems
