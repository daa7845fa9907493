"""`rvec export peft`: a vector as a PEFT LoRA adapter, with what LoRA cannot carry reported, never smuggled in.

Each 2-D linear delta Δ (out × in) becomes B·A by truncated SVD: A = √S·Vᵀ (r × in), B = U·√S (out × r),
with `lora_alpha` = r so PEFT's scale alpha/r is 1. Biases, norms, embeddings and the output head cannot be
LoRA deltas in vLLM; they are listed with their share of the vector's norm and left out. Writing them as full
weights (`modules_to_save`) would replace the base's weights instead of adding a delta.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from .defaults import LORA_RANK
from .errors import UsageError
from .io.atomic import atomic_directory
from .vector import Vector

# Layers LoRA adds to; the rest (embed_tokens, lm_head, norms, biases) is reported as dropped.
LINEAR_SUFFIXES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Above this many elements the SVD is randomised (torch.svd_lowrank) instead of exact.
EXACT_SVD_ELEMENTS = 4096 * 4096


@dataclass(frozen=True)
class PeftExport:
    """What an export wrote and what it left out.

    Attributes:
        path: the adapter directory.
        ranks: rank written per module.
        dropped: tensor name → its share of the vector's norm, for every tensor LoRA cannot express.
        dropped_share: share of the scaled vector's norm left out (√(Σ‖Δ‖² dropped / Σ‖Δ‖²)).
        truncation_share: share of the linear deltas' norm lost by keeping only r singular values.
        carried_share: 1 − ‖Δ − Δ_LoRA‖ / ‖Δ‖ over the whole vector.
    """

    path: Path
    ranks: dict[str, int]
    dropped: dict[str, float] = field(default_factory=dict)
    dropped_share: float = 0.0
    truncation_share: float = 0.0
    carried_share: float = 1.0


def lora_module(name: str) -> str | None:
    """The module a tensor's delta can be a LoRA of (`...q_proj.weight` → `...q_proj`), or None."""
    if not name.endswith(".weight"):
        return None
    module = name[: -len(".weight")]
    return module if module.rsplit(".", 1)[-1] in LINEAR_SUFFIXES else None


def low_rank(delta: torch.Tensor, rank: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors (A, B) with B @ A the best rank-`rank` approximation of `delta` (exact SVD for small matrices)."""
    rank = min(rank, *delta.shape)
    if delta.numel() <= EXACT_SVD_ELEMENTS:
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    else:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        u, s, v = torch.svd_lowrank(delta, q=min(rank + 8, *delta.shape), niter=4)
        torch.random.set_rng_state(generator_state)
        u, s, vh = u[:, :rank], s[:rank], v[:, :rank].T
    root = s.sqrt()
    return (root[:, None] * vh).contiguous(), (u * root[None, :]).contiguous()


def export_peft(
    vector: Vector,
    out: str | Path,
    *,
    rank: int = LORA_RANK,
    alpha: float = 1.0,
    base_model: str | None = None,
    dtype: torch.dtype = torch.float32,
    force: bool = False,
) -> PeftExport:
    """Write `alpha`·vector as a PEFT LoRA adapter that `PeftModel.from_pretrained` and vLLM `--enable-lora` load.

    Args:
        vector: the opened vector.
        out: adapter directory (created atomically).
        rank: the largest rank per module; smaller matrices, or deltas of lower rank, get less (`rank_pattern`).
        alpha: scale folded into the factors.
        base_model: recorded as `base_model_name_or_path` (default: the manifest's suggested base).
        dtype: dtype of the stored factors.

    Returns:
        The export, with the share of the vector's norm it could not carry.

    Example:
        >>> export_peft(Vector.open("vec"), "vec-lora", rank=32).dropped_share
    """
    if rank < 1:
        raise UsageError(f"--rank must be at least 1, got {rank}")
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    dropped_sq: dict[str, float] = {}
    total_sq = linear_sq = trunc_sq = 0.0
    for name, entry in vector.entries.items():
        if entry.encoding == "zero":
            continue
        delta = vector.decode(name) * alpha
        norm_sq = torch.linalg.vector_norm(delta).item() ** 2
        total_sq += norm_sq
        module = lora_module(name)
        if module is None or delta.ndim != 2:
            dropped_sq[name] = norm_sq
            continue
        if norm_sq == 0.0:
            continue
        a, b = low_rank(delta, rank)
        keep = int((a.norm(dim=1) > 0).sum()) or 1  # exact zeros in the spectrum need no rank
        a, b = a[:keep], b[:, :keep]
        linear_sq += norm_sq
        trunc_sq += torch.linalg.vector_norm(delta - b @ a).item() ** 2
        ranks[module] = keep
        tensors[f"base_model.model.{module}.lora_A.weight"] = a.to(dtype)
        tensors[f"base_model.model.{module}.lora_B.weight"] = b.to(dtype)
        del delta
    if not tensors:
        raise UsageError(f"{vector.path} changes no linear layer, so there is nothing a LoRA adapter can carry")
    config = _adapter_config(ranks, base_model or vector.manifest.base.model_id)
    with atomic_directory(Path(out), force=force) as tmp:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    total = total_sq or 1.0
    lost_sq = sum(dropped_sq.values()) + trunc_sq
    return PeftExport(
        Path(out), ranks,
        dropped={n: math.sqrt(v / total) for n, v in sorted(dropped_sq.items(), key=lambda kv: -kv[1])},
        dropped_share=math.sqrt(sum(dropped_sq.values()) / total),
        truncation_share=math.sqrt(trunc_sq / linear_sq) if linear_sq else 0.0,
        carried_share=max(0.0, 1.0 - math.sqrt(lost_sq / total)),
    )


def _adapter_config(ranks: dict[str, int], base_model: str | None) -> dict:
    """PEFT's LoraConfig as JSON: r = the most common rank, exceptions in rank_pattern, alpha = rank."""
    counts: dict[int, int] = {}
    for r in ranks.values():
        counts[r] = counts.get(r, 0) + 1
    r = max(counts, key=lambda k: (counts[k], k))
    rank_pattern = {m: k for m, k in ranks.items() if k != r}
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": r,
        "rank_pattern": rank_pattern,
        # Scale alpha/r must be 1 for every module, so each exception's alpha equals its rank.
        "alpha_pattern": dict(rank_pattern),
        "target_modules": sorted({m.rsplit(".", 1)[-1] for m in ranks}),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }


def adapter_deltas(adapter: str | Path) -> dict[str, torch.Tensor]:
    """The weight deltas an adapter adds: `<module>.weight` → (alpha/r)·B·A, in float32."""
    from safetensors.torch import load_file

    adapter = Path(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    out = {}
    for key, a in weights.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        b = weights[key.replace(".lora_A.", ".lora_B.")]
        r = a.shape[0]
        alpha = config.get("alpha_pattern", {}).get(module, config["lora_alpha"] if r == config["r"] else r)
        out[f"{module}.weight"] = (b.float() @ a.float()) * (alpha / r)
    return out
