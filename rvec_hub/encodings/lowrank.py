"""`lowrank`: a matrix delta as SVD factors, Δ ≈ B·A with B (out×r) and A (r×in).

The factors come from a randomized SVD in float32 (Halko et al.: a Gaussian sketch with oversampling,
power iterations re-orthonormalised by QR), or from an exact SVD when the sketch would be most of the
matrix anyway. √σ goes into each factor so both stay in the same range when stored in bf16. Rows decode
as B[rows]·A, so apply and the serving loader stream them like dense rows. Bf16 factors multiply in bf16
with float32 sums, rounded once to bf16: 2⁻⁹ of the delta, far below what truncating the rank costs.
Where the CPU has AMX's bf16 tiles (ranks in thirty-twos) or, without AMX, AVX512-BF16 (even ranks),
adding bf16 factors is one pass (`fused.add_lowrank`): the product's float32 sums, rounded and added as they
come, the same bits as the product added by the dense kernel, without storing the product.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .. import fused
from ..arith import CHUNK_ELEMENTS, row_chunks
from ..errors import UsageError
from ..manifest import TensorEntry
from .base import FLOAT_DTYPES, Codec, Encoded, Payload, expect_keys, expect_stored

# Sketch columns beyond the rank: max(OVERSAMPLE, rank // 2). With three power iterations this keeps the
# error within 1 % of the truncated exact SVD even on flat (noise-like) spectra, the hard case RL deltas are.
OVERSAMPLE = 10
POWER_ITERATIONS = 3


def as_matrix(shape: tuple[int, ...]) -> tuple[int, int]:
    """(out, in) of the matrix a tensor is factored as; None-like (0, 0) for vectors."""
    if len(shape) < 2:
        return 0, 0
    return shape[0], math.prod(shape[1:])


def factor_bytes(shape: tuple[int, ...], rank: int, dtype: torch.dtype) -> int:
    """Payload bytes of rank-`rank` factors of a tensor of this shape."""
    out, inp = as_matrix(shape)
    return rank * (out + inp) * torch.empty((), dtype=dtype).element_size()


def spectrum(delta: torch.Tensor, *, device: str | torch.device = "cpu") -> torch.Tensor:
    """Squared singular values of a matrix delta, largest first (float64, on the CPU).

    Computed as the eigenvalues of the Gram matrix of the shorter side, which costs one matmul.
    """
    m = delta.reshape(delta.shape[0], -1).to(device, torch.float32)
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    with _lapack_threads(gram):
        return torch.linalg.eigvalsh(gram.double()).cpu().clamp_min(0).flip(0)


@contextmanager
def _lapack_threads(tensor: torch.Tensor) -> Iterator[None]:
    """One CPU thread for LAPACK calls on small matrices.

    Their OpenMP fork/join costs far more than their work, tens of times more on a busy machine;
    the large matmuls around them keep every thread.
    """
    if tensor.device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def svd_factors(
    matrix: torch.Tensor, rank: int, *, oversample: int | None = None, niter: int = POWER_ITERATIONS, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-`rank` (U, S, Vh) of a float32 matrix, randomized unless an exact SVD is as cheap.

    The randomized path runs its power iterations on the shorter side, Z ← orth(Mᵀ·M·Z) with Z (n × q),
    and orthonormalises the tall (m × q) product only once, Q = orth(M·Z), before the small SVD of QᵀM.
    That spans the same subspace as the textbook scheme (Halko et al., algorithm 4.4) with one tall QR
    instead of 2·niter + 1.

    Args:
        matrix: (m, n) float32, on any device.
        rank: singular triplets to keep, 1 ≤ rank ≤ min(m, n).
        oversample: extra sketch columns beyond `rank` (default: max(OVERSAMPLE, rank // 2)).
        niter: power iterations (each sharpens a slowly decaying spectrum).
        seed: seed of the Gaussian sketch.

    Returns:
        U (m, rank), S (rank,), Vh (rank, n).
    """
    m, n = matrix.shape
    if m < n:
        u, s, vh = svd_factors(matrix.T, rank, oversample=oversample, niter=niter, seed=seed)
        return vh.T, s, u.T
    q = rank + (max(OVERSAMPLE, rank // 2) if oversample is None else oversample)
    if 2 * q >= n:
        with _lapack_threads(matrix):
            u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank]
    gen = torch.Generator(device=matrix.device).manual_seed(seed)
    sketch = torch.randn(n, q, generator=gen, device=matrix.device, dtype=matrix.dtype)
    with _lapack_threads(matrix):
        z = torch.linalg.qr(sketch).Q
    for _ in range(niter):
        product = matrix.T @ (matrix @ z)
        with _lapack_threads(matrix):
            z = torch.linalg.qr(product).Q
    tall = matrix @ z
    with _lapack_threads(matrix):
        basis = torch.linalg.qr(tall).Q  # the one tall QR: project M on its column space
    small = basis.T @ matrix
    with _lapack_threads(matrix):
        u_small, s, vh = torch.linalg.svd(small, full_matrices=False)
    return basis @ u_small[:, :rank], s[:rank], vh[:rank]


def _encode(
    delta: torch.Tensor,
    *,
    rank: int,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    oversample: int | None = None,
    niter: int = POWER_ITERATIONS,
    **_: object,
) -> Encoded:
    shape = tuple(delta.shape)
    out, inp = as_matrix(shape)
    if not out:
        raise UsageError(f"lowrank needs a matrix, got shape {list(shape)}; store vectors dense")
    if not 1 <= rank <= min(out, inp):
        raise UsageError(f"rank {rank} does not fit a {out}×{inp} matrix: choose 1 ≤ rank ≤ {min(out, inp)}")
    matrix = delta.reshape(out, inp).to(device, torch.float32)
    u, s, vh = svd_factors(matrix, rank, oversample=oversample, niter=niter)
    root = s.sqrt()
    b = (u * root).to(dtype)
    a = (root[:, None] * vh).to(dtype)
    # Error of what is stored, factors rounded included.
    err = torch.linalg.vector_norm(matrix - b.float() @ a.float()).item()
    norm = torch.linalg.vector_norm(matrix).item()
    energy = (s.double().square().sum().item() / norm**2) if norm else 1.0
    stats = {"rel_error": err / norm if norm else 0.0, "energy": min(1.0, energy)}
    return Encoded("lowrank", {"A": a.cpu(), "B": b.cpu()}, params={"rank": rank}, stats=stats)


def _product(entry: TensorEntry, payload: Payload, start: int, stop: int) -> torch.Tensor:
    return _multiply(payload.read(entry.keys["B"], start, stop), _whole_a(entry, payload)[0]).reshape((stop - start, *entry.shape[1:]))


def _multiply(b: torch.Tensor, a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """B[rows]·A: in bf16 when both factors are bf16 (a float32 sum rounded once to bf16, on AMX or
    AVX-512 bf16 units several times faster than a float32 product), in float32 otherwise; into `out` (as
    many elements, the product's dtype) when given."""
    if b.dtype != torch.bfloat16 or a.dtype != torch.bfloat16:
        b, a = b.float(), a.float()
    if out is None or out.dtype != b.dtype:
        return b @ a
    return torch.matmul(b, a, out=out.view(b.shape[0], a.shape[1]))


_local = threading.local()


def _whole_a(entry: TensorEntry, payload: Payload) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The tensor's A and, for bf16, A in pairs of ranks (rank / 2 × cols × 2), read once for the row
    chunks of a tensor one thread adds in turn: this thread keeps the last it read, with its payload (a weak
    reference) and key."""
    kept = getattr(_local, "a", None)
    if kept is not None and kept[0]() is payload and kept[1] == entry.keys["A"]:
        return kept[2], kept[3]
    a = payload.read(entry.keys["A"])
    rank = a.shape[0]
    pairs = fused.pair_ranks(a) if a.dtype == torch.bfloat16 and rank % 2 == 0 else None
    try:
        _local.a = (weakref.ref(payload), entry.keys["A"], a, pairs)
    except TypeError:  # a payload that takes no weak references reads A every time
        pass
    return a, pairs


def _decode_rows(entry: TensorEntry, payload: Payload, start: int, stop: int) -> torch.Tensor:
    return _product(entry, payload, start, stop).float()


def _add_into(entry: TensorEntry, payload: Payload, start: int, stop: int, rows: torch.Tensor, alpha: float, base: torch.Tensor | None = None) -> tuple[int, float, float]:
    key = entry.keys["B"]
    a, pairs = _whole_a(entry, payload)
    b = None
    if pairs is not None and payload.dtype(key) == torch.bfloat16:  # in one pass: the product's sums added as they come, never stored
        b = payload.read(key, start, stop)
        added = fused.add_lowrank(rows, b.contiguous(), pairs, alpha, base)
        if added is not None:
            return added
    # Elsewhere (neither unit, a rank neither takes, columns not in sixteens) a chunk at a time: its
    # product into this thread's buffer, reused from chunk to chunk (a fresh one per chunk is mapped and
    # faulted in again), then added as a dense delta.
    scratch = getattr(_local, "scratch", None)
    err_sq = norm_sq = 0.0
    for lo, hi in row_chunks(tuple(rows.shape)):
        part = b[lo:hi] if b is not None else payload.read(key, start + lo, start + hi)
        target = rows[lo:hi]
        if scratch is None or scratch.numel() < target.numel():
            scratch = _local.scratch = torch.empty(max(target.numel(), CHUNK_ELEMENTS), dtype=torch.bfloat16)
        product = _multiply(part, a, scratch[: target.numel()]).reshape(target.shape)
        status, err, norm = fused.add_dense(target, product, alpha, None if base is None else base[lo:hi])
        if status:
            return status, err, norm
        err_sq, norm_sq = err_sq + err, norm_sq + norm
    return 0, err_sq, norm_sq


def _validate(entry: TensorEntry, payload: Payload) -> list[str]:
    problems = expect_keys(entry, ("A", "B"))
    if problems:
        return problems
    out, inp = as_matrix(tuple(entry.shape))
    rank = entry.params.get("rank")
    if not out:
        return [f"tensor {entry.name}: lowrank needs a matrix, manifest shape is {list(entry.shape)}"]
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= min(out, inp):
        return [f"tensor {entry.name}: lowrank rank {rank!r} does not fit a {out}×{inp} matrix"]
    # B (out × r) · A (r × in) must give the tensor, with the rank the manifest records.
    return expect_stored(entry, payload, "B", (out, rank), FLOAT_DTYPES) + expect_stored(entry, payload, "A", (rank, inp), FLOAT_DTYPES)


CODEC = Codec("lowrank", _decode_rows, _encode, validate=_validate, add_into=_add_into, adds_from_base=True, adds_block_by_block=True)
