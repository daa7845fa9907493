"""The donor pair `rvec demo` trains from a real instruct model: SFT on worked arithmetic, then GRPO.

Both donors are full fine-tunes in float32, saved in float32 so that the RL update, often below one bf16
step, survives into the vector. SFT is a plain PyTorch loop (the loss on the answer only); GRPO is TRL's
`GRPOTrainer`, as the replication in examples/replication uses, rewarding a correct final answer (with
partial credit for a close one, see `reward`). The pair is cached under rvec's cache, keyed by the recipe and the base model, so a second run
finds it at once.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import RvecError
from .evaluate import EvalOptions, prompt_for

RECORD = "rvec-donors.json"
# Bump when training changes in a way the recipe does not show, so cached pairs are retrained.
TRAINING_VERSION = 2
TRAIN_SEED = 11  # arithmetic training questions; evaluation sets use other seeds and are excluded anyway
COT_CHAT = EvalOptions(chat=True, cot=True)


@dataclass(frozen=True)
class Recipe:
    """How the donors are trained.

    Attributes:
        sft_steps, sft_batch, sft_lr: the SFT run (AdamW, constant rate after a short warm-up).
        grpo_steps: GRPO optimizer steps; each samples `grpo_batch` completions, `grpo_group` per question.
        grpo_lr: GRPO learning rate (no KL term, as in the replication).
        max_tokens: longest sampled completion during GRPO.
        temperature: sampling temperature during GRPO.
        seed: seed of data order and sampling.
    """

    sft_steps: int
    sft_batch: int
    sft_lr: float
    grpo_steps: int
    grpo_batch: int
    grpo_group: int
    grpo_lr: float
    max_tokens: int
    temperature: float = 0.9
    seed: int = 0

    def describe(self) -> str:
        """One line for people: what was trained, how long."""
        return (f"SFT {self.sft_steps} steps × {self.sft_batch} worked arithmetic problems (lr {self.sft_lr:g}), then GRPO "
                f"{self.grpo_steps} steps × {self.grpo_batch} sampled answers ({self.grpo_group} per question, lr {self.grpo_lr:g}, "
                "reward 1 for a correct final answer, partial credit for a close one)")


RECIPES: dict[str, Recipe] = {
    # Sized for the demo's ten minutes on two cores: 96 worked examples, then 32 sampled answers (8 questions).
    "standard": Recipe(sft_steps=12, sft_batch=8, sft_lr=1e-5, grpo_steps=4, grpo_batch=8, grpo_group=4, grpo_lr=1e-5, max_tokens=48),
    # One step of each: the same code path in well under a minute, for tests.
    "smoke": Recipe(sft_steps=1, sft_batch=2, sft_lr=1e-5, grpo_steps=1, grpo_batch=4, grpo_group=2, grpo_lr=1e-5, max_tokens=24),
}


@dataclass(frozen=True)
class Donors:
    """The trained pair and how it was made."""

    sft: Path
    grpo: Path
    record: dict
    cached: bool


def chat_prompt(tokenizer, question: str) -> str:
    """A question asked step by step, in the model's chat template, ready for the assistant's answer."""
    messages = [{"role": "user", "content": prompt_for(question, COT_CHAT)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def build_donors(
    base: Path, recipe: Recipe, root: Path, *, exclude: set[str] = frozenset(), device: str = "cpu", log: Callable[[str], None] = print,
) -> Donors:
    """Train (or find cached) the SFT and GRPO donors from `base` under `root`.

    Args:
        base: the instruct model both donors start from.
        recipe: how long and how hard to train.
        root: cache directory; the pair goes to `root/donors-KEY`, KEY from the recipe and the base weights.
        exclude: questions that training must not see (the evaluation sets).
        device: where training runs (`cpu` or `cuda`); the result does not depend on it beyond rounding.
        log: progress lines.

    Returns:
        The two donor directories and the training record (losses, rewards, seconds).
    """
    import fcntl

    key = _key(base, recipe, exclude)
    target = root / f"donors-{key}"
    root.mkdir(parents=True, exist_ok=True)
    # One training per pair at a time: a second process waits, then finds the first one's pair.
    with open(root / f".donors-{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / RECORD).is_file():
            return Donors(target / "sft", target / "grpo", json.loads((target / RECORD).read_text()), True)
        return _train(base, recipe, target, exclude, device, log)


def _train(base: Path, recipe: Recipe, target: Path, exclude: set[str], device: str, log: Callable[[str], None]) -> Donors:
    """Both donors into `target`, atomically."""
    from .io.atomic import atomic_directory

    with atomic_directory(target, force=True) as tmp:
        started = time.monotonic()
        from .tasks import generate

        questions = [t for t in generate("arith", 4 * max(recipe.sft_steps * recipe.sft_batch, 64), TRAIN_SEED).tasks if t.question not in exclude]
        half = len(questions) // 2
        sft_info = sft(base, tmp / "sft", questions[:half], recipe, device=device, log=log)
        grpo_info = grpo(tmp / "sft", tmp / "grpo", questions[half:], recipe, work=tmp / "grpo-trainer", device=device, log=log)
        shutil.rmtree(tmp / "grpo-trainer", ignore_errors=True)
        record = {"recipe": asdict(recipe), "base": str(base), "sft": sft_info, "grpo": grpo_info,
                  "seconds": round(time.monotonic() - started, 1)}
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return Donors(target / "sft", target / "grpo", record, False)


def sft(base: Path, out: Path, tasks, recipe: Recipe, *, device: str = "cpu", log: Callable[[str], None] = print) -> dict:
    """Fine-tune every weight of `base` on worked solutions (loss on the answer only); save in float32.

    Returns:
        Steps, the first and last losses, seconds.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
    model.train()
    rows = []
    for t in tasks:
        prompt = tok(chat_prompt(tok, t.question), add_special_tokens=False)["input_ids"]
        answer = tok(t.solution + tok.eos_token, add_special_tokens=False)["input_ids"]
        rows.append((prompt + answer, len(prompt)))
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.sft_lr, weight_decay=0.0)
    warmup = max(1, recipe.sft_steps // 10)
    losses, started = [], time.monotonic()
    for step in range(recipe.sft_steps):
        for group in opt.param_groups:
            group["lr"] = recipe.sft_lr * min(1.0, (step + 1) / warmup)
        ids, labels, mask = completion_batch(rng.sample(rows, recipe.sft_batch), tok.pad_token_id)
        loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        log(f"  SFT step {step + 1}/{recipe.sft_steps}: loss {losses[-1]:.3f} ({time.monotonic() - started:.0f} s)")
    del opt
    _save(model.cpu(), tok, base, out)
    return {"steps": recipe.sft_steps, "losses": losses, "seconds": round(time.monotonic() - started, 1)}


def grpo(sft_dir: Path, out: Path, tasks, recipe: Recipe, *, work: Path, device: str = "cpu", log: Callable[[str], None] = print) -> dict:
    """Continue from the SFT donor with TRL's GRPO, reward 1 for a correct final answer; save in float32.

    Returns:
        Steps, the mean reward of every step, seconds.
    """
    import warnings

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from transformers.utils import logging as hf_logging

    with warnings.catch_warnings():  # TRL's note on vLLM versions: its vLLM generation is not used here
        warnings.filterwarnings("ignore", message="TRL currently supports vLLM")
        from trl import GRPOConfig, GRPOTrainer


    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(sft_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(sft_dir, dtype=torch.float32)
    config = GRPOConfig(
        output_dir=str(work), max_steps=recipe.grpo_steps, per_device_train_batch_size=recipe.grpo_batch,
        num_generations=recipe.grpo_group, max_completion_length=recipe.max_tokens, temperature=recipe.temperature,
        learning_rate=recipe.grpo_lr, lr_scheduler_type="constant", beta=0.0, use_cpu=device == "cpu", bf16=False, fp16=False,
        logging_steps=1, report_to="none", save_strategy="no", seed=recipe.seed, data_seed=recipe.seed,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    data = Dataset.from_list([{"prompt": chat_prompt(tok, t.question), "answer": t.answer} for t in tasks])
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=[reward], args=config, train_dataset=data)
    trainer.remove_callback(PrinterCallback)  # its raw dict per step; the rewards are logged below instead
    started = time.monotonic()
    trainer.train()
    rewards = [round(h["reward"], 4) for h in trainer.state.log_history if "reward" in h]
    for i, r in enumerate(rewards):
        log(f"  GRPO step {i + 1}/{recipe.grpo_steps}: mean reward {r:.3f}")
    _save(trainer.model.cpu(), tok, sft_dir, out)
    return {"steps": recipe.grpo_steps, "rewards": rewards, "seconds": round(time.monotonic() - started, 1)}


def reward(completions: list[str], answer: list[str], **_: object) -> list[float]:
    """1 for a correct final answer; else up to 0.5 for a final number close to it; 0 without one.

    The partial credit gives a group of wrong answers different rewards, so that a short run on a model
    that rarely answers correctly still has an advantage to learn from (all-equal rewards give GRPO none).
    """
    from .answers import extract_answer, is_correct

    out = []
    for completion, want in zip(completions, answer):
        if is_correct(completion, want):
            out.append(1.0)
            continue
        got = extract_answer(completion)
        try:
            x, y = float(got), float(want)
        except (TypeError, ValueError):
            out.append(0.0)
            continue
        out.append(0.5 * max(0.0, 1.0 - abs(x - y) / max(1.0, abs(y))))
    return out


def completion_batch(rows: list[tuple[list[int], int]], pad: int):
    """(input ids, labels, attention mask) for a batch of (token ids, prompt length) rows, padded with
    `pad` on the right: the labels are -100 outside each completion, so the loss is on completions only."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (seq, start) in enumerate(rows):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, start: len(seq)] = torch.tensor(seq[start:])
        mask[i, : len(seq)] = 1
    return ids, labels, mask


def _save(model, tok, source: Path, out: Path) -> None:
    """Weights in float32 (ties kept), the tokenizer and the source's generation config."""
    model.config.dtype = "float32"
    model.save_pretrained(out, safe_serialization=True)
    tok.padding_side = "right"
    tok.save_pretrained(out)
    if (Path(source) / "generation_config.json").is_file():
        shutil.copyfile(Path(source) / "generation_config.json", out / "generation_config.json")


def _key(base: Path, recipe: Recipe, exclude: set[str]) -> str:
    """Recipe, held-out questions and the base's identity (its build record, else its weights' digest)."""
    digest = hashlib.sha256(json.dumps({**asdict(recipe), "training": TRAINING_VERSION}, sort_keys=True).encode())
    digest.update("\n".join(sorted(exclude)).encode())
    build = Path(base) / "rvec-build.json"
    files = [build] if build.is_file() else sorted(Path(base).glob("*.safetensors"))
    if not files:
        raise RvecError(f"{base} holds no safetensors weights; pass a Hugging Face model directory")
    for path in files:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()[:12]
