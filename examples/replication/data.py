"""Synthetic text for the replication: a pretraining corpus, SFT examples, and a tokenizer trained on them.

Everything is generated from seeds. The evaluation sets are rvec's built-in `arith` and `tracking` sets at
seed 999; training uses other seeds, and every training question that also appears in an evaluation set is
dropped, so the evaluation is on held-out problems.
"""

from __future__ import annotations

import random
from pathlib import Path

from rvec_hub.evaluate import EvalOptions, prompt_for
from rvec_hub.tasks import COLORS, ITEMS, NAMES, generate

EVAL_SEED = 999
EOS = "<|im_end|>"
SPECIAL = ["<|endoftext|>", "<|im_start|>", EOS]  # ids 0, 1, 2: pad, (unused), eos
COT = EvalOptions(cot=True)


def held_out_questions(size: int = 200) -> set[str]:
    """Questions of the evaluation sets, which no training example may repeat."""
    return {t.question for name in ("arith", "tracking") for t in generate(name, size, EVAL_SEED).tasks}


def _arith_facts(rng: random.Random) -> str:
    facts = []
    for _ in range(6):
        a, b = rng.randint(0, 40), rng.randint(0, 12)
        op = rng.choice("+-*")
        if op == "-":
            a, b = max(a, b), min(a, b)
        if op == "*":
            a = rng.randint(0, 12)
        facts.append(f"{a} {op} {b} = {eval(f'{a} {op} {b}')}.")  # noqa: S307 - digits and one operator
    return " ".join(facts)


def _story(rng: random.Random) -> str:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    if rng.random() < 0.5:
        return f"{name} has {a} {item}. {name} buys {b} more {item}. Now {name} has {a + b} {item}."
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return f"{name} has {a} boxes with {b} {item} in each box. So {name} has {a * b} {item}."


def _swap_story(rng: random.Random) -> str:
    p, r = rng.sample(NAMES, 2)
    c, d = rng.sample(COLORS, 2)
    return f"{p} has a {c} ball and {r} has a {d} ball. {p} and {r} swap balls. Now {p} has {d} and {r} has {c}."


def pretraining_corpus(n: int, seed: int = 0) -> list[str]:
    """`n` short documents: arithmetic facts, counting stories, ball swaps (no question/answer format)."""
    rng = random.Random(f"pretrain/{seed}")
    makers = [_arith_facts, _story, _swap_story]
    return [rng.choice(makers)(rng) + EOS for _ in range(n)]


def cot_examples(name: str, n: int, seed: int, exclude: set[str]) -> list[tuple[str, str]]:
    """(prompt, completion) pairs: the question asked step by step, answered with the worked solution."""
    tasks = [t for t in generate(name, n + len(exclude) // 4 + 50, seed).tasks if t.question not in exclude][:n]
    return [(prompt_for(t.question, COT), " " + t.solution + EOS) for t in tasks]


def rl_prompts(n: int, seed: int, exclude: set[str]) -> list[dict[str, str]]:
    """Prompts and reference answers for GRPO (arith, asked step by step)."""
    tasks = [t for t in generate("arith", n + 50, seed).tasks if t.question not in exclude][:n]
    return [{"prompt": prompt_for(t.question, COT), "answer": t.answer} for t in tasks]


def train_tokenizer(directory: Path, texts: list[str], vocab_size: int) -> None:
    """A byte-level BPE tokenizer that keeps every digit a token of its own, saved for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token="<|endoftext|>", bos_token=None)
    fast.save_pretrained(str(directory))
