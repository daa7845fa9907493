"""Shared fixtures: an isolated environment and a tiny Qwen2 donor family built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_XET", "1")  # huggingface_hub reads it once, at import

pytest_plugins = ["hubtest_common", "realmodel_common"]  # Hub server; real SmolLM2 model and donor pair

from rvec_hub import extract
from rvec_hub.synthetic import TINY, shapes_with, write_family


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's Hub cache, token or config."""
    home = tmp_path_factory.mktemp("hf-home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "RVEC_DEBUG", "RVEC_HUB_TOKEN", "RVEC_HUB_USER"):
        monkeypatch.delenv(var, raising=False)
    # huggingface_hub read these at import; the environment alone no longer reaches them.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))


@pytest.fixture(scope="session")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny SFT donor, GRPO donor and instruct target (Qwen2, hidden 128, head_dim 64, bf16)."""
    return write_family(tmp_path_factory.mktemp("family"), TINY, seed=0)


@pytest.fixture(scope="session")
def vector_dir(family: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dense bf16 vector grpo − sft of the tiny family."""
    out = tmp_path_factory.mktemp("vectors") / "tiny-reasoning"
    extract(family["sft"], family["grpo"], out, base_model="tiny/instruct", quiet=True)
    return out


@pytest.fixture(scope="session")
def vector_fp32(family: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same vector stored in float32 (no rounding)."""
    import torch

    out = tmp_path_factory.mktemp("vectors") / "tiny-reasoning-fp32"
    extract(family["sft"], family["grpo"], out, dtype=torch.float32, quiet=True)
    return out


@pytest.fixture(scope="session")
def other_vector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second vector for the same shapes, from a family with another seed."""
    fam = write_family(tmp_path_factory.mktemp("family-b"), TINY, seed=1)
    out = tmp_path_factory.mktemp("vectors") / "other"
    extract(fam["sft"], fam["grpo"], out, quiet=True)
    return out


@pytest.fixture(scope="session")
def wide_vector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A vector for a wider model (hidden 256), which no tiny base accepts."""
    fam = write_family(tmp_path_factory.mktemp("family-wide"), shapes_with(TINY, hidden_size=256, num_attention_heads=4), seed=0)
    out = tmp_path_factory.mktemp("vectors") / "wide"
    extract(fam["sft"], fam["grpo"], out, quiet=True)
    return out
