"""Session fixtures on the real SmolLM2-135M-Instruct (Llama, tied embeddings), built once and kept.

`smollm2_dir` is the model `rvec model build smollm2-135m-instruct` writes. `smollm2_pair` is a cheap real
donor pair: the model itself as reference, and the model after a few Adam steps on arithmetic questions as
tuned, so their difference is a real fine-tuning delta that touches every tensor, the tied embeddings included.
Both live in pytest's cache directory (`.pytest_cache/d/rvec-models`), so only the first session pays for
them (3.6 min for the model and 7.5 min for the tuned donor and its vector, measured on 2 cores shared with
other work at load average 10 to 27); `pytest --cache-clear` or `make clean` rebuilds them.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest

SMOLLM2 = "smollm2-135m-instruct"
# Bump when the tuned donor's recipe changes, so a stale cached copy is not reused.
TUNED_RECIPE = {"steps": 3, "lr": 2e-4, "seed": 0, "version": 1}
ARITHMETIC = [
    ("What is 12 + 7?", "12 + 7 = 19."),
    ("What is 23 + 15?", "23 + 15 = 38."),
    ("What is 9 + 8?", "9 + 8 = 17."),
    ("What is 31 + 46?", "31 + 46 = 77."),
    ("What is 14 + 29?", "14 + 29 = 43."),
    ("What is 6 + 57?", "6 + 57 = 63."),
]


def _models_cache(config: pytest.Config) -> Path:
    if getattr(config, "cache", None) is not None:
        return Path(config.cache.mkdir("rvec-models"))
    path = config.rootpath / ".pytest_cache" / "d" / "rvec-models"  # the same place with `-p no:cacheprovider`
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def smollm2_dir(pytestconfig: pytest.Config) -> Path:
    """SmolLM2-135M-Instruct as a bf16 Hugging Face checkpoint (tied embeddings, chat template)."""
    from rvec_hub.models import build_model

    cache = _models_cache(pytestconfig)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RVEC_CACHE", str(cache))
        return build_model(SMOLLM2, cache / SMOLLM2, quiet=True).path


@pytest.fixture(scope="session")
def smollm2_pair(smollm2_dir: Path, pytestconfig: pytest.Config) -> dict[str, Path]:
    """`{"reference": the real model, "tuned": it after a few real optimizer steps on arithmetic}`, bf16, tied."""
    cache = _models_cache(pytestconfig)
    tuned = cache / f"{SMOLLM2}-arith-tuned"
    stamp = tuned / "rvec-test-recipe.json"
    with (cache / ".tuned.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (stamp.is_file() and json.loads(stamp.read_text()) == TUNED_RECIPE):
            _write_tuned(smollm2_dir, tuned)
            stamp.write_text(json.dumps(TUNED_RECIPE))
    return {"reference": smollm2_dir, "tuned": tuned}


@pytest.fixture(scope="session")
def smollm2_vector(smollm2_pair: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The float32 vector tuned − reference of `smollm2_pair` (exact, so merges can be compared bit for bit)."""
    import torch

    from rvec_hub import extract

    out = tmp_path_factory.mktemp("smollm2-vectors") / "smollm2-arith"
    extract(smollm2_pair["reference"], smollm2_pair["tuned"], out, dtype=torch.float32, base_model=SMOLLM2, quiet=True)
    return out


def _write_tuned(reference: Path, out: Path) -> None:
    """A few Adam steps in float32 on chat-formatted arithmetic, saved in bf16 like the reference."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rvec_hub.io.atomic import atomic_directory

    torch.manual_seed(TUNED_RECIPE["seed"])
    tokenizer = AutoTokenizer.from_pretrained(reference)
    model = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.float32)
    model.train()
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}], tokenize=False)
        for q, a in ARITHMETIC
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=TUNED_RECIPE["lr"])
    for _ in range(TUNED_RECIPE["steps"]):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    del optimizer
    model = model.to(torch.bfloat16)
    with atomic_directory(out, force=True) as tmp:
        model.save_pretrained(tmp)
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
            shutil.copyfile(reference / name, tmp / name)
