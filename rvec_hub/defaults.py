"""Choices and defaults that the command line shows before any module that needs torch is loaded."""

from __future__ import annotations

import os
from pathlib import Path

COMPRESS_METHODS = ("auto", "sparse", "lowrank", "quantized", "dense")
LORA_RANK = 16


def hf_rvec_dir(name: str) -> Path:
    """`$HF_HOME/rvec/NAME`, read from the environment when called (`HF_HOME` defaults to
    `$XDG_CACHE_HOME/huggingface`, that is `~/.cache/huggingface`, as huggingface_hub resolves it)."""
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home).expanduser() / "rvec" / name
