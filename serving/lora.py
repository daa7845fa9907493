"""LoRA mode: the unmodified base plus one adapter per vector, chosen per request by the `model` field.

Each vector is exported as a PEFT adapter (`rvec export peft`) and handed to vLLM's multi-LoRA. LoRA carries
only low-rank deltas of linear layers; start-up says, per vector, which share of its norm is dropped.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

from rvec_hub.defaults import LORA_RANK
from rvec_hub.errors import CompatibilityError
from rvec_hub.peft_export import PeftExport, export_peft

from .launch import SERVER_MODULE, ServePlan, _flag_value, _refuse_owned, server_env
from .spec import OpenedVector, VectorSpec, base_env, base_model_args, check_all, open_base, open_specs

# vLLM accepts only these values for --max-lora-rank.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def adapter_cache() -> Path:
    """Where exported adapters are kept between launches (`RVEC_CACHE`, else ~/.cache/rvec)."""
    return Path(os.environ.get("RVEC_CACHE", Path.home() / ".cache" / "rvec")) / "lora"


def adapter_name(item: OpenedVector) -> str:
    """The `model` name a client passes to reach this vector's adapter."""
    name = item.vector.manifest.name
    return name if item.alpha == 1.0 else f"{name}@{item.alpha:g}"


def export_adapter(item: OpenedVector, rank: int, cache: Path | None = None) -> PeftExport:
    """Export (or reuse) the adapter for one vector at its alpha and rank."""
    digest = hashlib.sha256(item.vector.manifest.to_json().encode()).hexdigest()[:16]
    path = (cache or adapter_cache()) / f"{digest}-r{rank}-a{item.alpha:g}"
    # vLLM's LoRA covers linear layers of most architectures only (no embedding LoRA for Qwen2, for one).
    return export_peft(item.vector, path, rank=rank, alpha=item.alpha, embeddings=False, force=True)


def dropped_note(name: str, export: PeftExport) -> str:
    """One start-up line: what LoRA drops from this vector and what rank truncation loses."""
    # Layer indices stripped, so 48 biases read as the three kinds they are.
    kinds = sorted({re.sub(r"^model\.(layers\.\d+\.)?", "", n) for n in export.dropped})
    what = f" ({', '.join(kinds[:6])}{', …' if len(kinds) > 6 else ''})" if kinds else ""
    return (
        f"{name}: LoRA drops {export.dropped_share:.1%} of the vector's norm{what}; rank truncation loses "
        f"{export.truncation_share:.1%} of the linear deltas; {export.carried_share:.1%} is served"
    )


def refuse_below(min_kept: float, names: list[str], exports: list[PeftExport]) -> None:
    """Refuse the vectors whose adapters serve less than `min_kept` of their norm.

    Raises:
        CompatibilityError: naming every such vector with the share it keeps.
    """
    low = [f"{n} keeps {e.carried_share:.1%}" for n, e in zip(names, exports) if e.carried_share < min_kept]
    if low:
        raise CompatibilityError(
            f"LoRA mode would serve too little of {len(low)} vector{'s' if len(low) > 1 else ''} "
            f"({'; '.join(low)}; --lora-min-kept is {min_kept:.1%}); serve it merged (--mode merged), raise --rank, "
            "or lower --lora-min-kept",
            problems=low,
        )


def plan_lora(
    base: str,
    specs: list[VectorSpec],
    *,
    rank: int = LORA_RANK,
    host: str = "127.0.0.1",
    port: int = 8000,
    vllm_args: list[str] | None = None,
    endpoint: str | None = None,
    cache: Path | None = None,
    python: str | None = None,
    min_kept: float | None = None,
) -> tuple[ServePlan, list[PeftExport]]:
    """Check the vectors, export each as an adapter, and plan a multi-LoRA server over the plain base.

    Args:
        min_kept: refuse any vector whose adapter keeps less than this share of its norm (0 to 1).

    Returns:
        The plan (models: the base name, then one adapter name per vector) and each vector's export.

    Raises:
        CompatibilityError: when a vector does not fit the base, or its adapter keeps less than `min_kept`.
    """
    vllm_args = list(vllm_args or [])
    _refuse_owned(vllm_args)
    checkpoint = open_base(base, endpoint=endpoint)
    vectors = open_specs(specs, endpoint=endpoint)
    check_all(vectors, checkpoint)
    exports = [export_adapter(v, rank, cache) for v in vectors]
    names = [adapter_name(v) for v in vectors]
    if min_kept is not None:
        refuse_below(min_kept, names, exports)
    base_name = _flag_value(vllm_args, "--served-model-name")
    if base_name is None:
        base_name = Path(base.rstrip("/")).name
        vllm_args += ["--served-model-name", base_name]
    max_rank = max(max(e.ranks.values()) for e in exports)
    if _flag_value(vllm_args, "--max-lora-rank") is None:
        vllm_args += ["--max-lora-rank", str(next(r for r in VLLM_LORA_RANKS if r >= max_rank))]
    if _flag_value(vllm_args, "--max-loras") is None:
        vllm_args += ["--max-loras", str(len(vectors))]
    argv = [
        python or sys.executable, "-m", SERVER_MODULE, *base_model_args(checkpoint), "--host", host, "--port", str(port),
        "--enable-lora", "--lora-modules", *[f"{n}={e.path.resolve()}" for n, e in zip(names, exports)], *vllm_args,
    ]
    notes = [dropped_note(n, e) for n, e in zip(names, exports)]
    checkpoint.close()
    return ServePlan(argv, {**server_env(), **base_env(checkpoint, endpoint)}, f"http://{host}:{port}/v1", [base_name, *names], notes), exports
