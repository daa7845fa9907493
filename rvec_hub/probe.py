"""Fidelity probe: does a compressed vector change what the model says next?

Base + reference vector and base + candidate vector are compared on a fixed set of prompts (shipped in
`rvec_hub/data/probe_prompts.txt`, editable): at every position, the KL divergence of the candidate's
next-token distribution from the reference's, and whether their top-1 tokens agree. Weights are merged in
float32, so differences far below one bf16 step still show.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch

from .errors import CheckpointError
from .io.checkpoint import Checkpoint
from .vector import Vector

MAX_TOKENS = 64


@dataclass(frozen=True)
class ProbeResult:
    """Next-token agreement between base + reference and base + candidate."""

    base: str
    prompts: int
    tokens: int
    alpha: float
    kl_mean: float
    kl_max: float
    top1_agreement: float

    def to_dict(self) -> dict:
        """JSON-ready form, as the manifest records it."""
        return asdict(self)


def default_prompts() -> list[str]:
    """The prompts shipped with rvec."""
    return read_prompts(resources.files("rvec_hub").joinpath("data/probe_prompts.txt").read_text())


def read_prompts(text: str) -> list[str]:
    """Non-empty lines that are not `#` comments."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def probe(
    base: Checkpoint,
    reference: Vector,
    candidate: Vector,
    *,
    alpha: float | None = None,
    prompts: list[str] | None = None,
    device: str | torch.device = "cpu",
    max_tokens: int = MAX_TOKENS,
) -> ProbeResult:
    """Mean and max next-token KL(reference ‖ candidate) and top-1 agreement over the prompts.

    Args:
        base: the base model (its config, weights and tokenizer are loaded with transformers).
        reference: the vector the candidate approximates (usually the dense original).
        candidate: the compressed vector.
        alpha: the scale both vectors are applied at (default: the reference's default_alpha).
        prompts: texts to probe (default: `default_prompts()`).
        device: where the model runs.
        max_tokens: prompts are cut to this many tokens.

    Returns:
        The result; `kl_mean` is 0 and `top1_agreement` 1 when the vectors decode identically.

    Example:
        >>> probe(open_checkpoint("org/instruct"), Vector.open("vec"), Vector.open("vec-r64"))
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # compress has its own progress and --quiet
    alpha = reference.manifest.default_alpha if alpha is None else alpha
    prompts = prompts or default_prompts()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(base.path))
        model = AutoModelForCausalLM.from_pretrained(str(base.path), dtype=torch.float32).to(device).eval()
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load {base.source} with transformers for the probe ({exc}); --probe needs a base model with its tokenizer") from exc
    batches = [tokenizer(p, return_tensors="pt").input_ids[:, :max_tokens].to(device) for p in prompts]
    names = sorted(_touched(reference) | _touched(candidate))
    _merge(model, base, reference, alpha, names)
    ref_logprobs = [_logprobs(model, ids) for ids in batches]
    _merge(model, base, candidate, alpha, names)
    kls, agree = [], []
    for ids, ref in zip(batches, ref_logprobs):
        cand = _logprobs(model, ids)
        # KL(P_ref ‖ P_cand) per position; clamp tiny negative rounding to 0.
        kls.append((ref.exp() * (ref - cand)).sum(-1).clamp_min(0))
        agree.append(ref.argmax(-1) == cand.argmax(-1))
    kl = torch.cat(kls)
    return ProbeResult(
        base=str(base.source), prompts=len(prompts), tokens=int(kl.numel()), alpha=alpha,
        kl_mean=float(kl.mean()), kl_max=float(kl.max()), top1_agreement=float(torch.cat(agree).float().mean()),
    )


@torch.no_grad()
def _logprobs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1).cpu()


def _touched(vector: Vector) -> set[str]:
    return {name for name, entry in vector.entries.items() if entry.encoding != "zero"}


@torch.no_grad()
def _merge(model: torch.nn.Module, base: Checkpoint, vector: Vector, alpha: float, names: list[str]) -> None:
    """Set each named tensor to base + α·Δ in float32, read fresh from the base."""
    touched = _touched(vector)
    for name in names:
        try:
            param = model.get_parameter(name)
        except AttributeError as exc:
            raise CheckpointError(f"the probe model has no parameter {name}; the vector does not fit {base.source}") from exc
        merged = base.read_rows(name).float()
        if name in touched:
            merged += alpha * vector.decode(name)
        param.copy_(merged.to(param.device))


def probe_prompts_path() -> Path:
    """Where the shipped prompts live, for users who want to edit them."""
    return Path(str(resources.files("rvec_hub").joinpath("data/probe_prompts.txt")))
