"""`rvec info`: what a vector holds, as a dict for `--json` and a few lines for people."""

from __future__ import annotations

import math

import torch

from .io.safetensors_io import DTYPES
from .vector import Vector

_TORCH_DTYPES = {str(d).removeprefix("torch."): d for d in DTYPES.values()}


def vector_info(vector: Vector) -> dict:
    """A summary of a vector: base, donors, tensors by encoding, sizes, compression and probe results.

    Args:
        vector: the opened vector.

    Returns:
        A JSON-ready dict.
    """
    m = vector.manifest
    encodings: dict[str, int] = {}
    dense_bytes = 0
    for t in m.tensors:
        encodings[t.encoding] = encodings.get(t.encoding, 0) + 1
        size = torch.empty((), dtype=_TORCH_DTYPES.get(t.dtype, torch.float32)).element_size()
        dense_bytes += (math.prod(t.shape) if t.shape else 1) * size
    payload = sum(f.size for f in m.files if f.path.endswith(".safetensors"))
    norm = math.sqrt(sum(t.stats.get("norm", 0.0) ** 2 for t in m.tensors))
    return {
        "name": m.name,
        "path": str(vector.path),
        "description": m.description,
        "format_version": m.format_version,
        "rvec_version": m.rvec_version,
        "license": m.license,
        "recipe": m.recipe,
        "default_alpha": m.default_alpha,
        "base": m.base.model_dump(mode="json"),
        "donors": m.donors.model_dump(mode="json"),
        "tensors": len(m.tensors),
        "changed_tensors": sum(t.encoding != "zero" for t in m.tensors),
        "encodings": encodings,
        "norm": norm,
        "payload_bytes": payload,
        "dense_bytes": dense_bytes,
        "ratio_to_dense": payload / dense_bytes if dense_bytes else None,
        "extract": m.extract,
        "compression": m.compression,
        "probe": m.probe,
        "files": [f.model_dump(mode="json") for f in m.files],
    }
