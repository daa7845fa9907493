"""Rewriting a vector's payload and manifest, then re-hashing, so only structural checks can catch a change."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rvec_hub.package import PAYLOAD_METADATA
from rvec_hub.vector import sha256_file


def rewrite_vector(
    src: Path,
    dst: Path,
    payload: Callable[[dict[str, torch.Tensor]], None] | None = None,
    manifest: Callable[[dict], None] | None = None,
) -> Path:
    """Copy a vector, edit its (single-file) payload and manifest in place, and record fresh checksums."""
    shutil.copytree(src, dst)
    data = json.loads((dst / "rvec.json").read_text())
    if payload is not None:
        [entry] = [f for f in data["files"] if f["path"].endswith(".safetensors")]
        tensors = load_file(dst / entry["path"])
        payload(tensors)
        save_file(tensors, dst / entry["path"], metadata=PAYLOAD_METADATA)
    if manifest is not None:
        manifest(data)
    for entry in data["files"]:
        path = dst / entry["path"]
        if path.is_file():
            entry["sha256"], entry["size"] = sha256_file(path), path.stat().st_size
    (dst / "rvec.json").write_text(json.dumps(data))
    return dst
