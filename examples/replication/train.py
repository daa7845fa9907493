"""Language-model training for the replication: a small Qwen2 model, pretraining and SFT in plain PyTorch."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from data import SPECIAL

from rvec_hub.demo_donors import completion_batch


@dataclass(frozen=True)
class Schedule:
    """One training run: steps, batch, peak learning rate (linear warm-up, cosine decay), seed."""

    steps: int
    batch: int
    lr: float
    seed: int
    warmup: int = 20
    weight_decay: float = 0.01


def new_model(tokenizer_dir: Path, out: Path, *, hidden: int = 128, layers: int = 3, seed: int = 0) -> Path:
    """A freshly initialised Qwen2ForCausalLM (head_dim 64, so the vLLM CPU engine can serve it), saved to `out`."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = Qwen2Config(
        vocab_size=1024, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=1, max_position_embeddings=512,
        tie_word_embeddings=True, rms_norm_eps=1e-6, eos_token_id=SPECIAL.index("<|im_end|>"), pad_token_id=0,
        bos_token_id=None, architectures=["Qwen2ForCausalLM"],
    )
    assert len(tok) <= config.vocab_size
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    save(model, tok, out)
    return out


def save(model, tokenizer, out: Path) -> None:
    """Save weights in float32 with config, tokenizer and a greedy generation config."""
    from transformers import GenerationConfig

    model.config.dtype = torch.float32
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    GenerationConfig(eos_token_id=model.config.eos_token_id, pad_token_id=0, do_sample=False).save_pretrained(str(out))


def _lr(step: int, s: Schedule) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pack(tokenizer, texts: list[str], block: int) -> torch.Tensor:
    """Documents tokenised, concatenated and cut into blocks of `block` tokens (pretraining)."""
    ids = [i for text in texts for i in tokenizer(text)["input_ids"]]
    n = len(ids) // block
    return torch.tensor(ids[: n * block]).view(n, block)


def pairs(tokenizer, examples: list[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """(ids, prompt length) per example: the loss is on the completion only."""
    out = []
    for prompt, completion in examples:
        p = tokenizer(prompt)["input_ids"]
        out.append((p + tokenizer(completion)["input_ids"], len(p)))
    return out


def train(model_dir: Path, out: Path, data, schedule: Schedule, *, device: str = "cpu", log=print) -> dict:
    """Train a saved model on packed blocks (a tensor) or (ids, prompt length) pairs; save it to `out`.

    Returns:
        Loss at the start and end, steps, seconds.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(schedule.seed)
    rng = random.Random(schedule.seed)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=schedule.lr, weight_decay=schedule.weight_decay, betas=(0.9, 0.98))
    losses, started = [], time.monotonic()
    for step in range(schedule.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, schedule)
        if isinstance(data, torch.Tensor):
            ids = data[torch.tensor(rng.sample(range(len(data)), schedule.batch))]
            labels, mask = ids, torch.ones_like(ids)
        else:
            ids, labels, mask = completion_batch(rng.sample(data, schedule.batch), 0)
        loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == schedule.steps - 1:
            log(f"  step {step:4d}/{schedule.steps}  loss {sum(losses[-50:]) / len(losses[-50:]):.3f}  {time.monotonic() - started:.0f}s")
    model.eval()
    save(model.cpu(), tok, out)
    return {"steps": schedule.steps, "first_loss": losses[0], "last_loss": sum(losses[-20:]) / len(losses[-20:]),
            "seconds": round(time.monotonic() - started, 1)}
