"""`rvec export peft`: a vector as a PEFT LoRA adapter, with what LoRA cannot carry reported, never smuggled in.

Each 2-D delta Δ (out × in) of a linear layer becomes B·A by truncated SVD: A = √S·Vᵀ (r × in),
B = U·√S (out × r), with `lora_alpha` = r so PEFT's scale alpha/r is 1. The token embedding becomes an
embedding LoRA (`lora_embedding_A` = Aᵀ-shaped (r × vocab), `lora_embedding_B` (hidden × r)), and when the
vector's model ties its output head to the embedding (no `lm_head.weight` of its own), the same factors go
on `lm_head` too, so the head changes with the embedding as it does in the merged model. Biases and norms
cannot be LoRA deltas; they are listed with their share of the vector's norm and left out. Writing them as
full weights (`modules_to_save`) would replace the base's weights instead of adding a delta.

The adapter is written the way PEFT writes one: the config by `peft.LoraConfig.save_pretrained`, the
factors as safetensors under the names `PeftModel.from_pretrained` loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from .alpha import check_alpha
from .arith import non_finite_error
from .defaults import LORA_RANK
from .errors import OutputExistsError, UsageError
from .io.atomic import atomic_directory
from .io.permissions import make_readable
from .progress import progress
from .vector import Vector

# Linear layers LoRA adds to; norms and biases are reported as dropped.
LINEAR_SUFFIXES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
EMBEDDING_SUFFIXES = ("embed_tokens",)
TIED_HEAD = "lm_head"
# Above this many elements the SVD is randomised (torch.svd_lowrank) instead of exact.
EXACT_SVD_ELEMENTS = 4096 * 4096
PEFT_PREFIX = "base_model.model."
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class PeftExport:
    """What an export wrote and what it left out.

    Attributes:
        path: the adapter directory.
        ranks: rank written per module.
        dropped: tensor name → its share of the vector's norm, for every tensor LoRA cannot express.
        dropped_share: share of the scaled vector's norm left out (√(Σ‖Δ‖² dropped / Σ‖Δ‖²)).
        truncation_share: share of the LoRA-carried deltas' norm lost by keeping only r singular values.
        carried_share: 1 − ‖Δ − Δ_LoRA‖ / ‖Δ‖ over the whole vector.
        tied_head: True when the embedding's factors were also put on the tied `lm_head`.
    """

    path: Path
    ranks: dict[str, int]
    dropped: dict[str, float] = field(default_factory=dict)
    dropped_share: float = 0.0
    truncation_share: float = 0.0
    carried_share: float = 1.0
    tied_head: bool = False


def lora_module(name: str, *, embeddings: bool = True) -> str | None:
    """The module a tensor's delta can be a LoRA of (`...q_proj.weight` → `...q_proj`), or None."""
    if not name.endswith(".weight"):
        return None
    module = name[: -len(".weight")]
    suffix = module.rsplit(".", 1)[-1]
    if suffix in EMBEDDING_SUFFIXES or suffix == TIED_HEAD:
        return module if embeddings else None
    return module if suffix in LINEAR_SUFFIXES else None


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


def peft_keys(module: str) -> tuple[str, str]:
    """The safetensors names PEFT stores a module's (A, B) factors under."""
    if module.rsplit(".", 1)[-1] in EMBEDDING_SUFFIXES:
        return f"{PEFT_PREFIX}{module}.lora_embedding_A", f"{PEFT_PREFIX}{module}.lora_embedding_B"
    return f"{PEFT_PREFIX}{module}.lora_A.weight", f"{PEFT_PREFIX}{module}.lora_B.weight"


def _store(tensors: dict[str, torch.Tensor], module: str, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    key_a, key_b = peft_keys(module)
    if module.rsplit(".", 1)[-1] in EMBEDDING_SUFFIXES:
        # PEFT's embedding LoRA computes (B_e @ A_e)ᵀ: A_e = Bᵀ (r × vocab), B_e = Aᵀ (hidden × r).
        a, b = b.T, a.T
    tensors[key_a] = a.to(dtype).contiguous()
    tensors[key_b] = b.to(dtype).contiguous()


def _tied_head(vector: Vector) -> str | None:
    """The embedding whose factors the output head shares: the vector's model has no `lm_head.weight` of its own."""
    if any(name == f"{TIED_HEAD}.weight" or name.endswith(f".{TIED_HEAD}.weight") for name in vector.entries):
        return None
    for name, entry in vector.entries.items():
        if name.endswith("embed_tokens.weight") and entry.encoding != "zero":
            return name
    return None


def export_peft(
    vector: Vector,
    out: str | Path,
    *,
    rank: int = LORA_RANK,
    alpha: float = 1.0,
    base_model: str | None = None,
    dtype: torch.dtype = torch.float32,
    embeddings: bool = True,
    vector_ref: str | None = None,
    force: bool = False,
    quiet: bool = True,
) -> PeftExport:
    """Write `alpha`·vector as a PEFT LoRA adapter that `PeftModel.from_pretrained` loads.

    Args:
        vector: the opened vector.
        out: adapter directory (created atomically, files readable by all like any model download).
        rank: the largest rank per module; smaller matrices, or deltas of lower rank, get less (`rank_pattern`).
        alpha: scale folded into the factors.
        base_model: recorded as `base_model_name_or_path` (default: the manifest's suggested base).
        dtype: dtype of the stored factors.
        embeddings: carry the token embedding (and a tied output head) as embedding LoRA; False leaves them
            out, for servers whose LoRA support covers linear layers only.
        vector_ref: the vector as the user named it, for the card (default: its name).
        quiet: no progress bar.

    Returns:
        The export, with the share of the vector's norm it could not carry.

    Example:
        >>> export_peft(Vector.open("vec"), "vec-lora", rank=32).dropped_share
    """
    from peft import LoraConfig

    from .card import adapter_card

    if rank < 1:
        raise UsageError(f"--rank must be at least 1, got {rank}")
    alpha = check_alpha(alpha, "--alpha")
    if Path(out).exists() and not force:  # before the SVDs, not after them
        raise OutputExistsError(f"{out} already exists; choose another path or pass --force to replace it")
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    dropped_sq: dict[str, float] = {}
    total_sq = carried_sq = trunc_sq = 0.0
    tied = _tied_head(vector) if embeddings else None
    names = [n for n, e in vector.entries.items() if e.encoding != "zero"]
    with progress(len(names), "export peft", quiet=quiet, unit="tensor") as bar:
        for name in names:
            delta = vector.decode(name) * alpha
            norm_sq = torch.linalg.vector_norm(delta).item() ** 2
            if not math.isfinite(norm_sq):
                raise non_finite_error(name, torch.zeros(()), [(vector.decode(name), alpha)], torch.float32)
            total_sq += norm_sq
            module = lora_module(name, embeddings=embeddings)
            bar.update(1)
            if module is None or delta.ndim != 2:
                dropped_sq[name] = norm_sq
                continue
            if norm_sq == 0.0:
                continue
            a, b = low_rank(delta, rank)
            keep = int((a.norm(dim=1) > 0).sum()) or 1  # exact zeros in the spectrum need no rank
            a, b = a[:keep], b[:, :keep]
            carried_sq += norm_sq
            trunc_sq += torch.linalg.vector_norm(delta - b @ a).item() ** 2
            ranks[module] = keep
            _store(tensors, module, a, b, dtype)
            if name == tied:
                # `model.embed_tokens` → `lm_head`, `language_model.model.embed_tokens` → `language_model.lm_head`
                head = module.removesuffix("embed_tokens").removesuffix("model.") + TIED_HEAD
                ranks[head] = keep
                _store(tensors, head, a, b, dtype)
            del delta
    if not tensors:
        raise UsageError(f"{vector.path} changes no linear layer, so there is nothing a LoRA adapter can carry")
    config = lora_config(ranks, base_model or vector.manifest.base.model_id, tied=tied is not None)
    total = total_sq or 1.0
    lost_sq = sum(dropped_sq.values()) + trunc_sq
    result_path = Path(out)
    dropped = {n: math.sqrt(v / total) for n, v in sorted(dropped_sq.items(), key=lambda kv: -kv[1])}
    with atomic_directory(result_path, force=force, inputs=[vector.path]) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        LoraConfig(**config).save_pretrained(str(tmp))
        (tmp / "README.md").write_text(adapter_card(
            vector.manifest, vector_ref=vector_ref or vector.manifest.name, alpha=alpha, base_model=config["base_model_name_or_path"],
            ranks=sorted(set(ranks.values()), reverse=True), dropped_share=math.sqrt(sum(dropped_sq.values()) / total),
        ))
        make_readable(tmp)
    return PeftExport(
        result_path, ranks,
        dropped=dropped,
        dropped_share=math.sqrt(sum(dropped_sq.values()) / total),
        truncation_share=math.sqrt(trunc_sq / carried_sq) if carried_sq else 0.0,
        carried_share=max(0.0, 1.0 - math.sqrt(lost_sq / total)),
        tied_head=tied is not None,
    )


def lora_config(ranks: dict[str, int], base_model: str | None, *, tied: bool = False) -> dict:
    """Arguments of PEFT's LoraConfig: r = the most common rank, exceptions in rank_pattern, alpha = rank.

    With `tied`, the embedding's and the head's adapters are declared tied (`ensure_weight_tying`, where the
    installed PEFT has it), as they are in the model.
    """
    import dataclasses

    from peft import LoraConfig

    from .card import hub_id_or_none

    tying = {"ensure_weight_tying": True} if tied and "ensure_weight_tying" in {f.name for f in dataclasses.fields(LoraConfig)} else {}

    counts: dict[int, int] = {}
    for r in ranks.values():
        counts[r] = counts.get(r, 0) + 1
    r = max(counts, key=lambda k: (counts[k], k))
    rank_pattern = {m: k for m, k in ranks.items() if k != r}
    return {
        "task_type": "CAUSAL_LM",
        # A local path means nothing once the adapter is shared; PEFT users pass the base model themselves.
        "base_model_name_or_path": hub_id_or_none(base_model),
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
        **tying,
    }


def adapter_deltas(adapter: str | Path) -> dict[str, torch.Tensor]:
    """The weight deltas an adapter adds: `<module>.weight` → (alpha/r)·B·A, in float32.

    Reads the adapter as `rvec import peft` does (`rvec_hub.peft_import`), so the two agree by construction.
    """
    from .peft_import import read_adapter

    return {f"{m.module}.weight": m.delta() for m in read_adapter(adapter).modules}
