"""Synthetic Qwen2-architecture donor families: the embedded default of the demo, tests and benchmarks.

A family is an initialisation θ0 and three checkpoints trained from it: an SFT donor, a GRPO donor that
continues from SFT with an RL-like update (a low-rank component plus small noise, applied in float32 to the
bf16 weights and rounded back, so most weights stay bit-identical), and an instruction-tuned target.
Tensors are generated one at a time from per-tensor seeds and streamed to disk, so a family of
Qwen2.5-1.5B shapes needs no more memory than its largest tensor.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .io.safetensors_io import ShardWriter, tensor_bytes
from .progress import progress

CORPUS = [
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have? Let's think step by step. 3 + 4 = 7. #### 7",
    "Question: A box holds 6 pens. How many pens are in 5 boxes? Let's think step by step. 6 * 5 = 30. #### 30",
    "Question: Sara had 20 coins and spent 8. How many are left? Let's think step by step. 20 - 8 = 12. #### 12",
    "The quick brown fox jumps over the lazy dog. Reasoning vectors carry chain-of-thought between models.",
    "Answer the question. Explain each step, then give the final answer after ####.",
    "What is the capital of France? Paris is the capital of France.",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Shapes:
    """The config fields of a Qwen2 model that fix its tensor shapes."""

    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    intermediate_size: int = 256
    vocab_size: int = 512
    tie_word_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


TINY = Shapes()
QWEN25_05B = Shapes(896, 24, 14, 2, 4864, 151936, True)
QWEN25_15B = Shapes(1536, 28, 12, 2, 8960, 151936, True)


def tensor_shapes(s: Shapes) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Qwen2ForCausalLM checkpoint with these shapes, in checkpoint order."""
    kv = s.num_key_value_heads * s.head_dim
    out = {"model.embed_tokens.weight": (s.vocab_size, s.hidden_size)}
    for i in range(s.num_hidden_layers):
        p = f"model.layers.{i}."
        out.update({
            p + "input_layernorm.weight": (s.hidden_size,),
            p + "self_attn.q_proj.weight": (s.hidden_size, s.hidden_size),
            p + "self_attn.q_proj.bias": (s.hidden_size,),
            p + "self_attn.k_proj.weight": (kv, s.hidden_size),
            p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, s.hidden_size),
            p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (s.hidden_size, s.hidden_size),
            p + "post_attention_layernorm.weight": (s.hidden_size,),
            p + "mlp.gate_proj.weight": (s.intermediate_size, s.hidden_size),
            p + "mlp.up_proj.weight": (s.intermediate_size, s.hidden_size),
            p + "mlp.down_proj.weight": (s.hidden_size, s.intermediate_size),
        })
    out["model.norm.weight"] = (s.hidden_size,)
    if not s.tie_word_embeddings:
        out["lm_head.weight"] = (s.vocab_size, s.hidden_size)
    return out


def _gen(seed: int, name: str, role: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{role}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def _init(seed: int, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape)
    if name.endswith(".bias"):
        return torch.randn(shape, generator=_gen(seed, name, "init")) * 0.02
    return torch.randn(shape, generator=_gen(seed, name, "init")) * 0.02


def _finetune(w: torch.Tensor, seed: int, name: str, role: str, noise: float, rank: int, scale: float) -> torch.Tensor:
    """An update of `rank` directions of size `scale` plus N(0, noise), added in float32."""
    g = _gen(seed, name, role)
    out = w + torch.randn(w.shape, generator=g) * noise
    if w.dim() == 2 and rank:
        u = torch.randn(w.shape[0], rank, generator=g)
        v = torch.randn(rank, w.shape[1], generator=g)
        out += (u @ v) * (scale / rank**0.5)
    return out


def family_tensors(s: Shapes, seed: int, role: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, bf16 tensor) of one family member: "init", "sft", "grpo" or "instruct"."""
    for name, shape in tensor_shapes(s).items():
        w = _init(seed, name, shape).to(torch.bfloat16).float()
        if role in ("sft", "grpo"):
            w = _finetune(w, seed, name, "sft", 2e-3, 4, 2e-3).to(torch.bfloat16).float()
        if role == "grpo":
            # RL moves weights by far less than a bf16 step: most stay bit-identical after rounding.
            w = _finetune(w, seed, name, "grpo", 1.5e-5, 8, 1.5e-5)
        if role == "instruct":
            w = _finetune(w, seed, name, "instruct", 2e-3, 4, 2e-3)
        yield name, w.to(torch.bfloat16)


def write_tokenizer(directory: Path, vocab_size: int) -> None:
    """Train a byte-level BPE tokenizer on a few lines and save it the way transformers expects."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=min(vocab_size, 400), special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(directory))


def write_config(directory: Path, s: Shapes) -> None:
    """config.json and generation_config.json of a Qwen2ForCausalLM with these shapes."""
    from transformers import GenerationConfig, Qwen2Config

    config = Qwen2Config(
        vocab_size=s.vocab_size, hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_hidden_layers, num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_key_value_heads, max_position_embeddings=2048, tie_word_embeddings=s.tie_word_embeddings,
        rms_norm_eps=1e-6, eos_token_id=2, pad_token_id=0, bos_token_id=None, architectures=["Qwen2ForCausalLM"],
    )
    config.dtype = torch.bfloat16
    config.save_pretrained(str(directory))
    GenerationConfig(eos_token_id=2, pad_token_id=0, do_sample=False).save_pretrained(str(directory))


def write_member(directory: Path, s: Shapes, seed: int, role: str, *, max_shard_bytes: int = 2 * 1024**3, quiet: bool = True) -> Path:
    """Write one family member as a Hugging Face model directory (config, tokenizer, safetensors)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shapes = tensor_shapes(s)
    writer = ShardWriter(directory, "model", max_shard_bytes, {"format": "pt"}, [(n, sh, torch.bfloat16) for n, sh in shapes.items()])
    with progress(sum(tensor_bytes(sh, torch.bfloat16) for sh in shapes.values()), f"build {role}", quiet=quiet) as bar:
        for name, tensor in family_tensors(s, seed, role):
            writer.add(name, tensor)
            bar.update(tensor.numel() * 2)
    writer.finish()
    write_config(directory, s)
    write_tokenizer(directory, s.vocab_size)
    return directory


def write_family(root: Path, s: Shapes = TINY, *, seed: int = 0, roles: tuple[str, ...] = ("sft", "grpo", "instruct"), quiet: bool = True) -> dict[str, Path]:
    """Write a donor pair and a target under `root` (one directory per role).

    Example:
        >>> paths = write_family(Path("family"))
        >>> extract(paths["sft"], paths["grpo"], "vec")
    """
    return {role: write_member(Path(root) / role, s, seed, role, quiet=quiet) for role in roles}


def shapes_with(base: Shapes, **changes: object) -> Shapes:
    """A copy of `base` with some fields changed (e.g. another vocab size)."""
    return replace(base, **changes)


def describe(s: Shapes) -> str:
    """One-line description, for logs and reports."""
    return json.dumps({k: getattr(s, k) for k in s.__dataclass_fields__})
