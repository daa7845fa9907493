"""The GRPO donor: TRL's GRPOTrainer from the SFT donor, reward = a correct final answer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rvec_hub.answers import is_correct
from train import save


@dataclass(frozen=True)
class GrpoSchedule:
    """Steps, completions per step, completions per prompt (the group), learning rate, seed."""

    steps: int
    batch: int = 64
    group: int = 8
    lr: float = 2e-5
    max_tokens: int = 48
    temperature: float = 1.0
    seed: int = 0


def correct_answer(completions: list[str], answer: list[str], **_: object) -> list[float]:
    """Reward 1 for a correct final answer (`#### N`, else the last number), else 0."""
    return [float(is_correct(c, a)) for c, a in zip(completions, answer)]


def grpo(sft_dir: Path, out: Path, prompts: list[dict[str, str]], schedule: GrpoSchedule, *, work: Path, device: str = "cpu", log=print) -> dict:
    """Run GRPO (group-normalised advantages, clipped objective, no KL term) and save the policy to `out`.

    Returns:
        Mean reward over the first and last 10 steps, steps, seconds.
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(str(sft_dir))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(sft_dir), dtype=torch.float32)
    config = GRPOConfig(
        output_dir=str(work / "grpo-trainer"), max_steps=schedule.steps, per_device_train_batch_size=schedule.batch,
        num_generations=schedule.group, max_completion_length=schedule.max_tokens, temperature=schedule.temperature,
        learning_rate=schedule.lr, lr_scheduler_type="constant_with_warmup", warmup_steps=5, beta=0.0,
        use_cpu=device == "cpu", bf16=False, fp16=False, logging_steps=5, report_to="none", save_strategy="no",
        seed=schedule.seed, data_seed=schedule.seed, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=[correct_answer], args=config,
                          train_dataset=Dataset.from_list(prompts))
    started = time.monotonic()
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    for h in trainer.state.log_history:
        if "reward" in h:
            log(f"  step {h.get('step', '?'):>4}  mean reward {h['reward']:.3f}")
    save(trainer.model.cpu(), tok, out)
    return {"steps": schedule.steps, "reward_first": rewards[:2], "reward_last": rewards[-2:],
            "rewards": rewards, "seconds": round(time.monotonic() - started, 1)}
